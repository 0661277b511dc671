//! The pages for people, served by kv-server and kv-proxy alike: a key's
//! page, the forms that create, edit and delete, the download of a value,
//! and the login form for a configured access token. The listing itself is
//! `GET /kv` with `Accept: text/html`; its rows come from each program (the
//! server scans its store, the proxy relays the server's page), and its HTML
//! from [`render::listing`].
//!
//! The pages live here, in the edge, because they are HTTP through and
//! through (forms, redirects, cookies, same-origin checks) and because the
//! login cookie is checked by [`crate::auth`] beside the bearer token; they
//! reach the data only through [`Backend`], which each program implements
//! over its own read and write path (the store on the server; the cache and
//! its invalidating writes on the proxy, so an edit made through the proxy
//! is seen on the next page load). [`render`] holds the HTML as pure
//! functions, with maud.
//!
//! Forms work without JavaScript: each POST is answered with a 303 to the
//! page to show next (or with the page itself when there is something to
//! say, such as a conflict). Each POST must come from a page of the same
//! origin ([`same_origin`]); the API under `/kv` is unaffected.

pub mod render;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use kv_api::condition::{Condition, Precondition};
use kv_api::dump::{DEFAULT_CONTENT_TYPE, Entry, VALUE_CSP};
use kv_api::{ApiError, key, routes};

use crate::auth::Token;

/// What a page's write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Done, at this version (`None` for a delete).
    Done(Option<u64>),
    /// The precondition failed: the key changed, appeared or went meanwhile.
    Conflict,
    /// A delete found no key.
    NotFound,
}

/// A failure to read or write, as a status and a message for a person.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        Self {
            status: err.status,
            message: err.message,
        }
    }
}

/// How the pages read and write: each program's own path.
pub trait Backend: Clone + Send + Sync + 'static {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, Failure>> + Send;
    fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: &str,
        precondition: Precondition,
    ) -> impl Future<Output = Result<Written, Failure>> + Send;
    fn delete(&self, key: &str, precondition: Precondition) -> impl Future<Output = Result<Written, Failure>> + Send;
}

/// The pages' settings.
#[derive(Clone)]
pub struct Pages<B> {
    pub backend: B,
    pub max_value_bytes: usize,
    pub token: Option<Token>,
}

/// The cookie that carries the access token for a browser.
pub const COOKIE: &str = "kv_token";

/// Adds the page routes to a program's router.
pub fn routes<S, B>(router: Router<S>, pages: Pages<B>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    B: Backend,
{
    let pages = Arc::new(pages);
    let (p1, p2, p3, p4, p5, p6) = (
        pages.clone(),
        pages.clone(),
        pages.clone(),
        pages.clone(),
        pages.clone(),
        pages,
    );
    router
        .route(
            routes::UI_KEY,
            get(move |request: Request| async move { p1.show(request).await })
                .post(move |request: Request| async move { p2.change(request).await }),
        )
        .route(
            routes::UI_NEW,
            post(move |request: Request| async move { p3.create(request).await }),
        )
        .route(
            routes::UI_DOWNLOAD,
            get(move |request: Request| async move { p4.download(request).await }),
        )
        .route(
            routes::UI_LOGIN,
            get(move |request: Request| async move { p5.login_form(&request) })
                .post(move |request: Request| async move { p6.login(request).await }),
        )
        .route(routes::UI_LOGOUT, post(logout))
        .route(routes::UI_LIVE_JS, get(live_js))
}

/// The live listing's script: static, so a browser may keep it while it
/// revalidates (`no-cache` with an `ETag` of the build's script).
async fn live_js(headers: HeaderMap) -> Response {
    static ETAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        render::LIVE_JS.hash(&mut hasher);
        format!("\"{:016x}\"", hasher.finish())
    });
    let etag = HeaderValue::from_str(&ETAG).expect("a hex ETag is a valid header value");
    let mut response = if headers.get(header::IF_NONE_MATCH) == Some(&etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, render::LIVE_JS).into_response()
    };
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(header::ETAG, etag);
    response
}

/// The form fields any page posts.
#[derive(Debug, Default, serde::Deserialize)]
struct Form {
    action: Option<String>,
    key: Option<String>,
    value: Option<String>,
    version: Option<String>,
    content_type: Option<String>,
    eol: Option<String>,
    token: Option<String>,
    next: Option<String>,
}

