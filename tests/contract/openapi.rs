//! `openapi.yaml` against the real routers of kv-server and kv-proxy: the
//! document must parse as OpenAPI 3.x, every documented path and method must
//! be routed by both programs (and nothing else on those paths), the statuses,
//! media types and JSON bodies they actually answer with must be the ones the
//! document lists, and its error codes must be `kv-api`'s.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use kv_edge::metrics::Metrics;
use kv_server::http::{AppState, app};
use kv_server::store::engine::RedbOptions;
use kv_server::store::{RedbStore, Store};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use tower::ServiceExt;

const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml");

/// The methods an OpenAPI path item may hold, as its keys spell them.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The sample key documented path templates are filled in with; it holds a
/// `/` on purpose, since keys may.
const SAMPLE_KEY: &str = "openapi/sample";

const MAX_VALUE_BYTES: usize = 1 << 20;

fn spec() -> Yaml {
    let text = std::fs::read_to_string(SPEC_PATH).expect("openapi.yaml is readable");
    serde_yaml_ng::from_str(&text).expect("openapi.yaml is valid YAML")
}

/// `(path template, method)` for every documented operation.
fn operations(spec: &Yaml) -> Vec<(String, String)> {
    let paths = spec["paths"].as_mapping().expect("`paths` is a mapping");
    let mut out = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().expect("a path is a string").to_owned();
        let item = item.as_mapping().expect("a path item is a mapping");
        for (key, _) in item {
            let key = key.as_str().expect("a path item key is a string");
            if METHODS.contains(&key) {
                out.push((path.clone(), key.to_owned()));
            }
        }
    }
    out
}

/// Follows a local `$ref` (`#/components/...`) until the node is not one.
fn resolve<'a>(spec: &'a Yaml, mut node: &'a Yaml) -> &'a Yaml {
    for _ in 0..32 {
        let Some(reference) = node.get("$ref").and_then(Yaml::as_str) else {
            return node;
        };
        let pointer = reference
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("only local references are used, not {reference}"));
        node = pointer.split('/').fold(spec, |node, part| {
            let part = part.replace("~1", "/").replace("~0", "~");
            node.get(part.as_str())
                .unwrap_or_else(|| panic!("{reference} points at nothing"))
        });
    }
    panic!("a $ref cycle");
}

/// A path template with its parameters filled in.
fn concrete_path(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("a closed {parameter}") + start;
        out.push_str(&rest[..start]);
        out.push_str(SAMPLE_KEY);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The router on a fresh store, as kv-server builds it.
/// The router under test: kv-server's over a store in a temporary
/// directory, or kv-proxy's in front of that server (served on a loopback
/// port, since the proxy speaks HTTP to its upstream).
struct Harness {
    router: Router,
    store: RedbStore,
    upstream: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Copy)]
enum Program {
    Server,
    Proxy,
}

const PROGRAMS: [Program; 2] = [Program::Server, Program::Proxy];

impl Harness {
    async fn new(program: Program) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let options = RedbOptions {
            cache_bytes: 4 << 20,
            ..RedbOptions::default()
        };
        let store = RedbStore::open(dir.path(), &options).expect("the store opens");
        let state = AppState {
            store: Arc::new(store.clone()) as Arc<dyn Store>,
            metrics: Arc::new(Metrics::new("kv_server", "Keys stored")),
            max_value_bytes: MAX_VALUE_BYTES,
            token: None,
        };
        let limits = kv_edge::limits::HttpLimits {
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let server = app(state, &limits);
        let (router, upstream) = match program {
            Program::Server => (server, None),
            Program::Proxy => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
                let addr = listener.local_addr().expect("an address");
                let upstream = tokio::spawn(async move {
                    axum::serve(listener, server).await.expect("the server serves");
                });
                let config = kv_proxy::Config::with_upstream(format!("http://{addr}"));
                let proxy = kv_proxy::ProxyServer::new(config).expect("the proxy builds");
                (proxy.router(), Some(upstream))
            }
        };
        Self {
            router,
            store,
            upstream,
            _dir: dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> (Response<()>, Vec<u8>) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("the body can be read").to_bytes().to_vec();
        (Response::from_parts(parts, ()), body)
    }

