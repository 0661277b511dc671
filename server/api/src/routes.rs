//! The routes every kv HTTP program serves, named once: the routers of
//! kv-server and kv-proxy are built from these, metrics label requests with
//! them, and a test checks both routers against `openapi.yaml`.

/// DUMP: `GET /kv`; the batch write: `POST /kv` (NDJSON).
pub const DUMP: &str = "/kv";
/// `/kv/` with no key: routed so that it answers `bad_key`, not `no_route`.
pub const EMPTY_KEY: &str = "/kv/";
/// One key: `GET`, `HEAD`, `PUT`, `PATCH` (its deadline), `DELETE /kv/{key}`.
pub const KEY: &str = "/kv/{*key}";
pub const HEALTHZ: &str = "/healthz";
/// The pages for people (HTML; the listing itself is `GET /kv` with `Accept: text/html`).
/// One key's page: `GET` shows it, `POST` (a form) saves or deletes it.
pub const UI_KEY: &str = "/ui/kv/{*key}";
/// `POST` (a form): creates a key.
pub const UI_NEW: &str = "/ui/kv";
/// `GET`: a value as a file to save (`Content-Disposition: attachment`).
pub const UI_DOWNLOAD: &str = "/ui/download/{*key}";
/// `GET`: the form that asks for the access token; `POST`: sets the cookie.
pub const UI_LOGIN: &str = "/ui/login";
/// `POST`: forgets the cookie.
pub const UI_LOGOUT: &str = "/ui/logout";
/// `GET`: the live listing's script (the only script the pages run).
pub const UI_LIVE_JS: &str = "/ui/live.js";
/// The path prefix of every page route.
pub const UI_PREFIX: &str = "/ui/";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.yaml";

/// Every route, as metrics label them; anything else is counted as "other".
pub const ALL: [&str; 12] = [
    DUMP,
    EMPTY_KEY,
    KEY,
    HEALTHZ,
    METRICS,
    OPENAPI,
    UI_KEY,
    UI_NEW,
    UI_DOWNLOAD,
    UI_LOGIN,
    UI_LOGOUT,
    UI_LIVE_JS,
];

/// The OpenAPI document, the contract of both kv-server and kv-proxy.
pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");
