//! The pages as pure functions from data to HTML, written with maud: every
//! key, value, message and cursor is escaped by construction, since maud
//! escapes each interpolated string unless told otherwise, and nothing here
//! tells it otherwise. No function here reads a store or a socket.

use std::time::Duration;

use kv_api::dump::Entry;
use kv_api::key;
use maud::{DOCTYPE, Markup, html};

/// The longest value shown in full in a listing row.
const VALUE_PREVIEW: usize = 512;

const STYLE: &str = concat!(
    "body{font-family:system-ui,sans-serif;margin:0;color:#1f2328;background:#fff}",
    "header{background:#24292f;color:#fff;padding:.6rem 2rem;display:flex;gap:1rem;align-items:baseline}",
    "header a{color:#fff;font-weight:600;text-decoration:none}",
    "main{padding:1rem 2rem;max-width:70rem}",
    "nav.crumbs{margin:.5rem 0 1rem;font-size:1.05rem}nav.crumbs a{text-decoration:none}",
    "table{border-collapse:collapse;width:100%}",
    "th,td{border-bottom:1px solid #d0d7de;padding:.35rem .6rem;text-align:left;vertical-align:top}",
    "td.value,pre,textarea,input.key,code{font-family:ui-monospace,monospace}",
    "td.value{white-space:pre-wrap;word-break:break-all}",
    "th{background:#f6f8fa}.muted{color:#656d76}",
    "pre.value{background:#f6f8fa;border:1px solid #d0d7de;padding:.8rem;white-space:pre-wrap;word-break:break-all}",
    "textarea{width:100%;min-height:8rem;box-sizing:border-box}",
    "input.key{width:30rem;max-width:100%}",
    ".notice{background:#dafbe1;border:1px solid #4ac26b;padding:.5rem .8rem}",
    ".warning{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem .8rem}",
    ".danger{background:#ffebe9;border:1px solid #ff8182;padding:.5rem .8rem}",
    "button.delete{color:#cf222e}",
    "section{margin:1.2rem 0}.row{display:flex;gap:1rem}.row div.side{flex:1;min-width:0}",
    "form.inline{display:inline}",
    "tr.changed{background:#fff8c5}tr{transition:background .8s}",
);

/// The Content-Security-Policy of every page: scripts only from files the
/// program serves itself (the live listing's [`LIVE_JS`]), never inline, so
/// markup in a key or value could not run even if it escaped; fetches
/// (the listing's change feed) only to this origin; the inline style only;
/// forms only to this origin; and no framing (a delete button cannot be
/// clickjacked).
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                       style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; \
                       frame-ancestors 'none'";

/// The live listing's script, served at [`kv_api::routes::UI_LIVE_JS`]: it
/// applies the change feed to the listing's rows.
pub const LIVE_JS: &str = include_str!("live.js");

/// The listing page of a folder.
pub fn listing_href(prefix: &str) -> String {
    if prefix.is_empty() {
        "/kv".to_owned()
    } else {
        format!("/kv?prefix={}", key::encode_query_component(prefix))
    }
}

/// A key's page: `/ui/kv/<key>`.
pub fn page_href(key: &str) -> String {
    format!("/ui{}", key::encode_path(key))
}

/// A key's value as a file: `/ui/download/<key>`.
pub fn download_href(key: &str) -> String {
    format!("/ui/download/{}", &key::encode_path(key)[key::KV_PREFIX.len()..])
}

/// The folder a prefix or key is in: everything up to its last `/`.
pub fn folder_of(path: &str) -> &str {
    path.rfind('/').map_or("", |at| &path[..=at])
}

/// A row of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Every key under this path (which ends with `/`).
    Folder(String),
    Key(Entry),
}

impl Row {
    /// The key or folder path, which is also the row's page cursor.
    pub fn path(&self) -> &str {
        match self {
            Self::Folder(path) => path,
            Self::Key(entry) => &entry.key,
        }
    }
}

/// What the listing shows.
pub struct Listing<'a> {
    /// The filter, as typed; the folder shown is [`folder_of`] it.
    pub prefix: &'a str,
    pub rows: &'a [Row],
    pub limit: usize,
    /// The cursor of the next page, if there is one.
    pub next: Option<&'a str>,
    /// The cursor this page starts after, if any.
    pub after: Option<&'a str>,
    pub total_keys: Option<u64>,
    /// The store revision the rows were read at (read before the scan). With
    /// it the page goes live: [`LIVE_JS`] follows the change feed from there.
    pub revision: Option<u64>,
}