/// An HTML answer with the pages' CSP.
pub fn html(status: StatusCode, page: String) -> Response {
    let mut response = (status, page).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(render::CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn failure_page(failure: &Failure) -> Response {
    let title = failure.status.canonical_reason().unwrap_or("Error");
    html(failure.status, render::failure(title, &failure.message))
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Whether a form was posted by a page of this origin: `Sec-Fetch-Site:
/// same-origin` where the browser sends it (every current one does), else
/// an `Origin` naming the host the request was sent to. A request with
/// neither (curl, an old browser) is refused: the pages are for browsers,
/// and programs have the API.
pub fn same_origin(method: &Method, uri: &axum::http::Uri, headers: &HeaderMap) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    match (origin.and_then(|o| o.split_once("://")), host) {
        (Some((_, origin_host)), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

fn cross_site() -> Response {
    html(
        StatusCode::FORBIDDEN,
        render::failure(
            "Forbidden",
            "This form may only be sent from kv's own pages (the browser said it came from elsewhere, or did not \
             say). Programs write through the API instead: PUT and DELETE /kv/<key>.",
        ),
    )
}

/// The key in a page path: `/ui/kv/<key>` or `/ui/download/<key>`.
fn key_in(path: &str, route_prefix: &str) -> Result<String, Failure> {
    let raw = path.strip_prefix(route_prefix).unwrap_or("");
    key::decode_path(&format!("{}{raw}", key::KV_PREFIX)).map_err(|err| Failure {
        status: StatusCode::BAD_REQUEST,
        message: err.to_string(),
    })
}

/// A key page's query: `action=delete` (the confirmation step of a delete)
/// and `saved=<version>` (the notice after a save), each at most once. Both
/// are only for the page, but a malformed one is refused all the same: the
/// contract says what they are, and a page that ignored a bad one would hide
/// a broken link.
fn page_query(request: &Request) -> Result<(bool, Option<u64>), Failure> {
    let bad = |message: &str| Failure {
        status: StatusCode::BAD_REQUEST,
        message: message.to_owned(),
    };
    let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(request.uri().query().unwrap_or(""))
        .map_err(|_| bad("the query string is malformed"))?;
    let (mut action, mut saved) = (None, None);
    for (name, value) in pairs {
        match name.as_str() {
            "action" if action.is_some() => return Err(bad("`action` may be given once")),
            "action" if value == "delete" => action = Some(true),
            "action" => return Err(bad("the only `action` a key's page shows is `delete`")),
            "saved" if saved.is_some() => return Err(bad("`saved` may be given once")),
            "saved" => {
                saved = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("`saved` must be a version number (a whole number of 0 or more)"))?,
                );
            }
            _ => {}
        }
    }
    Ok((action.unwrap_or(false), saved))
}

fn query_value(request: &Request, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find_map(|(n, v)| (n == name).then_some(v))
}

impl<B: Backend> Pages<B> {
    /// Reads a posted form, after the same-origin check.
    async fn form(&self, request: Request) -> Result<Form, Response> {
        let (parts, body) = request.into_parts();
        if !same_origin(&parts.method, &parts.uri, &parts.headers) {
            return Err(cross_site());
        }
        // Form encoding can triple a value's size; the write checks the value itself.
        let limit = self.max_value_bytes.saturating_mul(3).saturating_add(64 * 1024);
        let bytes = crate::request::read_body(&parts.headers, parts.version, body, limit)
            .await
            .map_err(|err| failure_page(&err.into()))?;
        serde_urlencoded::from_bytes(&bytes).map_err(|err| {
            failure_page(&Failure {
                status: StatusCode::BAD_REQUEST,
                message: format!("the form could not be read: {err}"),
            })
        })
    }

    /// `GET /ui/kv/<key>`: the key's page, or (`?action=delete`) the
    /// confirmation of a delete.
    async fn show(&self, request: Request) -> Response {
        let key = match key_in(request.uri().path(), "/ui/kv/") {
            Ok(key) => key,
            Err(failure) => return failure_page(&failure),
        };
        let entry = match self.backend.get(&key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return html(StatusCode::NOT_FOUND, render::not_found(&key)),
            Err(failure) => return failure_page(&failure),
        };
        let (confirm_delete, saved) = match page_query(&request) {
            Ok(query) => query,
            Err(failure) => return failure_page(&failure),
        };
        if confirm_delete {
            return html(StatusCode::OK, render::confirm_delete(&entry));
        }
        let notice = saved.map(render::Notice::Saved);
        html(StatusCode::OK, render::key_page(&entry, notice.as_ref()))
    }

    /// `POST /ui/kv/<key>`: save (`action=save`) or delete (`action=delete`),
    /// each only if the key is still at the version the page showed.
    async fn change(&self, request: Request) -> Response {
        let key = match key_in(request.uri().path(), "/ui/kv/") {
            Ok(key) => key,
            Err(failure) => return failure_page(&failure),
        };
        let form = match self.form(request).await {
            Ok(form) => form,
            Err(response) => return response,
        };
        let version: Option<u64> = form.version.as_deref().and_then(|v| v.trim().parse().ok());
        match form.action.as_deref() {
            Some("save") => {
                let value = with_line_breaks(form.value.unwrap_or_default(), form.eol.as_deref());
                let content_type = form
                    .content_type
                    .filter(|t| is_storable_type(t))
                    .unwrap_or_else(|| kv_api::dump::content_type_for(value.as_bytes()).to_owned());
                // The version the page was opened at; none: the key did not exist then.
                let precondition = match version {
                    Some(version) => Precondition {
                        if_match: Condition::Versions(vec![version]),
                        ..Precondition::default()
                    },
                    None => Precondition {
                        if_none_match: Condition::Any,
                        ..Precondition::default()
                    },
                };
                let written = self
                    .backend
                    .put(&key, Bytes::from(value.clone()), &content_type, precondition)
                    .await;
                match written {
                    Ok(Written::Done(version)) => see_other(&saved_href(&key, version)),
                    Ok(Written::Conflict | Written::NotFound) => {
                        self.conflict(&key, &render::Attempt::Save(&value)).await
                    }
                    Err(failure) => failure_page(&failure),
                }
            }
            Some("delete") => {
                let Some(version) = version else {
                    return failure_page(&Failure {
                        status: StatusCode::BAD_REQUEST,
                        message: "a delete names the version it confirms".into(),
                    });
                };
                let precondition = Precondition {
                    if_match: Condition::Versions(vec![version]),
                    ..Precondition::default()
                };
                match self.backend.delete(&key, precondition).await {
                    Ok(Written::Done(_) | Written::NotFound) => {
                        see_other(&render::listing_href(render::folder_of(&key)))
                    }
                    Ok(Written::Conflict) => self.conflict(&key, &render::Attempt::Delete).await,
                    Err(failure) => failure_page(&failure),
                }
            }
            _ => failure_page(&Failure {
                status: StatusCode::BAD_REQUEST,
                message: "the form names no action (save or delete)".into(),
            }),
        }
    }

    /// `POST /ui/kv`: creates a key that does not exist yet.
    async fn create(&self, request: Request) -> Response {
        let form = match self.form(request).await {
            Ok(form) => form,
            Err(response) => return response,
        };
        let key = form.key.unwrap_or_default();
        if let Err(err) = key::validate(&key) {
            return failure_page(&Failure {
                status: StatusCode::BAD_REQUEST,
                message: err.to_string(),
            });
        }
        let value = with_line_breaks(form.value.unwrap_or_default(), None);
        let content_type = kv_api::dump::content_type_for(value.as_bytes());
        let precondition = Precondition {
            if_none_match: Condition::Any,
            ..Precondition::default()
        };
        match self
            .backend
            .put(&key, Bytes::from(value.clone()), content_type, precondition)
            .await
        {
            Ok(Written::Done(version)) => see_other(&saved_href(&key, version)),
            Ok(Written::Conflict | Written::NotFound) => self.conflict(&key, &render::Attempt::Create(&value)).await,
            Err(failure) => failure_page(&failure),
        }
    }

    /// The conflict page (409): what the person tried, and the key as it is now.
    async fn conflict(&self, key: &str, attempt: &render::Attempt<'_>) -> Response {
        match self.backend.get(key).await {
            Ok(current) => html(StatusCode::CONFLICT, render::conflict(key, attempt, current.as_ref())),
            Err(failure) => failure_page(&failure),
        }
    }

    /// `GET /ui/download/<key>`: the raw value as a file to save, sandboxed
    /// like every value answer.
    async fn download(&self, request: Request) -> Response {
        let key = match key_in(request.uri().path(), "/ui/download/") {
            Ok(key) => key,
            Err(failure) => return failure_page(&failure),
        };
        let entry = match self.backend.get(&key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return html(StatusCode::NOT_FOUND, render::not_found(&key)),
            Err(failure) => return failure_page(&failure),
        };
        let mut response = Response::new(Body::from(entry.value.clone()));
        let headers = response.headers_mut();
        let content_type =
            HeaderValue::from_str(&entry.content_type).unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
        headers.insert(header::CONTENT_TYPE, content_type);
        if let Ok(disposition) = HeaderValue::from_str(&content_disposition(&key)) {
            headers.insert(header::CONTENT_DISPOSITION, disposition);
        }
        headers.insert(header::ETAG, kv_api::condition::etag(entry.version));
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(VALUE_CSP));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    /// `GET /ui/login`.
    fn login_form(&self, request: &Request) -> Response {
        let next = query_value(request, "next")
            .filter(|n| is_local(n))
            .unwrap_or("/kv".into());
        html(StatusCode::OK, render::login(self.token.is_some(), &next, false))
    }

    /// `POST /ui/login`: with the right token, a cookie that carries it
    /// (`HttpOnly; SameSite=Strict`), checked like the bearer token.
    async fn login(&self, request: Request) -> Response {
        let form = match self.form(request).await {
            Ok(form) => form,
            Err(response) => return response,
        };
        let next = form.next.filter(|n| is_local(n)).unwrap_or("/kv".into());
        let Some(token) = &self.token else {
            return see_other(&next);
        };
        if !token.matches(form.token.unwrap_or_default().trim().as_bytes()) {
            return html(StatusCode::UNAUTHORIZED, render::login(true, &next, true));
        }
        let mut response = see_other(&next);
        let cookie = format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            key::encode_query_component(token.as_str())
        );
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    }
}

/// `POST /ui/logout`: forgets the cookie.
async fn logout(request: Request) -> Response {
    if !same_origin(request.method(), request.uri(), request.headers()) {
        return cross_site();
    }
    let mut response = see_other(routes::UI_LOGIN);
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kv_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// The token a request's `kv_token` cookie carries, decoded.
pub fn cookie_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(|value| percent_encoding::percent_decode_str(value).collect())
}

/// A path on this site (not `//elsewhere`), for the redirect after a login.
fn is_local(path: &str) -> bool {
    path.starts_with('/') && !path.starts_with("//") && !path.starts_with("/\\")
}

/// Where a save sends the browser: the key's page, saying so.
fn saved_href(key: &str, version: Option<u64>) -> String {
    match version {
        Some(version) => format!("{}?saved={version}", render::page_href(key)),
        None => render::page_href(key),
    }
}

/// A form sends line breaks as CRLF; a value whose page had LF gets LF back.
fn with_line_breaks(value: String, eol: Option<&str>) -> String {
    if eol == Some("crlf") || !value.contains('\r') {
        value
    } else {
        value.replace("\r\n", "\n")
    }
}

fn is_storable_type(content_type: &str) -> bool {
    !content_type.trim().is_empty()
        && content_type.len() <= 255
        && content_type.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// `attachment` with the key's last segment as the file name: ASCII in
/// `filename`, the exact name in RFC 8187's `filename*`.
fn content_disposition(key: &str) -> String {
    let name = key.rsplit('/').find(|s| !s.is_empty()).unwrap_or("value");
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        key::encode_query_component(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn forms_must_come_from_this_origin() {
        let uri: axum::http::Uri = "/ui/kv/a".parse().unwrap();
        let post = Method::POST;
        assert!(same_origin(&post, &uri, &headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&post, &uri, &headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&post, &uri, &headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(
            &post,
            &uri,
            &headers(&[("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")])
        ));
        assert!(!same_origin(
            &post,
            &uri,
            &headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:8080")])
        ));
        assert!(!same_origin(
            &post,
            &uri,
            &headers(&[("origin", "null"), ("host", "h")])
        ));
        assert!(
            !same_origin(&post, &uri, &headers(&[("host", "127.0.0.1:8080")])),
            "curl"
        );
        assert!(same_origin(&Method::GET, &uri, &HeaderMap::new()));
    }

    #[test]
    fn the_cookie_carries_the_token() {
        let map = headers(&[("cookie", "a=b; kv_token=s3cret%3Btoken; c=d")]);
        assert_eq!(cookie_token(&map).as_deref(), Some(&b"s3cret;token"[..]));
        assert_eq!(cookie_token(&headers(&[("cookie", "kv_tokenx=1")])), None);
    }

    #[test]
    fn small_rules() {
        assert_eq!(with_line_breaks("a\r\nb".into(), Some("lf")), "a\nb");
        assert_eq!(with_line_breaks("a\r\nb".into(), Some("crlf")), "a\r\nb");
        assert!(is_local("/kv?prefix=a") && !is_local("//evil") && !is_local("http://x"));
        assert_eq!(
            content_disposition("photos/ça va.png"),
            "attachment; filename=\"_a_va.png\"; filename*=UTF-8''%C3%A7a%20va%2Epng"
        );
    }
}
