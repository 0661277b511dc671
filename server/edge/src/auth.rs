//! Access control: a shared bearer token, and Redis-style protected mode.
//!
//! Every listener binds to loopback unless told otherwise. Binding anywhere
//! else needs a token (`--token-file`, or `KV_TOKEN`) or an explicit
//! `--insecure`, so a store is never exposed to a network by accident. With a
//! token, every HTTP route but `/healthz` wants `Authorization: Bearer
//! <token>`; the comparison takes constant time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use kv_api::{ApiError, ErrorCode, routes};

/// The access-control flags both programs take.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// A file whose first line is the access token clients must present
    /// (`Authorization: Bearer <token>`, or `AUTH <token>` over telnet).
    #[arg(long, env = "KV_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The access token itself (prefer --token-file: a file is not visible in `ps`).
    #[arg(long = "token", env = "KV_TOKEN", hide_env_values = true, hide = true)]
    pub token: Option<String>,

    /// Allow listening on a non-loopback address without a token. Anyone who
    /// can reach the port can then read and write everything.
    #[arg(long)]
    pub insecure: bool,
}

impl AuthArgs {
    /// Reads the token, if one is configured.
    pub fn load(&self) -> Result<Option<Token>, String> {
        let text = match (&self.token_file, &self.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read the token file {}: {err}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned(),
            (None, Some(token)) => token.trim().to_owned(),
            (None, None) => return Ok(None),
        };
        Token::new(&text).map(Some)
    }

    /// Refuses a non-loopback address unless there is a token or `--insecure`.
    pub fn check_exposure(&self, token: Option<&Token>, addrs: &[(SocketAddr, &str)]) -> Result<(), String> {
        if token.is_some() || self.insecure {
            return Ok(());
        }
        match addrs.iter().find(|(addr, _)| !addr.ip().is_loopback()) {
            None => Ok(()),
            Some((addr, flag)) => Err(format!(
                "refusing to listen on {addr} ({flag}) without an access token: anyone on the network could \
                 read and write every key. Set --token-file (or KV_TOKEN), or pass --insecure if the network is trusted"
            )),
        }
    }
}

/// A shared secret, compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() < 8 {
            return Err("the access token must be at least 8 characters long".into());
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the access token must be printable ASCII without spaces".into());
        }
        Ok(Self(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        bool::from(self.0.as_bytes().ct_eq(candidate))
    }

    /// Whether an `Authorization` header carries the token.
    pub fn authorizes(&self, header: Option<&HeaderValue>) -> bool {
        header
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|candidate| self.matches(candidate))
    }
}

/// Adds [`require_token`] to `routes` when there is a token, and nothing
/// (not even a pass-through layer on the hot path) when there is none.
pub fn guard<S: Clone + Send + Sync + 'static>(routes: axum::Router<S>, token: Option<Token>) -> axum::Router<S> {
    match token {
        Some(token) => routes.layer(axum::middleware::from_fn_with_state(Some(token), require_token)),
        None => routes,
    }
}

/// Middleware: with a token configured, every route but `/healthz` and the
/// login form needs it. It runs before any handler, so a cached entry is
/// never served to a request that did not authenticate.
///
/// The token comes as `Authorization: Bearer <token>`, or, from a browser
/// (which cannot add that header), in the `kv_token` cookie the login form
/// sets. The cookie is `SameSite=Strict`, so no other site's page can make the
/// browser send it; it is accepted on reads and on the pages' forms (which
/// check their origin besides), never on the API's PUT and DELETE. Both are
/// compared in constant time. A browser that asks for a page without the
/// token gets a page that asks for it, not a bare JSON 401.
pub async fn require_token(State(token): State<Option<Token>>, request: Request, next: Next) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path == routes::HEALTHZ
        || path == routes::UI_LOGIN
        || path == routes::UI_LOGOUT
        || token.authorizes(request.headers().get(header::AUTHORIZATION))
    {
        return next.run(request).await;
    }
    let cookie_may_authorize =
        request.method() == Method::GET || request.method() == Method::HEAD || path.starts_with(routes::UI_PREFIX);
    if cookie_may_authorize && crate::pages::cookie_token(request.headers()).is_some_and(|c| token.matches(&c)) {
        return next.run(request).await;
    }
    let mut response = if wants_html(request.headers()) {
        let next = request.uri().path_and_query().map_or("/kv", |p| p.as_str());
        let next = if request.method() == Method::GET { next } else { "/kv" };
        crate::pages::html(StatusCode::UNAUTHORIZED, crate::pages::render::login(true, next, false))
    } else {
        ApiError::new(
            ErrorCode::Unauthorized,
            "this kv needs an access token: send Authorization: Bearer <token> (the kv CLI sends KV_TOKEN)",
        )
        .into_response()
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether the client prefers a page: a browser navigating (its `Accept`
/// names `text/html`).
fn wants_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let token = Token::new("s3cret-token").unwrap();
        assert!(token.authorizes(Some(&HeaderValue::from_static("Bearer s3cret-token"))));
        assert!(!token.authorizes(Some(&HeaderValue::from_static("Bearer s3cret-tokeN"))));
        assert!(!token.authorizes(Some(&HeaderValue::from_static("s3cret-token"))));
        assert!(!token.authorizes(None));
        assert!(Token::new("short").is_err());
        assert!(Token::new("has a space").is_err());
    }

    #[test]
    fn protected_mode() {
        let args = AuthArgs::default();
        let loopback: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert!(args.check_exposure(None, &[(loopback, "--listen")]).is_ok());
        assert!(
            args.check_exposure(None, &[(any, "--listen")])
                .unwrap_err()
                .contains("--token-file")
        );
        let token = Token::new("s3cret-token").unwrap();
        assert!(args.check_exposure(Some(&token), &[(any, "--listen")]).is_ok());
        let insecure = AuthArgs {
            insecure: true,
            ..AuthArgs::default()
        };
        assert!(insecure.check_exposure(None, &[(any, "--listen")]).is_ok());
    }
}