/// The listing: breadcrumbs, the prefix filter, folders and keys, paging,
/// counts, and the form that creates a key.
pub fn listing(listing: &Listing<'_>) -> String {
    let folder = folder_of(listing.prefix);
    let folders = listing.rows.iter().filter(|r| matches!(r, Row::Folder(_))).count();
    let keys = listing.rows.len() - folders;
    let next_href = listing.next.map(|next| {
        format!(
            "/kv?prefix={}&limit={}&after={}",
            key::encode_query_component(listing.prefix),
            listing.limit,
            key::encode_query_component(next)
        )
    });
    let body = html! {
        form method="get" action="/kv" {
            label { "Prefix " input.key name="prefix" value=(listing.prefix) placeholder="users/"; }
            " "
            input type="hidden" name="limit" value=(listing.limit);
            button type="submit" { "Filter" }
            @if !listing.prefix.is_empty() { " " a href="/kv" { "Clear" } }
        }
        p.muted id="counts" {
            span id="counts-page" { (count(folders, "folder")) " and " (count(keys, "key")) " on this page" }
            @if listing.after.is_some() { " (not the first)" }
            @if let Some(total) = listing.total_keys { span id="total" { "; " (count(total as usize, "key")) " stored in all" } }
            "."
        }
        @if listing.revision.is_some() {
            p.muted { "This listing follows changes as they happen: " span id="live" { "connecting…" } }
        }
        table id="listing" data-rev=[listing.revision] data-prefix=(listing.prefix) data-folder=(folder)
            data-after=[listing.after] data-next=[listing.next] data-preview=(VALUE_PREVIEW) {
            thead { tr { th { "Key" } th { "Value" } th { "Version" } } }
            tbody {
                @for row in listing.rows {
                    @match row {
                        Row::Folder(path) => tr.folder data-path=(path) {
                            td { a href=(listing_href(path)) { "📁 " (relative(folder, path)) } }
                            td.muted { "folder" }
                            td {}
                        },
                        Row::Key(entry) => tr.key data-key=(entry.key) data-version=(entry.version) {
                            td { a href=(page_href(&entry.key)) { (relative(folder, &entry.key)) } }
                            td.value { (value_cell(entry)) }
                            td { (entry.version) }
                        },
                    }
                }
            }
        }
        @if listing.rows.is_empty() {
            p id="empty" {
                @if listing.prefix.is_empty() { "No keys here yet. " } @else { "No keys start with this prefix. " }
                "Create one below, or with "
                code { "curl -X PUT --data 'Derek Moss' http://127.0.0.1:8080/kv/name" } "."
            }
        }
        @if let Some(href) = &next_href {
            p { a rel="next" id="next" href=(href) { "Next page →" } }
        }
        section {
            h2 { "New key" }
            (create_form(folder, ""))
        }
        @if listing.revision.is_some() {
            script src=(kv_api::routes::UI_LIVE_JS) defer {}
        }
    };
    layout("kv", crumbs(folder, None), body)
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The part of a path below `folder`; the whole path when nothing is left.
fn relative<'a>(folder: &str, path: &'a str) -> &'a str {
    match path.strip_prefix(folder) {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

/// A value as a listing row shows it: text (cut at [`VALUE_PREVIEW`]), or
/// the size and type of a binary one.
fn value_cell(entry: &Entry) -> Markup {
    match shown_as(entry) {
        Shown::Text(text) | Shown::Json { raw: text, .. } if text.len() > VALUE_PREVIEW => {
            let cut = text.floor_char_boundary(VALUE_PREVIEW);
            html! { (&text[..cut]) span.muted { "… (" (text.len()) " bytes)" } }
        }
        Shown::Text(text) | Shown::Json { raw: text, .. } => html! { (text) },
        Shown::Binary => html! { span.muted { "(" (entry.value.len()) " bytes, " (entry.content_type) ")" } },
    }
}

/// How a value is shown to a person.
pub enum Shown<'a> {
    Text(&'a str),
    /// JSON, pretty-printed with the members in their stored order.
    Json {
        raw: &'a str,
        pretty: String,
    },
    /// Not text: its size and type, and a download link.
    Binary,
}

/// Text is UTF-8 without control characters other than tab, CR and LF,
/// whatever type it was stored with; JSON is text that parses as an object or
/// an array.
pub fn shown_as(entry: &Entry) -> Shown<'_> {
    let Ok(text) = std::str::from_utf8(&entry.value) else {
        return Shown::Binary;
    };
    if text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Shown::Binary;
    }
    match pretty_json(text) {
        Some(pretty) => Shown::Json { raw: text, pretty },
        None => Shown::Text(text),
    }
}

