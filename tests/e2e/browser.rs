//! The pages in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) with fantoccini, against the real programs.
//!
//! Each test starts its own chromedriver on a free loopback port and a
//! Chromium with a fresh profile. Every step saves a screenshot under
//! `target/browser-screenshots/<test>/`, and a failing test saves
//! `failure.png` (and the page's HTML, `failure.html`) there before it fails.
//! A machine without the browser fails these tests: install `chromium` and
//! `chromium-driver` (`.ci/run` does). `KV_CHROMIUM` and `KV_CHROMEDRIVER`
//! name other binaries.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use kv_tests::{Proxy, Server, bin_dir, client};

const TOKEN: &str = "correct-horse-battery";

/// One binary, from the environment or Debian's place for it; panics (the
/// test fails, it does not skip) when it is not there.
fn binary(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: the browser tests need Debian's chromium and chromium-driver \
         (apt-get install -y chromium chromium-driver), or {variable} naming the binary",
        path.display()
    );
    path
}

/// chromedriver and its Chromium profile; both go when this is dropped.
struct Driver {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session, with numbered screenshots of its steps.
#[derive(Clone)]
struct Browser {
    client: Client,
    shots: Arc<PathBuf>,
    step: Arc<AtomicUsize>,
}

impl Browser {
    async fn start(test: &str) -> (Self, Driver) {
        let chromium = binary("KV_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("KV_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", chromedriver.display()));
        let profile = tempfile::tempdir().expect("a profile directory");
        let driver = Driver {
            child,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,850",
            &format!("--user-data-dir={}", driver._profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|err| panic!("a Chromium session through chromedriver: {err}"));
        let shots = screenshot_dir().join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("the screenshot directory");
        let browser = Self {
            client,
            shots: Arc::new(shots),
            step: Arc::default(),
        };
        (browser, driver)
    }

    async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("open {url}: {err}"));
    }

    async fn url(&self) -> String {
        self.client.current_url().await.expect("the current URL").to_string()
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("an element's text")
    }

    /// The element, waiting up to 5 s for it while a page is still loading.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => return element,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("no element {css} on {}: {err}", self.url().await),
            }
        }
    }

    /// Waits (up to 10 s) until the element's text is `want`, for a page
    /// that changes by itself (the live listing); panics with what it shows.
    async fn wait_text(&self, css: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::from("(no such element)"),
            };
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} shows {now:?} after 10 s, not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.expect("find_all").len()
    }

    /// Clicks, then waits (up to 10 s) for the page the click loads, if it
    /// loads one: a loaded machine can answer the click before the form's
    /// POST and its redirect are done, and the next check would race them.
    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        let _ = self
            .client
            .execute("window.__kvBeforeClick = true; return true;", vec![])
            .await;
        element.click().await.unwrap_or_else(|err| panic!("click {css}: {err}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let loaded = self
                .client
                .execute(
                    "return window.__kvBeforeClick === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces what a field holds with `text`, typed as a person would.
    async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear a field");
        field.send_keys(text).await.expect("type into a field");
    }

    /// Saves a screenshot of the page as the next numbered step.
    async fn shot(&self, name: &str) {
        let step = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        self.save(&format!("{step:02}-{name}")).await;
    }

    async fn save(&self, name: &str) {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(self.shots.join(format!("{name}.png")), png);
        }
    }
}

/// `target/browser-screenshots`, beside the built programs.
fn screenshot_dir() -> PathBuf {
    bin_dir().parent().unwrap_or(Path::new(".")).join("browser-screenshots")
}

