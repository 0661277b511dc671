//! The routes every kv HTTP program serves, named once: the routers of
//! kv-server and kv-proxy are built from these, metrics label requests with
//! them, and a test checks both routers against `openapi.yaml`.

/// DUMP: `GET /kv`.
pub const DUMP: &str = "/kv";
/// `/kv/` with no key: routed so that it answers `bad_key`, not `no_route`.
pub const EMPTY_KEY: &str = "/kv/";
/// One key: `GET`, `HEAD`, `PUT`, `PATCH` (its deadline), `DELETE /kv/{key}`.
pub const KEY: &str = "/kv/{*key}";
pub const HEALTHZ: &str = "/healthz";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.yaml";

/// Every route, as metrics label them; anything else is counted as "other".
pub const ALL: [&str; 6] = [DUMP, EMPTY_KEY, KEY, HEALTHZ, METRICS, OPENAPI];

/// The OpenAPI document, the contract of both kv-server and kv-proxy.
pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");
