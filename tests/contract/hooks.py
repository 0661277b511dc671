# Schemathesis hooks, loaded by tests/contract/schemathesis.sh
# (SCHEMATHESIS_HOOKS=hooks, with this directory on PYTHONPATH).
import schemathesis

# The change feed's parameters of GET /kv. With `watch=1` the answer is a
# stream that never ends, which schemathesis cannot read to its end (every
# case would time out), and `since`, `values` and `Last-Event-ID` mean
# something only with `watch`. The e2e tests (tests/e2e/feed.rs) check the
# feed against the same contract; everything else of GET /kv stays here.
FEED_PARAMETERS = {("query", "watch"), ("query", "since"), ("query", "values"), ("header", "Last-Event-ID")}
# X-Kv-Min-Revision (a coherence header, a $ref on GET /kv/{key}) is left out
# too: with a header parameter that names a revision, schemathesis's coverage
# phase adds an unknown header (`x-schemathesis-unknown-property`) and expects
# a 4xx, which no HTTP program may answer for a header it does not know. Its
# check (400 for a value that is not a revision) is in tests/e2e/feed.rs.
MIN_REVISION_REF = "#/components/parameters/MinRevision"


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    # POST /kv (a batch) takes an NDJSON body, which schemathesis cannot
    # serialize ("No supported serializers for media types"); the batch's
    # contract is checked by tests/e2e/batch.rs and by the router test
    # (tests/contract/openapi.rs) instead.
    raw_schema["paths"]["/kv"].pop("post", None)
    key = raw_schema["paths"]["/kv/{key}"]["get"]
    key["parameters"] = [p for p in key.get("parameters", []) if p.get("$ref") != MIN_REVISION_REF]
    dump = raw_schema["paths"]["/kv"]["get"]
    dump["parameters"] = [
        p for p in dump.get("parameters", [])
        if (p.get("in"), p.get("name")) not in FEED_PARAMETERS
    ]