    async fn close(self) {
        if let Some(upstream) = self.upstream {
            upstream.abort();
        }
        self.store.close().await;
    }
}

/// A request with `method` to `path`; a PUT gets a small body and its length.
fn request(method: &Method, path: &str) -> Request<Body> {
    let builder = Request::builder().method(method.clone()).uri(path);
    if method == Method::PUT {
        builder
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_LENGTH, "5")
            .body(Body::from("hello"))
    } else {
        builder.body(Body::empty())
    }
    .expect("a valid request")
}

fn error_code(body: &[u8]) -> Option<String> {
    let json: Json = serde_json::from_slice(body).ok()?;
    json.get("error")?.as_str().map(str::to_owned)
}

#[test]
fn the_document_is_openapi_3_and_every_operation_has_responses() {
    let spec = spec();
    let version = spec["openapi"].as_str().expect("`openapi` is a version string");
    assert!(version.starts_with("3."), "openapi is {version}, not 3.x");
    assert!(spec["info"]["title"].is_string(), "info.title is required");
    assert!(spec["info"]["version"].is_string(), "info.version is required");

    let operations = operations(&spec);
    assert!(!operations.is_empty(), "the document has no operations");
    let mut ids = BTreeSet::new();
    for (path, method) in &operations {
        assert!(path.starts_with('/'), "path {path} does not start with /");
        let operation = &spec["paths"][path.as_str()][method.as_str()];
        let responses = operation["responses"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{method} {path} has no responses"));
        assert!(!responses.is_empty(), "{method} {path} has no responses");
        for (status, response) in responses {
            let status = match status {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                other => panic!("{method} {path}: status {other:?} is not a string"),
            };
            assert!(
                status == "default" || (status.len() == 3 && status.chars().all(|c| c.is_ascii_digit())),
                "{method} {path}: {status} is not a status code"
            );
            let response = resolve(&spec, response);
            assert!(
                response["description"].is_string(),
                "{method} {path} {status}: a response needs a description"
            );
        }
        if let Some(id) = operation["operationId"].as_str() {
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else() {
    for program in PROGRAMS {
        eprintln!("{program:?}");
        routed_exactly_as_documented(program).await;
    }
}

async fn routed_exactly_as_documented(program: Program) {
    let spec = spec();
    let harness = Harness::new(program).await;
    let operations = operations(&spec);

    for (template, method) in &operations {
        let path = concrete_path(template);
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let (response, body) = harness.send(request(&method, &path)).await;
        let status = response.status();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {template} is documented but the router refuses the method"
        );
        assert!(
            !(status == StatusCode::NOT_FOUND && error_code(&body).as_deref() == Some("no_route")),
            "{method} {template} is documented but the router has no such route"
        );
    }

    // The other way round: on each documented path, the methods the router
    // takes (its `Allow` header) are exactly the documented ones.
    let templates: BTreeSet<&str> = operations.iter().map(|(p, _)| p.as_str()).collect();
    for template in templates {
        let documented: BTreeSet<String> = operations
            .iter()
            .filter(|(p, _)| p == template)
            .map(|(_, m)| m.to_uppercase())
            .collect();
        let path = concrete_path(template);
        // A method the path does not document: PATCH, or POST where PATCH is documented.
        let probe = if documented.contains("PATCH") {
            Method::POST
        } else {
            Method::PATCH
        };
        let (response, body) = harness.send(request(&probe, &path)).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{probe} {template} is not documented, so it should be refused"
        );
        assert_eq!(
            error_code(&body).as_deref(),
            Some("method_not_allowed"),
            "{probe} {template}: the 405 has the JSON error body"
        );
        let allow = response
            .headers()
            .get(header::ALLOW)
            .unwrap_or_else(|| panic!("{probe} {template}: a 405 without an Allow header"))
            .to_str()
            .expect("Allow is ASCII");
        let allowed: BTreeSet<String> = allow
            .split(',')
            .map(|m| m.trim().to_uppercase())
            .filter(|m| !m.is_empty())
            .collect();
        // HEAD comes with GET whether or not it is documented.
        let mut expected = documented.clone();
        if expected.contains("GET") {
            expected.insert("HEAD".to_owned());
        }
        assert_eq!(
            allowed, expected,
            "{template}: the router takes {allowed:?}, the document lists {documented:?}"
        );
    }

    // A path the document does not have is the JSON 404 `no_route`.
    let (response, body) = harness.send(request(&Method::GET, "/no/such/route")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body).as_deref(), Some("no_route"));
    harness.close().await;
}

#[test]
fn the_error_codes_are_kv_apis() {
    let spec = spec();
    let documented: Vec<&str> = spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        .as_sequence()
        .expect("the Error schema lists its codes as an enum")
        .iter()
        .map(|code| code.as_str().expect("a code is a string"))
        .collect();
    let defined: Vec<&str> = kv_api::ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
    assert_eq!(
        documented, defined,
        "openapi.yaml's error codes against kv_api::ErrorCode::ALL"
    );
}

/// Checks one real response against the document: its status is listed for
/// the operation, its media type is one the response declares, and a JSON
/// body matches the declared schema.
fn conforms(spec: &Yaml, template: &str, method: &Method, response: &Response<()>, body: &[u8]) {
    let status = response.status();
    let what = format!("{method} {template} -> {status}");
    let operation = &spec["paths"][template][method.as_str().to_lowercase().as_str()];
    assert!(operation.is_mapping(), "{what}: the document has no such operation");
    let responses = &operation["responses"];
    let documented = responses
        .get(status.as_str())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| panic!("{what}: the status is not documented"));
    let documented = resolve(spec, documented);

    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let Some(content) = documented.get("content").and_then(Yaml::as_mapping) else {
        assert!(
            body.is_empty() || *method == Method::HEAD,
            "{what}: a body where the document declares none"
        );
        return;
    };
    if *method == Method::HEAD {
        assert!(body.is_empty(), "{what}: a HEAD response with a body");
        return;
    }
    let content_type = content_type.unwrap_or_else(|| panic!("{what}: a body without a Content-Type"));
    let media = content
        .iter()
        .find(|(media, _)| {
            let media = media.as_str().expect("a media type is a string");
            media == content_type
                || media == "*/*"
                || media
                    .strip_suffix("/*")
                    .is_some_and(|main| content_type.starts_with(&format!("{main}/")))
        })
        .map(|(_, media)| media)
        .unwrap_or_else(|| panic!("{what}: {content_type} is not a declared media type"));
    if content_type == "application/json" {
        let json: Json =
            serde_json::from_slice(body).unwrap_or_else(|err| panic!("{what}: the body is not JSON: {err}"));
        validate(spec, &media["schema"], &json, &what);
    }
}

