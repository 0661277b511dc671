//! The client half of kv's HTTP: the reqwest builder that the proxy (to its
//! upstream) and the CLI (to a proxy or a server) both start from.

use std::path::Path;

/// A reqwest builder for `url` with what every kv client wants: no redirects
/// followed, no `HTTP_PROXY` from the environment, `TCP_NODELAY`, and TLS
/// trust set from `ca_file` (which `what` names in messages, like
/// `"--upstream-ca-file"`). Callers add their own timeouts and pool sizes.
pub fn builder(
    url: &reqwest::Url,
    ca_file: Option<&Path>,
    what: &'static str,
) -> Result<reqwest::ClientBuilder, String> {
    crate::tls::install_crypto_provider();
    let builder = match (url.scheme(), ca_file) {
        // No TLS will be spoken, so do not load the system's trust store:
        // a bare machine without one would fail to build the client.
        ("http", None) => reqwest::Client::builder().tls_certs_only([]),
        // Refused rather than ignored: whoever names a CA expects the
        // traffic to be encrypted, and it would not be.
        ("http", Some(_)) => {
            return Err(format!(
                "{what} is set but '{url}' is not https://; use https:// or drop the CA file"
            ));
        }
        // The system's trust store (reqwest's platform verifier), plus the
        // CA file if any, so a publicly trusted server works either way.
        (_, ca_file) => reqwest::Client::builder().tls_certs_merge(trusted_roots(ca_file, what)?),
    };
    Ok(builder
        // A proxy must not be redirected, nor proxied by whatever HTTP_PROXY says.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true))
}

/// Builds the client, saying why when it cannot be built.
pub fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
    builder
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {}", with_causes(&err)))
}

/// The certificates in a CA file (`what` names it in messages), as reqwest takes them.
fn trusted_roots(ca_file: Option<&Path>, what: &'static str) -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    crate::tls::read_certificates(path, what)
        .map_err(|err| err.to_string())?
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<_, _>>()
        .map_err(|err| format!("{what} {}: {err}", path.display()))
}

/// An error and each of its sources, for reqwest, whose own message
/// ("builder error", "error sending request") leaves out what went wrong.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

/// The longest NDJSON line a client accepts: a 1 MiB value escaped as JSON
/// (at most six bytes a byte) or base64, and its key, with room to spare.
pub const MAX_NDJSON_LINE: usize = 8 << 20;

/// Splits an NDJSON answer (DUMP, export) into parsed items, one a line,
/// with tokio-util's bounded lines codec. Errors are messages for a person:
/// a connection cut short, a line too long, a line that is not an item.
pub fn ndjson_items(
    response: reqwest::Response,
) -> impl futures_util::Stream<Item = Result<kv_api::dump::Item, String>> + Send + Unpin + use<> {
    use futures_util::StreamExt as _;
    ndjson_lines(response, "listing")
        .map(|line| serde_json::from_str(&line?).map_err(|err| format!("a malformed listing line: {err}")))
}

/// The non-empty lines of an NDJSON answer (DUMP, the change feed), each at
/// most [`MAX_NDJSON_LINE`] bytes; errors are messages for a person, naming
/// the stream as `what` ("listing", "feed").
pub fn ndjson_lines(
    response: reqwest::Response,
    what: &'static str,
) -> impl futures_util::Stream<Item = Result<String, String>> + Send + Unpin + use<> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let bytes = response.bytes_stream().map_err(std::io::Error::other);
    let lines = tokio_util::codec::FramedRead::new(
        tokio_util::io::StreamReader::new(bytes),
        tokio_util::codec::LinesCodec::new_with_max_length(MAX_NDJSON_LINE),
    );
    lines
        .filter(|line| std::future::ready(!matches!(line, Ok(line) if line.trim().is_empty())))
        .map(move |line| match line {
            Ok(line) => Ok(line),
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {
                Err(format!("a {what} line is longer than {MAX_NDJSON_LINE} bytes"))
            }
            Err(tokio_util::codec::LinesCodecError::Io(err)) => Err(format!("the {what} was cut short: {err}")),
        })
}