/// Runs a scenario in a fresh browser; if it fails, the page it failed on is
/// saved (`failure.png`, `failure.html`) before the test fails.
async fn in_browser<F, Fut>(test: &str, scenario: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: Future<Output = ()>,
{
    let (browser, driver) = Browser::start(test).await;
    let outcome = AssertUnwindSafe(scenario(browser.clone())).catch_unwind().await;
    if outcome.is_err() {
        browser.save("failure").await;
        if let Ok(html) = browser.client.source().await {
            let _ = std::fs::write(browser.shots.join("failure.html"), html);
        }
        eprintln!("the browser's last page is saved in {}", browser.shots.display());
    }
    let _ = browser.client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn put(base: &str, key: &str, value: &str, content_type: Option<&str>) {
    let mut request = client()
        .put(format!("{base}{}", kv_api::key::encode_path(key)))
        .body(value.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let status = request.send().await.expect("a PUT").status();
    assert!(status.is_success(), "PUT {key}: {status}");
}

/// The value through the API, or `None` for a 404.
async fn api_value(base: &str, key: &str) -> Option<(String, String)> {
    let response = client()
        .get(format!("{base}{}", kv_api::key::encode_path(key)))
        .send()
        .await
        .expect("a GET");
    if response.status() == 404 {
        return None;
    }
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    Some((response.text().await.unwrap(), content_type))
}

#[tokio::test]
async fn browse_edit_conflict_delete_and_create() {
    let server = Server::start();
    let base = server.url.clone();
    put(&base, "greeting", "hello", None).await;
    put(&base, "users/alice/name", "Alice", Some("text/plain")).await;
    put(
        &base,
        "users/alice/profile",
        r#"{"name":"Alice","langs":["en","fr"]}"#,
        Some("application/json"),
    )
    .await;
    put(&base, "users/bob/name", "Bob", Some("text/plain")).await;

    in_browser("browse_edit_conflict_delete_and_create", |b| async move {
        // The listing: a folder and a key at the top, with counts.
        b.open(&format!("{base}/kv")).await;
        b.shot("listing").await;
        assert_eq!(
            b.text("#counts").await,
            "1 folder and 1 key on this page; 4 keys stored in all."
        );
        assert_eq!(b.text("#listing tr.folder a").await, "📁 users/");

        // Into users/, then alice/: breadcrumbs follow.
        b.click("#listing tr.folder a").await;
        assert!(b.url().await.ends_with("/kv?prefix=users%2F"), "{}", b.url().await);
        assert_eq!(b.count("#listing tr.folder").await, 2, "alice/ and bob/");
        b.click(r#"a[href="/kv?prefix=users%2Falice%2F"]"#).await;
        assert_eq!(b.text("#crumbs").await, "kv / users / alice");
        assert_eq!(b.count("#listing tr.key").await, 2);
        b.shot("folder").await;

        // JSON is pretty-printed, in its own order.
        b.click(r#"#listing a[href="/ui/kv/users/alice/profile"]"#).await;
        assert_eq!(
            b.text("#value").await,
            "{\n  \"name\": \"Alice\",\n  \"langs\": [\n    \"en\",\n    \"fr\"\n  ]\n}"
        );
        b.shot("json").await;

        // Open a key and edit it: the page shows the new value at once, and
        // the line break typed is stored as LF, exactly.
        b.click(r#"a[href="/kv?prefix=users%2Falice%2F"]"#).await;
        b.click(r#"#listing a[href="/ui/kv/users/alice/name"]"#).await;
        assert_eq!(b.text("#value").await, "Alice");
        b.shot("key").await;
        b.fill("#edit textarea", "Alice Smith\nParis").await;
        b.click("#edit button").await;
        assert!(b.text("#notice").await.starts_with("Saved (version"));
        assert_eq!(b.text("#value").await, "Alice Smith\nParis");
        assert_eq!(
            api_value(&base, "users/alice/name").await.unwrap().0,
            "Alice Smith\nParis"
        );
        b.shot("edited").await;

        // A stale edit: someone else writes while the page is open.
        put(&base, "users/alice/name", "Alicia", Some("text/plain")).await;
        b.fill("#edit textarea", "Alice from a stale page").await;
        b.click("#edit button").await;
        assert_eq!(
            b.text("#conflict").await,
            "This key was changed since you opened it. Nothing was written."
        );
        assert_eq!(b.text("#yours").await, "Alice from a stale page");
        assert_eq!(b.text("#value").await, "Alicia");
        assert_eq!(api_value(&base, "users/alice/name").await.unwrap().0, "Alicia");
        b.shot("conflict").await;
        // Saving knowingly over the current version works.
        b.click("#edit button").await;
        assert_eq!(b.text("#value").await, "Alice from a stale page");

        // Delete, with a confirmation step; then the folder's listing.
        b.click("#delete").await;
        assert_eq!(b.count("#confirm-delete").await, 1);
        assert_eq!(
            api_value(&base, "users/alice/name").await.map(|v| v.0).as_deref(),
            Some("Alice from a stale page")
        );
        b.shot("confirm-delete").await;
        b.click("#confirm-delete button").await;
        assert!(
            b.url().await.ends_with("/kv?prefix=users%2Falice%2F"),
            "{}",
            b.url().await
        );
        assert_eq!(b.count(r#"#listing a[href="/ui/kv/users/alice/name"]"#).await, 0);
        assert_eq!(api_value(&base, "users/alice/name").await, None);
        b.shot("deleted").await;

        // Create, from the folder's form (its name starts with the folder).
        assert_eq!(
            b.find("#create input[name=key]")
                .await
                .prop("value")
                .await
                .unwrap()
                .as_deref(),
            Some("users/alice/")
        );
        b.fill("#create input[name=key]", "users/alice/email").await;
        b.fill("#create textarea", "alice@example.com").await;
        b.click("#create button").await;
        assert_eq!(b.text("#key").await, "users/alice/email");
        assert_eq!(b.text("#value").await, "alice@example.com");
        assert_eq!(
            api_value(&base, "users/alice/email").await,
            Some(("alice@example.com".into(), "text/plain; charset=utf-8".into()))
        );
        b.shot("created").await;

        // Creating it again is refused, showing what is there.
        b.click(r#"#crumbs a[href="/kv?prefix=users%2Falice%2F"]"#).await;
        b.fill("#create input[name=key]", "users/alice/email").await;
        b.fill("#create textarea", "another").await;
        b.click("#create button").await;
        assert_eq!(
            b.text("#conflict").await,
            "A key with this name already exists. Nothing was written."
        );
        assert_eq!(
            api_value(&base, "users/alice/email").await.unwrap().0,
            "alice@example.com"
        );
    })
    .await;
}

#[tokio::test]
async fn markup_is_text_and_curls_default_type_shows_as_text() {
    let server = Server::start();
    let base = server.url.clone();
    let key = r#"<img src=x onerror="document.title='pwned'">"#;
    let value = "<script>document.title='pwned'</script><b>bold?</b>";
    put(&base, key, value, Some("text/html")).await;
    // What `curl --data 'Derek Moss'` sends.
    put(&base, "name", "Derek Moss", Some("application/x-www-form-urlencoded")).await;

    in_browser("markup_is_text_and_curls_default_type_shows_as_text", |b| async move {
        b.open(&format!("{base}/kv")).await;
        b.shot("listing").await;
        assert_eq!(b.count("#listing img").await, 0, "the key is text, not an element");
        assert_eq!(b.count("#listing b").await, 0, "the value is text, not an element");
        assert_eq!(b.text("#listing tr.key:nth-child(1) td.value").await, value);
        assert_eq!(b.text("#listing tr.key:nth-child(1) a").await, key);
        assert_eq!(b.client.title().await.unwrap(), "kv · kv");

        b.click("#listing tr.key:nth-child(1) a").await;
        assert_eq!(b.text("#key").await, key);
        assert_eq!(b.text("#value").await, value);
        assert_eq!(b.count("main b").await, 0);
        assert_eq!(
            b.client.title().await.unwrap(),
            format!("{key} · kv"),
            "no script set the title"
        );
        b.shot("markup-key").await;

        // The value stored as HTML, opened raw, runs no script: the answer is sandboxed.
        b.open(&format!("{base}{}", kv_api::key::encode_path(key))).await;
        assert_ne!(b.client.title().await.unwrap(), "pwned");
        assert_eq!(b.count("b").await, 1, "the HTML is shown, in a sandbox");

        // Stored by curl's default type, the value is text: the raw answer
        // shows in the browser instead of downloading, and the page shows it.
        b.open(&format!("{base}/kv/name")).await;
        assert_eq!(b.text("body").await, "Derek Moss");
        b.shot("raw-curl-value").await;
        b.open(&format!("{base}/ui/kv/name")).await;
        assert_eq!(b.text("#value").await, "Derek Moss");
        assert!(b.text("#facts").await.contains("text/plain; charset=utf-8"));
        b.shot("curl-value-page").await;
    })
    .await;
}

#[tokio::test]
async fn through_the_proxy_an_edit_shows_at_once() {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, &["--cache-ttl", "60s"]);
    let (direct, base) = (server.url.clone(), proxy.url.clone());
    put(&base, "color", "red", None).await;

    in_browser("through_the_proxy_an_edit_shows_at_once", |b| async move {
        b.open(&format!("{base}/kv")).await;
        b.click(r#"#listing a[href="/ui/kv/color"]"#).await;
        assert_eq!(b.text("#value").await, "red");
        // Again, now from the proxy's cache.
        b.open(&format!("{base}/ui/kv/color")).await;
        assert_eq!(b.text("#value").await, "red");
        b.fill("#edit textarea", "blue").await;
        b.click("#edit button").await;
        assert_eq!(b.text("#value").await, "blue", "the proxy's cache did not keep red");
        // Stored without a type, the value was edited as text and is now stored as text.
        assert!(b.text("#facts").await.contains("text/plain; charset=utf-8"));
        b.open(&format!("{base}/kv/color")).await;
        assert_eq!(b.text("body").await, "blue");
        b.shot("raw-after-edit").await;

        // A write straight to the server, behind the proxy's back: a save from
        // the page is refused, and the conflict shows the server's value.
        b.open(&format!("{base}/ui/kv/color")).await;
        put(&direct, "color", "green", None).await;
        b.fill("#edit textarea", "yellow").await;
        b.click("#edit button").await;
        assert_eq!(
            b.text("#conflict").await,
            "This key was changed since you opened it. Nothing was written."
        );
        assert_eq!(b.text("#value").await, "green");
        b.shot("proxy-conflict").await;

        // Delete through the proxy.
        b.open(&format!("{base}/ui/kv/color?action=delete")).await;
        b.click("#confirm-delete button").await;
        assert_eq!(api_value(&base, "color").await, None);
        assert_eq!(api_value(&direct, "color").await, None);
    })
    .await;
}

#[tokio::test]
async fn the_listing_is_live_through_another_proxy() {
    let server = Server::start();
    let writer = Proxy::start(&server.url, &[]);
    let reader = Proxy::start(&server.url, &[]);
    let (a, b) = (writer.url.clone(), reader.url.clone());
    put(&a, "color", "red", None).await;
    put(&a, "doomed", "x", None).await;

    in_browser("the_listing_is_live_through_another_proxy", |browser| async move {
        browser.open(&format!("{b}/kv")).await;
        browser.wait_text("#live", "live").await;
        // A mark on the page, which a reload would wipe.
        browser
            .client
            .execute("document.body.dataset.kept = 'yes'; return true;", vec![])
            .await
            .expect("mark the page");
        browser.shot("live-before").await;

        // Writes through proxy A, and one straight to the server.
        put(&a, "color", "blue", None).await;
        put(&a, "fresh", "new key", None).await;
        put(&a, "users/alice", "in a folder", None).await;
        let deleted = client()
            .delete(format!("{}/kv/doomed", server.url))
            .send()
            .await
            .expect("a DELETE");
        assert_eq!(deleted.status(), 204);

        browser.wait_text(r#"tr[data-key="color"] td.value"#, "blue").await;
        browser.wait_text(r#"tr[data-key="fresh"] td.value"#, "new key").await;
        browser.wait_text(r#"tr[data-path="users/"] td a"#, "📁 users/").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while browser.count(r#"tr[data-key="doomed"]"#).await > 0 {
            assert!(Instant::now() < deadline, "the deleted key's row is still shown");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Rows stay in key order, and the new key links to its page.
        let order = browser
            .client
            .execute(
                "return Array.from(document.querySelectorAll('#listing tbody tr'))\
                 .map(r => r.dataset.key || r.dataset.path).join(' ');",
                vec![],
            )
            .await
            .expect("the rows");
        assert_eq!(order, serde_json::json!("color fresh users/"));
        assert_eq!(
            browser
                .find(r#"tr[data-key="fresh"] a"#)
                .await
                .attr("href")
                .await
                .unwrap(),
            Some("/ui/kv/fresh".to_owned())
        );
        let kept = browser
            .client
            .execute("return document.body.dataset.kept || null;", vec![])
            .await
            .expect("read the mark");
        assert_eq!(
            kept,
            serde_json::json!("yes"),
            "the page was reloaded, not updated in place"
        );
        assert_eq!(browser.text("#counts").await, "1 folder and 2 keys on this page.");
        browser.shot("live-after").await;

        // The row's version is the write's: an older event cannot undo it.
        let version = browser
            .find(r#"tr[data-key="color"]"#)
            .await
            .attr("data-version")
            .await
            .unwrap()
            .expect("a version");
        assert!(version.parse::<u64>().unwrap() >= 3, "{version}");
    })
    .await;
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    let server = Server::start_with(&["--token-file", path.to_str().unwrap()]);
    let base = server.url.clone();

    in_browser("with_a_token_the_page_asks_for_it", |b| async move {
        b.open(&format!("{base}/kv?prefix=a")).await;
        assert_eq!(b.count("#login").await, 1, "a login form, not a bare 401");
        b.shot("login").await;
        b.fill("#login input[name=token]", "not-the-token").await;
        b.click("#login button").await;
        assert_eq!(b.text("#error").await, "That is not the access token.");
        b.fill("#login input[name=token]", TOKEN).await;
        b.click("#login button").await;
        assert!(
            b.url().await.ends_with("/kv?prefix=a"),
            "back where it was: {}",
            b.url().await
        );
        b.fill("#create input[name=key]", "a/b").await;
        b.fill("#create textarea", "made in a browser").await;
        b.click("#create button").await;
        assert_eq!(b.text("#value").await, "made in a browser");
        b.shot("logged-in").await;
        // The cookie is the browser's; the API still wants the header.
        let denied = client().get(format!("{base}/kv/a/b")).send().await.unwrap();
        assert_eq!(denied.status(), 401);
    })
    .await;
}