/// Re-indents a JSON object or array without reordering it (a parse into
/// `serde_json::Value` would sort the members).
pub fn pretty_json(text: &str) -> Option<String> {
    let trimmed = text.trim_start();
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut out = String::with_capacity(text.len() * 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if let Some(close) = chars.next_if(|&n| (c, n) == ('{', '}') || (c, n) == ('[', ']')) {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// What a key's page says above the value.
pub enum Notice {
    Saved(u64),
}

/// One key: its value (text as text, JSON pretty-printed, binary as size,
/// type and a download link), the form that edits it, and the delete button.
pub fn key_page(entry: &Entry, notice: Option<&Notice>) -> String {
    let body = html! {
        @if let Some(Notice::Saved(version)) = notice {
            p.notice id="notice" { "Saved (version " (version) ")." }
        }
        h1 { code id="key" { (entry.key) } }
        (facts(entry))
        section { (value_view(entry)) }
        @if let Some(text) = editable(entry) {
            section {
                h2 { "Edit" }
                (edit_form(&entry.key, text, Some(entry.version), &editing_type(entry)))
            }
        } @else {
            p.muted { "A binary value is replaced with " code { "curl -X PUT --data-binary @file" } "; the page does not edit it." }
        }
        section {
            a id="delete" href=(format!("{}?action=delete", page_href(&entry.key))) { "Delete this key…" }
        }
    };
    layout(&entry.key, crumbs(folder_of(&entry.key), Some(&entry.key)), body)
}

/// Version, type and size; the download and raw links.
fn facts(entry: &Entry) -> Markup {
    html! {
        p.muted id="facts" {
            "Version " span id="version" { (entry.version) } " · " (entry.content_type) " · " (count(entry.value.len(), "byte"))
            @if let Some(at) = entry.expires_at {
                " · " span id="expires" title=(kv_api::expiry::format_rfc3339(at)) {
                    "expires in " (kv_api::expiry::format_expires_in(Duration::from_millis(at.saturating_sub(kv_api::expiry::now_ms())))) " s"
                }
            }
            " · " a id="download" href=(download_href(&entry.key)) { "Download" }
            " · " a href=(key::encode_path(&entry.key)) { "Raw (the API)" }
        }
    }
}

fn value_view(entry: &Entry) -> Markup {
    match shown_as(entry) {
        Shown::Text(text) => html! { pre.value id="value" { (text) } },
        Shown::Json { pretty, .. } => html! { pre.value.json id="value" { (pretty) } },
        Shown::Binary => html! {
            p id="value" {
                "A binary value: " (count(entry.value.len(), "byte")) " of " code { (entry.content_type) } ". "
                a href=(download_href(&entry.key)) { "Download it" } "."
            }
        },
    }
}

/// The type a value edited on its page is stored with: its own, unless
/// that says nothing (`application/octet-stream`, the API's default), in
/// which case text, which it is.
fn editing_type(entry: &Entry) -> String {
    if entry.content_type == kv_api::dump::DEFAULT_CONTENT_TYPE {
        kv_api::dump::content_type_for(&entry.value).to_owned()
    } else {
        entry.content_type.clone()
    }
}

/// The text a person may edit, if the value is text.
fn editable(entry: &Entry) -> Option<&str> {
    match shown_as(entry) {
        Shown::Text(text) | Shown::Json { raw: text, .. } => Some(text),
        Shown::Binary => None,
    }
}

/// The edit form. It carries the version it was opened at (`None`: the key
/// did not exist), so a save cannot overwrite a change it has not seen.
fn edit_form(key: &str, text: &str, version: Option<u64>, content_type: &str) -> Markup {
    // Forms send line breaks as CRLF: remember which the value had.
    let eol = if text.contains("\r\n") { "crlf" } else { "lf" };
    html! {
        form method="post" action=(page_href(key)) id="edit" {
            input type="hidden" name="action" value="save";
            input type="hidden" name="version" value=(version.map(|v| v.to_string()).unwrap_or_default());
            input type="hidden" name="content_type" value=(content_type);
            input type="hidden" name="eol" value=(eol);
            // A textarea drops one leading newline: give it one to drop.
            textarea name="value" rows="10" { "\n" (text) }
            p { button type="submit" { "Save" } }
        }
    }
}

/// The form that creates a key, its name starting with `folder`.
pub fn create_form(folder: &str, value: &str) -> Markup {
    html! {
        form method="post" action="/ui/kv" id="create" {
            p { label { "Key " input.key name="key" value=(folder) required; } }
            textarea name="value" rows="4" placeholder="value" { "\n" (value) }
            p { button type="submit" { "Create" } }
        }
    }
}

/// The confirmation step before a delete.
pub fn confirm_delete(entry: &Entry) -> String {
    let body = html! {
        h1 { "Delete " code { (entry.key) } "?" }
        (facts(entry))
        section { (value_view(entry)) }
        p.danger { "The key and its value will be gone. This cannot be undone." }
        form method="post" action=(page_href(&entry.key)) id="confirm-delete" {
            input type="hidden" name="action" value="delete";
            input type="hidden" name="version" value=(entry.version);
            button.delete type="submit" { "Delete" }
            " " a href=(page_href(&entry.key)) { "Cancel" }
        }
    };
    layout(&entry.key, crumbs(folder_of(&entry.key), Some(&entry.key)), body)
}

/// What a person tried that found the key changed.
pub enum Attempt<'a> {
    /// A save of this text.
    Save(&'a str),
    Delete,
    /// A create of a key that exists.
    Create(&'a str),
}

/// The key changed (or appeared, or went) since the page was opened: nothing
/// was written. Both values are shown; the form offers to save the person's
/// value over the current version, knowingly.
pub fn conflict(key: &str, attempt: &Attempt<'_>, current: Option<&Entry>) -> String {
    let body = html! {
        h1 { code { (key) } }
        p.warning id="conflict" {
            @match (attempt, current) {
                (Attempt::Create(_), _) => "A key with this name already exists. Nothing was written.",
                (_, Some(_)) => "This key was changed since you opened it. Nothing was written.",
                (_, None) => "This key was deleted since you opened it. Nothing was written.",
            }
        }
        div.row {
            @if let Attempt::Save(mine) | Attempt::Create(mine) = attempt {
                div.side {
                    h2 { "Your value" }
                    pre.value id="yours" { (mine) }
                }
            }
            div.side {
                @match current {
                    Some(entry) => {
                        h2 { "Current value (version " (entry.version) ")" }
                        (value_view(entry))
                    }
                    None => { h2 { "Current value" } p id="value" { "(none: the key is gone)" } }
                }
            }
        }
        @match (attempt, current) {
            (Attempt::Save(mine) | Attempt::Create(mine), Some(entry)) if editable(entry).is_some() => section {
                h2 { "Save yours anyway?" }
                (edit_form(key, mine, Some(entry.version), &editing_type(entry)))
            },
            (Attempt::Save(mine), None) => section {
                h2 { "Create it again with yours?" }
                (edit_form(key, mine, None, kv_api::dump::content_type_for(mine.as_bytes())))
            },
            (Attempt::Delete, Some(entry)) => section {
                a href=(format!("{}?action=delete", page_href(&entry.key))) { "Delete the current version…" }
            },
            _ => {}
        }
        p { a href=(page_href(key)) { "Open the key as it is now" } }
    };
    layout(key, crumbs(folder_of(key), Some(key)), body)
}

/// No such key: say so, and offer to create it.
pub fn not_found(key: &str) -> String {
    let body = html! {
        h1 { code { (key) } }
        p.warning id="missing" { "No value is stored under this key." }
        section {
            h2 { "Create it" }
            form method="post" action="/ui/kv" id="create" {
                input type="hidden" name="key" value=(key);
                textarea name="value" rows="4" { "\n" }
                p { button type="submit" { "Create" } }
            }
        }
    };
    layout(key, crumbs(folder_of(key), Some(key)), body)
}

/// A request the page could not carry out, with a message for a person.
pub fn failure(title: &str, message: &str) -> String {
    let body = html! {
        h1 { (title) }
        p.danger id="error" { (message) }
        p { a href="/kv" { "Back to the listing" } }
    };
    layout(title, crumbs("", None), body)
}

/// The page that asks for the access token. `next`: where to go after.
pub fn login(token_configured: bool, next: &str, wrong: bool) -> String {
    let body = html! {
        h1 { "Access token" }
        @if !token_configured {
            p { "This kv has no access token: there is nothing to log in to." }
            p { a href="/kv" { "Open the listing" } }
        } @else {
            @if wrong { p.danger id="error" { "That is not the access token." } }
            p {
                "This kv needs its access token. A browser cannot send an " code { "Authorization" }
                " header, so enter the token here: it is kept in a cookie that only this site's pages "
                "send (" code { "HttpOnly; SameSite=Strict" } ") until you log out or close the browser."
            }
            form method="post" action="/ui/login" id="login" {
                input type="hidden" name="next" value=(next);
                p { label { "Token " input type="password" name="token" autocomplete="current-password" required; } }
                p { button type="submit" { "Log in" } }
            }
            p.muted {
                "Programs send the token in a header instead: "
                code { "curl -H 'Authorization: Bearer <token>' …" } ", or " code { "KV_TOKEN=<token> kv …" } "."
            }
            form method="post" action="/ui/logout" {
                button type="submit" { "Log out" }
            }
        }
    };
    layout("Access token", crumbs("", None), body)
}

/// Breadcrumbs: `kv / users / alice / name`, each folder a link.
fn crumbs(folder: &str, leaf: Option<&str>) -> Markup {
    let mut parts = Vec::new();
    let mut at = 0;
    while let Some(slash) = folder[at..].find('/') {
        let end = at + slash + 1;
        parts.push((&folder[at..end], &folder[..end]));
        at = end;
    }
    html! {
        nav.crumbs id="crumbs" {
            a href="/kv" { "kv" }
            @for (name, path) in parts {
                " / " a href=(listing_href(path)) { (name.strip_suffix('/').unwrap_or(name)) }
            }
            @if let Some(leaf) = leaf {
                " / " strong { (leaf.strip_prefix(folder).unwrap_or(leaf)) }
            }
        }
    }
}

fn layout(title: &str, crumbs: Markup, body: Markup) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · kv" }
                style { (STYLE) }
            }
            body {
                header { a href="/kv" { "kv" } span { "a key-value store" } }
                main { (crumbs) (body) }
            }
        }
    };
    // U+2028 and U+2029 end a line inside a script; as references they cannot.
    page.into_string()
        .replace('\u{2028}', "&#x2028;")
        .replace('\u{2029}', "&#x2029;")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(key: &str, value: &[u8]) -> Entry {
        Entry {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
            content_type: "text/plain; charset=utf-8".into(),
            version: 7,
            expires_at: None,
        }
    }

    #[test]
    fn keys_values_and_cursors_are_escaped() {
        let rows = [
            Row::Key(entry("<script>alert(1)</script>", b"\"><img src=x onerror=alert(1)>")),
            Row::Key(entry("line", "a\u{2028}b".as_bytes())),
            Row::Folder("<b>/".into()),
        ];
        let page = listing(&Listing {
            prefix: "\"><b>",
            rows: &rows,
            limit: 10,
            next: Some("</a>"),
            after: None,
            total_keys: None,
            revision: Some(3),
        });
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("a&#x2028;b"), "{page}");
        let page = key_page(&entry("<i>k</i>", b"<script>x</script>"), None);
        assert!(!page.contains("<i>") && !page.contains("<script>x"), "{page}");
    }

    #[test]
    fn json_is_reindented_in_its_own_order() {
        assert_eq!(
            pretty_json(r#"{"z":1,"a":[1, {"s":"a,{b}\"c"}],"e":{},"f":[ ]}"#).unwrap(),
            "{\n  \"z\": 1,\n  \"a\": [\n    1,\n    {\n      \"s\": \"a,{b}\\\"c\"\n    }\n  ],\n  \"e\": {},\n  \"f\": []\n}"
        );
        assert_eq!(pretty_json("42"), None, "a scalar is shown as it is");
        assert_eq!(pretty_json("{nope"), None);
    }

    #[test]
    fn values_are_shown_by_what_they_hold() {
        assert!(matches!(
            shown_as(&entry("k", b"Derek Moss")),
            Shown::Text("Derek Moss")
        ));
        assert!(matches!(shown_as(&entry("k", b"[1,2]")), Shown::Json { .. }));
        assert!(matches!(
            shown_as(&entry("k", &[0x89, b'P', b'N', b'G'])),
            Shown::Binary
        ));
        assert!(matches!(shown_as(&entry("k", b"a\0b")), Shown::Binary));
    }

    #[test]
    fn breadcrumbs_link_every_folder() {
        let page = key_page(&entry("users/alice/name", b"x"), None);
        assert!(page.contains(r#"href="/kv?prefix=users%2F""#), "{page}");
        assert!(page.contains(r#"href="/kv?prefix=users%2Falice%2F""#), "{page}");
        assert!(page.contains(r#"href="/ui/download/users/alice/name""#), "{page}");
        assert_eq!(folder_of("users/alice/name"), "users/alice/");
        assert_eq!(folder_of("us"), "");
    }
}