/// A small JSON Schema check covering what the document uses: `$ref`, `type`,
/// `nullable`, `required`, `properties`, `items`, `enum`, `minimum`, `maximum`.
fn validate(spec: &Yaml, schema: &Yaml, value: &Json, at: &str) {
    let schema = resolve(spec, schema);
    if value.is_null() {
        assert!(
            schema["nullable"].as_bool() == Some(true),
            "{at}: null where the schema is not nullable"
        );
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Yaml::as_sequence) {
        let allowed: Vec<Json> = allowed
            .iter()
            .map(|v| serde_json::to_value(v).expect("an enum value converts"))
            .collect();
        assert!(allowed.contains(value), "{at}: {value} is not one of {allowed:?}");
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: {value} is not an object"));
            if let Some(required) = schema.get("required").and_then(Yaml::as_sequence) {
                for name in required {
                    let name = name.as_str().expect("a required name is a string");
                    assert!(object.contains_key(name), "{at}: {value} lacks the required {name:?}");
                }
            }
            if let Some(properties) = schema.get("properties").and_then(Yaml::as_mapping) {
                for (name, property) in properties {
                    let name = name.as_str().expect("a property name is a string");
                    if let Some(field) = object.get(name) {
                        validate(spec, property, field, &format!("{at}.{name}"));
                    }
                }
            }
        }
        Some("array") => {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: {value} is not an array"));
            for (i, item) in items.iter().enumerate() {
                validate(spec, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => assert!(value.is_string(), "{at}: {value} is not a string"),
        Some("boolean") => assert!(value.is_boolean(), "{at}: {value} is not a boolean"),
        Some(kind @ ("integer" | "number")) => {
            let number = value
                .as_f64()
                .unwrap_or_else(|| panic!("{at}: {value} is not a number"));
            if kind == "integer" {
                assert!(value.is_i64() || value.is_u64(), "{at}: {value} is not an integer");
            }
            if let Some(min) = schema.get("minimum").and_then(Yaml::as_f64) {
                assert!(number >= min, "{at}: {value} is below the minimum {min}");
            }
            if let Some(max) = schema.get("maximum").and_then(Yaml::as_f64) {
                assert!(number <= max, "{at}: {value} is above the maximum {max}");
            }
        }
        Some(other) => panic!("{at}: the check does not know the type {other}"),
        None => {}
    }
}

fn header_is(response: &Response<()>, name: header::HeaderName, expected: &str) {
    assert_eq!(
        response.headers().get(&name).and_then(|v| v.to_str().ok()),
        Some(expected),
        "the {name} header"
    );
}

#[tokio::test]
async fn real_responses_are_the_documented_ones() {
    for program in PROGRAMS {
        eprintln!("{program:?}");
        answers_as_documented(program).await;
    }
}

async fn answers_as_documented(program: Program) {
    let spec = spec();
    let harness = Harness::new(program).await;
    let key_path = format!("/kv/{SAMPLE_KEY}");
    let kv = "/kv/{key}";

    // A new key: 201, with Location, ETag and X-Kv-Revision.
    let (response, body) = harness.send(request(&Method::PUT, &key_path)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    conforms(&spec, kv, &Method::PUT, &response, &body);
    header_is(&response, header::LOCATION, &key_path);
    let created: Json = serde_json::from_slice(&body).unwrap();
    let version = created["version"].as_u64().unwrap();
    assert_eq!(created["key"], SAMPLE_KEY);
    header_is(&response, header::ETAG, &format!("\"{version}\""));
    header_is(
        &response,
        header::HeaderName::from_static("x-kv-revision"),
        &version.to_string(),
    );

    // Replaced: 200.
    let (response, body) = harness.send(request(&Method::PUT, &key_path)).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, kv, &Method::PUT, &response, &body);
    let version: u64 = serde_json::from_slice::<Json>(&body).unwrap()["version"]
        .as_u64()
        .unwrap();

    // Read: 200 with the stored content type; 304 on a matching If-None-Match.
    let (response, body) = harness.send(request(&Method::GET, &key_path)).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, kv, &Method::GET, &response, &body);
    assert_eq!(body, b"hello");
    header_is(&response, header::CONTENT_TYPE, "text/plain");
    header_is(&response, header::CACHE_CONTROL, "no-cache");
    header_is(&response, header::ETAG, &format!("\"{version}\""));

    let (response, body) = harness
        .send(
            Request::get(&key_path)
                .header(header::IF_NONE_MATCH, format!("\"{version}\""))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    conforms(&spec, kv, &Method::GET, &response, &body);

    let (response, body) = harness.send(request(&Method::HEAD, &key_path)).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, kv, &Method::HEAD, &response, &body);

    // Expiry: a PUT with a ttl, reads with the time left, PATCH to move or
    // remove the deadline, 400 for a bad ttl.
    let (response, body) = harness.send(request(&Method::PUT, &format!("{key_path}?ttl=1h"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, kv, &Method::PUT, &response, &body);
    assert!(serde_json::from_slice::<Json>(&body).unwrap()["expires_at"].is_string());
    for method in [Method::GET, Method::HEAD] {
        let (response, body) = harness.send(request(&method, &key_path)).await;
        assert_eq!(response.status(), StatusCode::OK);
        conforms(&spec, kv, &method, &response, &body);
        assert!(response.headers().contains_key("x-kv-expires-in"), "{method}");
        assert!(response.headers().contains_key(header::EXPIRES), "{method}");
    }
    for query in ["ttl=2h", "persist=true"] {
        let (response, body) = harness
            .send(request(&Method::PATCH, &format!("{key_path}?{query}")))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "PATCH ?{query}");
        conforms(&spec, kv, &Method::PATCH, &response, &body);
    }
    for (method, query) in [
        (Method::PUT, "ttl=0"),
        (Method::PUT, "ttl=-5s"),
        (Method::PUT, "ttl=soon"),
        (Method::PUT, "ttl=5s&keepttl=true"),
        (Method::PATCH, "ttl=0"),
        (Method::PATCH, ""),
    ] {
        let (response, body) = harness.send(request(&method, &format!("{key_path}?{query}"))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{method} ?{query}");
        conforms(&spec, kv, &method, &response, &body);
    }

    // Write preconditions and body rules.
    let (response, body) = harness
        .send(
            Request::put(&key_path)
                .header(header::IF_MATCH, "\"999999\"")
                .header(header::CONTENT_LENGTH, "1")
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    conforms(&spec, kv, &Method::PUT, &response, &body);
    assert_eq!(error_code(&body).as_deref(), Some("precondition_failed"));

    let (response, body) = harness
        .send(Request::put(&key_path).body(Body::from("x")).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::LENGTH_REQUIRED);
    conforms(&spec, kv, &Method::PUT, &response, &body);
    assert_eq!(error_code(&body).as_deref(), Some("length_required"));

    let (response, body) = harness
        .send(
            Request::put(&key_path)
                .header(header::CONTENT_LENGTH, (MAX_VALUE_BYTES + 1).to_string())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    conforms(&spec, kv, &Method::PUT, &response, &body);
    assert_eq!(error_code(&body).as_deref(), Some("value_too_large"));

    let (response, body) = harness
        .send(
            Request::put(&key_path)
                .header(header::CONTENT_TYPE, "")
                .header(header::CONTENT_LENGTH, "1")
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    conforms(&spec, kv, &Method::PUT, &response, &body);
    assert_eq!(error_code(&body).as_deref(), Some("bad_content_type"));

    // Keys the router refuses: empty, and a dot segment.
    for bad in ["/kv/", "/kv/a/../b", "/kv/%2e"] {
        let (response, body) = harness.send(request(&Method::GET, bad)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "GET {bad}");
        conforms(&spec, kv, &Method::GET, &response, &body);
        assert_eq!(error_code(&body).as_deref(), Some("bad_key"), "GET {bad}");
    }

    // DUMP in each format, and its refusals.
    for (accept, expected) in [
        (None, "application/json"),
        (Some("*/*"), "application/json"),
        (Some("application/json"), "application/json"),
        (Some("application/x-ndjson"), "application/x-ndjson"),
        (Some("text/html"), "text/html; charset=utf-8"),
        (Some("text/plain"), "text/plain; charset=utf-8"),
    ] {
        let mut builder = Request::get("/kv?prefix=openapi/&limit=10");
        if let Some(accept) = accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        let (response, body) = harness.send(builder.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK, "GET /kv, Accept {accept:?}");
        header_is(&response, header::CONTENT_TYPE, expected);
        conforms(&spec, "/kv", &Method::GET, &response, &body);
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains(SAMPLE_KEY), "{accept:?}: {text}");
        if expected.starts_with("text/html") {
            assert!(response.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        if expected == "application/x-ndjson" {
            for line in text.lines() {
                let item: Json = serde_json::from_str(line).unwrap();
                let item_schema = Yaml::from(serde_yaml_ng::Mapping::from_iter([(
                    Yaml::from("$ref"),
                    Yaml::from("#/components/schemas/Item"),
                )]));
                validate(&spec, &item_schema, &item, "an NDJSON line");
            }
        }
    }
    let (response, body) = harness.send(request(&Method::GET, "/kv?keys_only=true&limit=1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, "/kv", &Method::GET, &response, &body);

    let (response, body) = harness
        .send(
            Request::get("/kv")
                .header(header::ACCEPT, "image/png")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);
    conforms(&spec, "/kv", &Method::GET, &response, &body);
    for query in ["limit=0", "limit=10001", "limit=x", "keys_only=maybe"] {
        let (response, body) = harness.send(request(&Method::GET, &format!("/kv?{query}"))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "GET /kv?{query}");
        conforms(&spec, "/kv", &Method::GET, &response, &body);
    }

    // A batch: 200 with its summary and X-Kv-Revision; a bad line is a 400
    // naming it; a body that is not NDJSON is a 415.
    let batch = |content_type: &str, body: &'static str| {
        Request::post("/kv")
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body))
            .unwrap()
    };
    let ndjson = "application/x-ndjson";
    let (response, body) = harness
        .send(batch(
            ndjson,
            "{\"key\":\"batch/a\",\"value\":\"1\"}\n{\"key\":\"batch/b\",\"delete\":true}\n",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, "/kv", &Method::POST, &response, &body);
    let summary: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (summary["stored"].as_u64(), summary["absent"].as_u64()),
        (Some(1), Some(1))
    );
    header_is(
        &response,
        header::HeaderName::from_static("x-kv-revision"),
        &summary["revision"].to_string(),
    );
    let (response, body) = harness
        .send(batch(ndjson, "{\"key\":\"batch/c\",\"value\":\"1\"}\nnot json\n"))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    conforms(&spec, "/kv", &Method::POST, &response, &body);
    assert_eq!(serde_json::from_slice::<Json>(&body).unwrap()["line"], 2);
    let (response, body) = harness.send(batch("text/plain", "{}\n")).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    conforms(&spec, "/kv", &Method::POST, &response, &body);

    // Delete: 204, then the key is gone (404 for GET and DELETE).
    let (response, body) = harness.send(request(&Method::DELETE, &key_path)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    conforms(&spec, kv, &Method::DELETE, &response, &body);
    assert!(response.headers().contains_key("x-kv-revision"));

    for method in [Method::GET, Method::DELETE, Method::PATCH] {
        let path = if method == Method::PATCH {
            format!("{key_path}?ttl=5s")
        } else {
            key_path.clone()
        };
        let (response, body) = harness.send(request(&method, &path)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} of a missing key");
        conforms(&spec, kv, &method, &response, &body);
        assert_eq!(error_code(&body).as_deref(), Some("not_found"));
    }

    // Operations routes.
    let (response, body) = harness.send(request(&Method::GET, "/healthz")).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, "/healthz", &Method::GET, &response, &body);
    let health: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["status"], "ok");
    match program {
        Program::Server => assert!(health["revision"].is_u64(), "kv-server's health has its revision"),
        Program::Proxy => assert_eq!(health["upstream"], "ok", "kv-proxy's health says its upstream is ok"),
    }

    let (response, body) = harness.send(request(&Method::GET, "/metrics")).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, "/metrics", &Method::GET, &response, &body);

    let (response, body) = harness.send(request(&Method::GET, "/openapi.yaml")).await;
    assert_eq!(response.status(), StatusCode::OK);
    conforms(&spec, "/openapi.yaml", &Method::GET, &response, &body);
    assert_eq!(
        body,
        std::fs::read(SPEC_PATH).unwrap(),
        "GET /openapi.yaml serves the document in the repository"
    );

    harness.close().await;
}
