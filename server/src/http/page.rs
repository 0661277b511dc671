//! The browser listing of `GET /kv`, written with maud: every key, value and
//! cursor is escaped by construction, since maud escapes each interpolated
//! string unless told otherwise (and this page never tells it otherwise).

use kv_api::dump::Entry;
use kv_api::key;
use maud::{DOCTYPE, Markup, html};

/// The longest value shown in full on the page.
const VALUE_PREVIEW: usize = 2048;

const STYLE: &str = concat!(
    "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}",
    "table{border-collapse:collapse;width:100%}",
    "th,td{border-bottom:1px solid #ddd;padding:.35rem .6rem;text-align:left;vertical-align:top}",
    "td{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}",
    "th{background:#f4f4f4}.muted{color:#777}",
);

/// The page's Content-Security-Policy: no script at all, the inline style
/// only, forms only to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'";

/// The listing: a prefix filter, a table, and a link to the next page.
pub fn html_page(entries: &[Entry], prefix: &str, limit: usize, next: Option<&str>, total_keys: Option<u64>) -> String {
    let next_href = next.map(|next| {
        format!(
            "/kv?prefix={}&limit={limit}&after={}",
            key::encode_query_component(prefix),
            key::encode_query_component(next)
        )
    });
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "kv" }
                style { (STYLE) }
            }
            body {
                h1 { "kv" }
                form method="get" action="/kv" {
                    label { "Prefix " input name="prefix" value=(prefix); }
                    " "
                    input type="hidden" name="limit" value=(limit);
                    button type="submit" { "Filter" }
                }
                p.muted {
                    (entries.len()) " shown here"
                    @if let Some(total) = total_keys { ", " (total) " keys stored in all" }
                    "."
                }
                table {
                    thead { tr { th { "Key" } th { "Value" } th { "Version" } } }
                    tbody {
                        @for entry in entries {
                            tr {
                                td { a href=(key::encode_path(&entry.key)) { (entry.key) } }
                                td { (value_cell(&entry.value)) }
                                td { (entry.version) }
                            }
                        }
                    }
                }
                @if entries.is_empty() {
                    p { "No keys here yet. Store one with " code { "curl -X PUT --data 'Derek Moss' http://127.0.0.1:8080/kv/name" } "." }
                }
                @if let Some(href) = &next_href {
                    p { a rel="next" href=(href) { "Next page →" } }
                }
            }
        }
    };
    // U+2028 and U+2029 end a line inside a script; as references they cannot.
    page.into_string()
        .replace('\u{2028}', "&#x2028;")
        .replace('\u{2029}', "&#x2029;")
}

/// The most bytes an entry's row can take on the page: its key twice (as
/// text, escaped, and percent-encoded in the link), its value's preview
/// escaped, and the markup around them.
pub fn row_bytes_at_most(entry: &Entry) -> usize {
    // "&quot;" is the longest escape maud writes, for one byte; "%XX" for a link's.
    256 + entry.key.len() * (6 + 3) + entry.value.len().min(VALUE_PREVIEW) * 6
}

/// A value as the table shows it: text (cut at [`VALUE_PREVIEW`]), or the
/// size of a binary one.
fn value_cell(value: &[u8]) -> Markup {
    match std::str::from_utf8(value) {
        Ok(text) if text.len() > VALUE_PREVIEW => {
            let cut = text.floor_char_boundary(VALUE_PREVIEW);
            html! { (&text[..cut]) span.muted { "… (" (text.len()) " bytes)" } }
        }
        Ok(text) => html! { (text) },
        Err(_) => html! { span.muted { "(" (value.len()) " bytes of binary data)" } },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kv_api::dump::DEFAULT_CONTENT_TYPE;

    use super::*;

    fn entry(key: &str, value: &[u8]) -> Entry {
        Entry {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
            content_type: DEFAULT_CONTENT_TYPE.into(),
            version: 7,
        }
    }

    #[test]
    fn keys_and_values_are_escaped() {
        let page = html_page(
            &[
                entry("<script>alert(1)</script>", b"\"><img src=x onerror=alert(1)>"),
                entry("line", "a\u{2028}b".as_bytes()),
            ],
            "\"><b>",
            10,
            Some("</a>"),
            None,
        );
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("a&#x2028;b"), "{page}");
    }
}
