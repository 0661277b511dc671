# Schemathesis hooks, loaded by tests/contract/schemathesis.sh
# (SCHEMATHESIS_HOOKS=hooks, with this directory on PYTHONPATH).
import schemathesis

# The change feed's parameters of GET /kv. With `watch=1` the answer is a
# stream that never ends, which schemathesis cannot read to its end (every
# case would time out), and `since`, `values` and `Last-Event-ID` mean
# something only with `watch`. The e2e tests (tests/e2e/feed.rs) check the
# feed against the same contract; everything else of GET /kv stays here.
FEED_PARAMETERS = {("query", "watch"), ("query", "since"), ("query", "values"), ("header", "Last-Event-ID")}


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    # POST /kv (a batch) takes an NDJSON body, which schemathesis cannot
    # serialize ("No supported serializers for media types"); the batch's
    # contract is checked by tests/e2e/batch.rs and by the router test
    # (tests/contract/openapi.rs) instead.
    raw_schema["paths"]["/kv"].pop("post", None)
    dump = raw_schema["paths"]["/kv"]["get"]
    dump["parameters"] = [
        p for p in dump.get("parameters", [])
        if (p.get("in"), p.get("name")) not in FEED_PARAMETERS
    ]


# Negative cases that add an unknown header (`x-schemathesis-unknown-property`)
# and expect a 4xx: no HTTP program may refuse a request for a header it does
# not know (clients, proxies and browsers add their own), so such a case tests
# nothing kv promises. Only those cases are left out; every other negative
# case of every header stays.
@schemathesis.hook
def filter_headers(ctx, headers):
    return not headers or not any(
        name.lower().startswith("x-schemathesis-unknown") for name in headers
    )
