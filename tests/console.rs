//! The web console (CONTRACT section 7) in a real browser: headless Chromium,
//! driven over WebDriver (chromedriver) with fantoccini, against keygate on
//! `127.0.0.1:0` started by the shared helpers. Each step asserts what the
//! page shows and, by asking the admin API directly, what the server holds.
//!
//! Needs Debian's `chromium` and `chromium-driver`, and axe-core for the
//! accessibility test (`scripts/test` installs them). Without them the browser
//! tests fail when `CI=true` and are skipped, with a note, otherwise. One chromedriver serves the whole test binary; the
//! browser tests take turns (one browser at a time, so a small machine keeps
//! up). Screenshots of each state go to `target/tmp/console-screenshots/`.

mod support;

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use http::StatusCode;
use serde_json::{json, Value};
use support::{Gateway, PROVIDER};

// ---------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------

/// The one chromedriver of this test binary.
struct Driver {
    url: String,
    chromium: PathBuf,
    // Its stdin is the kill switch: when this process exits, the pipe closes
    // and the shell around chromedriver stops it (and it its browsers).
    _child: Child,
}

/// Says a test was skipped, past the harness's capture of test output (a
/// skipped test passes, and a passing test's output is not shown).
fn skip_note(note: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {note}");
}

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The chromedriver, started on first use; `None` (after a printed note)
/// when Chromium or chromedriver is missing, except under `CI=true`, where
/// that fails the test.
fn driver() -> Option<&'static Driver> {
    static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let chromedriver = on_path(&["chromedriver"]);
            let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
            let (Some(chromedriver), Some(chromium)) = (chromedriver, chromium) else {
                let note = "the console's browser tests need chromium and chromedriver \
                            (Debian: apt-get install chromium chromium-driver; scripts/test does it)";
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{note}");
                }
                skip_note(note);
                return None;
            };
            let port = {
                let l = StdListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let child = Command::new("sh")
                .arg("-c")
                .arg(r#""$1" --port="$2" --log-level=WARNING >/dev/null & pid=$!; read _ignored; kill "$pid" 2>/dev/null; wait"#)
                .arg("sh")
                .arg(&chromedriver)
                .arg(port.to_string())
                .stdin(Stdio::piped())
                .spawn()
                .expect("start chromedriver");
            // Setup, not an assertion: wait until it listens.
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "chromedriver did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(Driver {
                url: format!("http://127.0.0.1:{port}"),
                chromium,
                _child: child,
            })
        })
        .as_ref()
}

/// Runs one browser test: its own runtime, a fresh headless browser (so a
/// fresh sessionStorage), closed whatever happens; one test at a time.
fn browser_test<F, Fut>(test: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    static TURN: Mutex<()> = Mutex::new(());
    let Some(driver) = driver() else { return };
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": driver.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--no-first-run",
                    "--no-default-browser-check",
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a chromium session");
        let outcome = tokio::spawn(test(Browser { c: client.clone() })).await;
        let _ = client.close().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    });
}

/// One browser session, with the few moves the tests make.
#[derive(Clone)]
struct Browser {
    c: Client,
}

/// How long a condition may take to become true on the page. Generous: it
/// bounds a failing test, and a passing one never waits for it.
const PATIENCE: Duration = Duration::from_secs(10);

impl Browser {
    /// Opens the console of `gw`.
    async fn open(&self, gw: &Gateway) {
        self.c
            .goto(&format!("http://{}/", gw.admin_addr))
            .await
            .unwrap();
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    /// The text of the element `id`.
    async fn text(&self, id: &str) -> String {
        let v = self
            .js(&format!(
                "const e = document.getElementById('{id}'); return e ? e.textContent : null;"
            ))
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no element #{id}"))
            .trim()
            .to_owned()
    }

    /// Whether the element `id` is shown (it and its ancestors not hidden).
    async fn shown(&self, id: &str) -> bool {
        self.js(&format!(
            "const e = document.getElementById('{id}'); return !!e && e.checkVisibility();"
        ))
        .await
            == Value::Bool(true)
    }

    /// Waits until the JavaScript expression `cond` is true; fails the test
    /// with `what` and the page's visible text if it does not become so.
    async fn until(&self, what: &str, cond: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.js(&format!("return !!({cond});")).await;
            if v == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText;").await;
                panic!("waited in vain for {what} ({cond}); the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// Waits until the element `id` has exactly `text`.
    async fn until_text(&self, id: &str, text: &str) {
        let cond = format!(
            "(document.getElementById('{id}') || {{}}).textContent?.trim() === {}",
            json!(text)
        );
        self.until(&format!("#{id} to read {text:?}"), &cond).await;
    }

    /// Waits until the element `id`'s text contains `part`.
    async fn until_contains(&self, id: &str, part: &str) {
        let cond = format!(
            "((document.getElementById('{id}') || {{}}).textContent || '').includes({})",
            json!(part)
        );
        self.until(&format!("#{id} to contain {part:?}"), &cond)
            .await;
    }

    /// Waits until the element `id` is shown, or hidden.
    async fn until_shown(&self, id: &str, shown: bool) {
        let cond = format!(
            "(document.getElementById('{id}') || {{checkVisibility: () => false}}).checkVisibility() === {shown}"
        );
        self.until(&format!("#{id} shown: {shown}"), &cond).await;
    }

    /// Clicks the element `id`, as a user does.
    async fn click(&self, id: &str) {
        self.c
            .find(Locator::Id(id))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Types `text` into the element `id` (after emptying it), key by key.
    async fn type_into(&self, id: &str, text: &str) {
        let e = self.c.find(Locator::Id(id)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Sends keys to whatever has the focus.
    async fn keys(&self, keys: &str) {
        self.c
            .active_element()
            .await
            .unwrap()
            .send_keys(keys)
            .await
            .unwrap();
    }

    /// The id of the element with the focus.
    async fn focused(&self) -> String {
        self.js("return document.activeElement ? document.activeElement.id : '';")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a screenshot as `target/tmp/console-screenshots/{name}.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Opens the console and signs in with `token`.
    async fn sign_in(&self, gw: &Gateway, token: &str) {
        self.open(gw).await;
        self.until_shown("signin-token", true).await;
        self.type_into("signin-token", token).await;
        self.click("signin-submit").await;
    }

    /// Opens the key page of `org` (as the signed-in token) afresh: a
    /// reload, as a user's.
    async fn key_page(&self, gw: &Gateway, org: &str) {
        self.c
            .goto(&format!("http://{}/#/org/{org}", gw.admin_addr))
            .await
            .unwrap();
        self.c.refresh().await.unwrap();
        self.until_text("org-name", org).await;
        self.until(
            "the key page to be filled",
            "document.getElementById('modified-on').textContent !== ''",
        )
        .await;
    }

    /// Asserts the signed-in token is in sessionStorage only, never in the
    /// URL, localStorage or a cookie.
    async fn assert_token_kept_for_the_tab_only(&self, token: &str) {
        let stored = self
            .js("return sessionStorage.getItem('keygate.token');")
            .await;
        assert_eq!(stored, Value::String(token.to_owned()));
        let url = self.c.current_url().await.unwrap().to_string();
        assert!(!url.contains(token), "the token is in the URL {url}");
        assert_eq!(self.js("return localStorage.length;").await, json!(0));
        assert_eq!(self.js("return document.cookie;").await, json!(""));
        let history = self
            .js("return String(location.href) + String(document.referrer);")
            .await;
        assert!(!history.as_str().unwrap().contains(token));
    }
}

/// The key as the page masks it: all but the last 4 characters are `*`.
fn masked(key: &str) -> String {
    format!("{}{}", "*".repeat(key.len() - 4), &key[key.len() - 4..])
}

/// A gateway with `acme`, its admin `alice` and viewer `victor`.
struct Acme {
    gw: Gateway,
    key: String,
    admin: String,
    viewer: String,
}

async fn acme() -> Acme {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let admin = gw.token("alice", "admin", "acme").await;
    let viewer = gw.token("victor", "viewer", "acme").await;
    Acme {
        gw,
        key,
        admin,
        viewer,
    }
}

// ---------------------------------------------------------------------------
// The answers themselves (no browser needed)
// ---------------------------------------------------------------------------

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[tokio::test]
async fn every_console_answer_has_a_strict_policy_and_refuses_framing() {
    let gw = Gateway::start().await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        // No token needed to load the page; it holds no secret.
        let r = gw.get(path, None).await;
        r.assert_status(StatusCode::OK);
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
    }
    let page = gw.get("/", None).await.text();
    assert!(page.contains(r#"<script src="/console/app.js" defer></script>"#));
    // Anything else under the listener is still the API's JSON 404.
    gw.get("/console/nope.js", None)
        .await
        .assert_refused(StatusCode::NOT_FOUND, "NOT_FOUND");
}

// ---------------------------------------------------------------------------
// Signing in
// ---------------------------------------------------------------------------

#[test]
fn a_bad_token_is_refused_in_words_and_kept_nowhere() {
    browser_test(|b| async move {
        let gw = Gateway::start().await;
        b.sign_in(&gw, "not-a-token").await;
        b.until_text(
            "signin-error",
            "keygate does not know this token. Check it and try again.",
        )
        .await;
        assert!(b.shown("view-signin").await);
        assert_eq!(
            b.js("return sessionStorage.getItem('keygate.token');")
                .await,
            Value::Null
        );
    });
}

#[test]
fn the_provider_lands_on_the_org_list_and_pages_searches_and_filters_250_orgs() {
    browser_test(|b| async move {
        let gw = Gateway::start().await;
        for i in 0..250 {
            gw.provision(&format!("org-{i:03}")).await;
        }
        for i in [7, 77, 177] {
            gw.disable(&format!("org-{i:03}"), "abuse").await;
        }
        let rows = |b: Browser| async move {
            b.js("return Array.from(document.querySelectorAll('#orgs-body tr td:first-child')).map(td => td.textContent);")
                .await
        };

        let started = Instant::now();
        b.sign_in(&gw, PROVIDER).await;
        b.until(
            "the first page",
            "document.querySelectorAll('#orgs-body tr').length === 50",
        )
        .await;
        let first_page = started.elapsed();
        assert!(b
            .c
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/#/orgs"));
        b.assert_token_kept_for_the_tab_only(PROVIDER).await;
        let first = rows(b.clone()).await;
        assert_eq!(first[0], "org-000");
        assert_eq!(first[49], "org-049");
        assert_eq!(b.text("orgs-page").await, "Page 1, 50 shown");
        assert_eq!(b.text("who").await, "Signed in as the provider");
        b.screenshot("org-list").await;

        // Paging: next to the last page and back.
        for page in 2..=5 {
            b.click("orgs-next").await;
            b.until_text("orgs-page", &format!("Page {page}, 50 shown"))
                .await;
        }
        let last = rows(b.clone()).await;
        assert_eq!(last[0], "org-200");
        assert_eq!(last[49], "org-249");
        assert_eq!(
            b.js("return document.getElementById('orgs-next').disabled;")
                .await,
            json!(true)
        );
        b.click("orgs-prev").await;
        b.until_text("orgs-page", "Page 4, 50 shown").await;
        assert_eq!(rows(b.clone()).await[0], "org-150");

        // Search as typed: a part of the id, from the first page again.
        let started = Instant::now();
        b.type_into("orgs-q", "org-12").await;
        b.until_text("orgs-page", "Page 1, 10 shown").await;
        let search = started.elapsed();
        let found = rows(b.clone()).await;
        let want: Vec<String> = (120..130).map(|i| format!("org-{i}")).collect();
        assert_eq!(found, json!(want));
        let api = gw.get("/v1/orgs?q=org-12", Some(PROVIDER)).await;
        assert_eq!(api.json["orgs"].as_array().unwrap().len(), 10);

        // The status filter, with the search emptied.
        b.type_into("orgs-q", "").await;
        b.c.find(Locator::Id("orgs-status"))
            .await
            .unwrap()
            .select_by_value("disabled")
            .await
            .unwrap();
        b.until_text("orgs-page", "Page 1, 3 shown").await;
        assert_eq!(
            rows(b.clone()).await,
            json!(["org-007", "org-077", "org-177"])
        );
        let statuses = b
            .js("return Array.from(document.querySelectorAll('#orgs-body tr td:nth-child(2)')).map(td => td.textContent);")
            .await;
        assert_eq!(statuses, json!(["Disabled", "Disabled", "Disabled"]));

        // An org's link opens its key page.
        b.click_link("org-077").await;
        b.until_text("org-name", "org-077").await;
        b.until_text("status-value", "Disabled").await;
        println!(
            "250 orgs: first page shown {} ms after sign-in was clicked; a search shown {} ms after typing began",
            first_page.as_millis(),
            search.as_millis()
        );
    });
}

impl Browser {
    /// Clicks the link whose text is `text`.
    async fn click_link(&self, text: &str) {
        self.c
            .find(Locator::LinkText(text))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------------------
// The admin's key page
// ---------------------------------------------------------------------------

#[test]
fn an_admin_adds_edits_regenerates_and_deletes_the_key_and_the_api_agrees() {
    browser_test(|b| async move {
        let a = acme().await;
        let gw = &a.gw;
        b.sign_in(gw, &a.admin).await;
        b.until_text("org-name", "acme").await;
        b.until_text("modified-by", "provider").await;
        assert!(b
            .c
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/#/org/acme"));
        b.assert_token_kept_for_the_tab_only(&a.admin).await;
        assert_eq!(b.text("who").await, "Signed in as alice (admin of acme)");
        assert!(
            !b.shown("nav").await,
            "the provider's sections are not offered"
        );

        // What the vendor's page shows: base URL, key masked, status, Last
        // Modified By and On.
        let page = gw.page("acme").await;
        assert_eq!(b.text("base-url").await, page["base_url"].as_str().unwrap());
        assert_eq!(b.text("key-value").await, masked(&a.key));
        assert_eq!(b.text("status-value").await, "Enabled");
        assert_eq!(b.text("subscription-value").await, "No expiry");
        assert_eq!(b.text("modified-on").await, "2027-01-15 08:00:00 UTC");
        assert!(b
            .text("usage-text")
            .await
            .starts_with("0 of 100,000 calls in this window (0%)"));
        assert!(!b.shown("add-key").await, "Add appears only without a key");
        assert!(!b.shown("provider-panel").await);
        b.click("reveal-key").await;
        b.until_text("key-value", &a.key).await;
        b.click("reveal-key").await;
        b.until_text("key-value", &masked(&a.key)).await;
        b.screenshot("key-page").await;

        // Copy puts the whole key on the clipboard, masked or not: pasted
        // into the Edit dialog's field, it is the key.
        b.click("copy-key").await;
        b.until_text("copy-status", "Copied to the clipboard.")
            .await;
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        b.keys(&format!("{}v{}", &*Key::Control, &*Key::Control))
            .await;
        let pasted = b
            .js("return document.getElementById('edit-input').value;")
            .await;
        assert_eq!(pasted, json!(a.key));
        b.until_text(
            "edit-problem",
            "The new key must differ from the current key.",
        )
        .await;
        b.keys(&Key::Escape).await;
        b.until_shown("edit-dialog", false).await;
        b.click("copy-base-url").await;
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        b.keys(&format!("{}v{}", &*Key::Control, &*Key::Control))
            .await;
        let pasted = b
            .js("return document.getElementById('edit-input').value;")
            .await;
        assert_eq!(pasted, page["base_url"]);
        b.keys(&Key::Escape).await;
        b.until_shown("edit-dialog", false).await;

        // Edit: each refusal as typed, then a good key by keyboard.
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        assert_eq!(b.focused().await, "edit-input");
        for (typed, problem) in [
            ("Ab3dEf", "The key has 6 characters; it needs exactly 12."),
            (
                "Ab3dEf6hIj9kX",
                "The key has 13 characters; it needs exactly 12.",
            ),
            (
                "Ab3d-f6h_j9k",
                "Only A-Z, a-z and 0-9 are allowed; remove - _.",
            ),
            (
                "Ab3dEf6hIj9é",
                "Only A-Z, a-z and 0-9 are allowed; remove é.",
            ),
            (
                a.key.as_str(),
                "The new key must differ from the current key.",
            ),
        ] {
            b.type_into("edit-input", typed).await;
            b.until_text("edit-problem", problem).await;
            assert_eq!(
                b.js("return document.getElementById('edit-confirm').disabled;")
                    .await,
                json!(true),
                "Confirm is off for {typed:?}"
            );
            assert_eq!(
                b.js("return document.getElementById('edit-input').getAttribute('aria-invalid');")
                    .await,
                json!("true")
            );
        }
        b.type_into("edit-input", "NewKey123456").await;
        b.until_text("edit-problem", "").await;
        b.screenshot("edit-dialog").await;
        // Focus stays in the dialog however far one tabs.
        for _ in 0..8 {
            b.keys(&Key::Tab).await;
            let inside = b
                .js("return document.getElementById('edit-dialog').contains(document.activeElement);")
                .await;
            assert_eq!(
                inside,
                json!(true),
                "focus left the dialog for #{}",
                b.focused().await
            );
        }
        b.c.find(Locator::Id("edit-input"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.keys(&Key::Enter).await;
        b.until_shown("edit-dialog", false).await;
        b.until_text(
            "org-message",
            "The key was changed. The old key no longer works.",
        )
        .await;
        b.until_text("key-value", &masked("NewKey123456")).await;
        let page = gw.page("acme").await;
        assert_eq!(page["key"], "NewKey123456");
        assert_eq!(page["last_modified_by"], "alice");
        assert_eq!(b.text("modified-by").await, "alice");
        gw.get_with("/acme/x", &a.key)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");

        // A refusal only the server can know: the key changed meanwhile
        // to the very key the admin types.
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        gw.put(
            "/v1/orgs/acme/key",
            Some(PROVIDER),
            Some(json!({ "key": "Zzzzzzzz9999" })),
        )
        .await
        .assert_status(StatusCode::OK);
        b.type_into("edit-input", "Zzzzzzzz9999").await;
        b.until_text("edit-problem", "").await;
        b.click("edit-confirm").await;
        b.until_text(
            "edit-error",
            "The server refused the new key: it must differ from the current key.",
        )
        .await;
        assert!(
            b.shown("edit-dialog").await,
            "the dialog stays open with the reason"
        );
        // The page behind it shows the server's state.
        b.until_text("key-value", &masked("Zzzzzzzz9999")).await;
        b.until_text("modified-by", "provider").await;
        assert_eq!(gw.page("acme").await["key"], "Zzzzzzzz9999");
        b.keys(&Key::Escape).await;
        b.until_shown("edit-dialog", false).await;

        // Regenerate: the dialog says it cannot be undone; Cancel changes nothing.
        b.click("regenerate-key").await;
        b.until_shown("confirm-dialog", true).await;
        assert_eq!(b.text("confirm-title").await, "Regenerate the API key?");
        assert!(b
            .js("return document.getElementById('confirm-dialog').textContent;")
            .await
            .as_str()
            .unwrap()
            .contains("This action cannot be undone."));
        assert_eq!(
            b.focused().await,
            "confirm-cancel",
            "the safe choice has the focus"
        );
        b.screenshot("regenerate-dialog").await;
        b.keys(&Key::Enter).await;
        b.until_shown("confirm-dialog", false).await;
        assert_eq!(gw.page("acme").await["key"], "Zzzzzzzz9999");
        b.click("regenerate-key").await;
        b.until_shown("confirm-dialog", true).await;
        b.click("confirm-ok").await;
        b.until_text(
            "org-message",
            "The key was regenerated. The old key no longer works.",
        )
        .await;
        let page = gw.page("acme").await;
        let regenerated = page["key"].as_str().unwrap().to_owned();
        assert_ne!(regenerated, "Zzzzzzzz9999");
        b.until_text("key-value", &masked(&regenerated)).await;
        gw.get_with("/acme/x", &regenerated)
            .await
            .assert_status(StatusCode::OK);

        // Delete: confirmed, the key is gone and Add takes the buttons' place.
        b.click("delete-key").await;
        b.until_shown("confirm-dialog", true).await;
        assert_eq!(b.text("confirm-title").await, "Delete the API key?");
        b.click("confirm-ok").await;
        b.until_text("org-message", "The key was deleted.").await;
        b.until_shown("add-key", true).await;
        assert!(b.shown("key-none").await);
        for gone in ["edit-key", "regenerate-key", "delete-key", "key-tools"] {
            assert!(!b.shown(gone).await, "#{gone} is shown without a key");
        }
        assert_eq!(gw.page("acme").await["key"], Value::Null);
        b.screenshot("no-key").await;

        // Add: a new random key, shown masked.
        b.click("add-key").await;
        b.until_text("org-message", "A new key was added. It works at once.")
            .await;
        let added = gw.page("acme").await["key"].as_str().unwrap().to_owned();
        b.until_text("key-value", &masked(&added)).await;
        assert!(!b.shown("add-key").await);
        gw.get_with("/acme/x", &added)
            .await
            .assert_status(StatusCode::OK);

        // The audit tab, by keyboard: every change, newest first, by alice.
        b.c.find(Locator::Id("tab-key"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.keys(&Key::Right).await;
        b.until_shown("audit-table", true).await;
        assert!(b
            .c
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/#/org/acme/audit"));
        let actions = b
            .js("return Array.from(document.querySelectorAll('#audit-body tr')).map(tr => tr.children[1].textContent + ' ' + tr.children[2].textContent);")
            .await;
        assert_eq!(
            actions,
            json!([
                "alice add key",
                "alice delete key",
                "alice regenerate key",
                "provider edit key",
                "alice edit key",
                "provider create token",
                "provider create token",
                "provider provision",
            ])
        );
        let audit = gw.get("/v1/orgs/acme/audit", Some(PROVIDER)).await;
        assert_eq!(audit.json["events"].as_array().unwrap().len(), 8);
        b.screenshot("audit").await;

        // Signing out forgets the token.
        b.click("signout").await;
        b.until_shown("view-signin", true).await;
        assert_eq!(b.js("return sessionStorage.length;").await, json!(0));
    });
}

#[test]
fn a_viewer_sees_the_key_masked_and_no_way_to_change_it() {
    browser_test(|b| async move {
        let a = acme().await;
        b.sign_in(&a.gw, &a.viewer).await;
        b.until_text("org-name", "acme").await;
        b.until_text("key-value", &masked(&a.key)).await;
        b.assert_token_kept_for_the_tab_only(&a.viewer).await;
        assert_eq!(b.text("who").await, "Signed in as victor (viewer of acme)");
        // The API itself never gave the page the key.
        let seen = a.gw.get("/v1/orgs/acme/key", Some(&a.viewer)).await;
        assert_eq!(seen.json["key"], masked(&a.key));
        assert_eq!(
            b.c.execute(
                "return document.documentElement.outerHTML.includes(arguments[0]);",
                vec![json!(a.key)]
            )
            .await
            .unwrap(),
            json!(false)
        );
        for gone in [
            "key-actions",
            "add-key",
            "edit-key",
            "regenerate-key",
            "delete-key",
            "reveal-key",
            "copy-key",
            "provider-panel",
        ] {
            assert!(!b.shown(gone).await, "a viewer is offered #{gone}");
        }
        assert_eq!(
            b.text("base-url").await,
            seen.json["base_url"].as_str().unwrap()
        );
        // Another org's page is not theirs: the console goes home.
        b.c.goto(&format!("http://{}/#/org/globex", a.gw.admin_addr))
            .await
            .unwrap();
        b.until(
            "the viewer to be sent home",
            "location.hash === '#/org/acme'",
        )
        .await;
        b.click("tab-audit").await;
        b.until_shown("audit-table", true).await;
        b.screenshot("viewer").await;

        // The token deleted meanwhile: the next call signs the tab out, in words.
        a.gw.delete("/v1/tokens/victor", Some(PROVIDER))
            .await
            .assert_status(StatusCode::NO_CONTENT);
        b.click("tab-key").await;
        b.until_shown("view-signin", true).await;
        assert_eq!(
            b.text("signin-error").await,
            "This token is not accepted (it may have been deleted). Sign in again with a valid token."
        );
        assert_eq!(b.js("return sessionStorage.length;").await, json!(0));
    });
}

#[test]
fn a_disabled_key_loses_every_change_and_says_to_contact_the_provider() {
    browser_test(|b| async move {
        let a = acme().await;
        let gw = &a.gw;
        b.sign_in(gw, &a.admin).await;
        b.until_text("status-value", "Enabled").await;

        // Disabled while the admin edits: the server's refusal, in words.
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        gw.disable("acme", "terms violated").await;
        b.type_into("edit-input", "NewKey123456").await;
        b.until_text("edit-problem", "").await;
        b.click("edit-confirm").await;
        b.until_text(
            "edit-error",
            "The key is disabled, so it cannot be changed. Contact your provider to re-enable it.",
        )
        .await;
        b.keys(&Key::Escape).await;
        b.until_shown("edit-dialog", false).await;
        assert_eq!(gw.page("acme").await["key"], a.key.as_str());

        b.until_text("status-value", "Disabled").await;
        assert_eq!(b.text("status-reason").await, "Reason: terms violated");
        let notice = b.text("notice-disabled").await;
        assert!(notice.contains("terms violated"), "{notice}");
        assert!(
            notice.contains("Contact your provider to re-enable it."),
            "{notice}"
        );
        for gone in [
            "key-actions",
            "add-key",
            "edit-key",
            "regenerate-key",
            "delete-key",
        ] {
            assert!(!b.shown(gone).await, "#{gone} is offered while disabled");
        }
        // Reading still works: the key itself is still there to reveal.
        assert!(b.shown("reveal-key").await);
        let page = gw.page("acme").await;
        assert_eq!(page["status"], "disabled");
        assert_eq!(page["disabled_reason"], "terms violated");
        b.screenshot("disabled").await;

        // Even without a key: Add is gone too while disabled.
        gw.post("/v1/orgs/acme/enable", Some(PROVIDER), None)
            .await
            .assert_status(StatusCode::OK);
        gw.delete("/v1/orgs/acme/key", Some(PROVIDER))
            .await
            .assert_status(StatusCode::NO_CONTENT);
        gw.disable("acme", "unpaid").await;
        b.key_page(gw, "acme").await;
        b.until_text("status-value", "Disabled").await;
        assert!(b.shown("key-none").await);
        assert!(!b.shown("add-key").await);

        // Enabled again by the provider: the changes come back.
        gw.post("/v1/orgs/acme/enable", Some(PROVIDER), None)
            .await
            .assert_status(StatusCode::OK);
        b.key_page(gw, "acme").await;
        b.until_text("status-value", "Enabled").await;
        assert!(!b.shown("notice-disabled").await);
        assert!(b.shown("add-key").await);
    });
}

#[test]
fn an_expired_subscription_makes_the_page_read_only_and_says_why() {
    browser_test(|b| async move {
        let a = acme().await;
        let gw = &a.gw;
        gw.expire("acme").await;
        let page = gw.page("acme").await;
        assert_eq!(page["subscription_expired"], true);

        b.sign_in(gw, &a.admin).await;
        b.until_text("subscription-value", "Expired on 2027-01-15 09:00:00 UTC")
            .await;
        let notice = b.text("notice-expired").await;
        assert!(
            notice.contains("expired on 2027-01-15 09:00:00 UTC"),
            "{notice}"
        );
        assert!(notice.contains("This page is read-only"), "{notice}");
        assert!(
            notice.contains("Contact your provider to renew it."),
            "{notice}"
        );
        for gone in [
            "key-actions",
            "add-key",
            "edit-key",
            "regenerate-key",
            "delete-key",
        ] {
            assert!(!b.shown(gone).await, "#{gone} is offered while expired");
        }
        assert_eq!(b.text("status-value").await, "Enabled");
        assert_eq!(b.text("key-value").await, masked(&a.key));
        b.screenshot("expired").await;

        // Renewed by the provider: the page can change the key again.
        gw.put(
            "/v1/orgs/acme/subscription",
            Some(PROVIDER),
            Some(json!({ "expires_at": null })),
        )
        .await
        .assert_status(StatusCode::OK);
        b.key_page(gw, "acme").await;
        b.until_text("subscription-value", "No expiry").await;
        assert!(!b.shown("notice-expired").await);
        assert!(b.shown("regenerate-key").await);
    });
}

// ---------------------------------------------------------------------------
// The provider's chores
// ---------------------------------------------------------------------------

#[test]
fn the_provider_provisions_disables_enables_sets_subscription_and_limits_and_deletes_an_org() {
    browser_test(|b| async move {
        let gw = Gateway::start().await;
        gw.provision("acme").await;
        b.sign_in(&gw, PROVIDER).await;
        b.until_shown("orgs-table", true).await;

        // Provision: refused in words first, then done.
        b.type_into("provision-org", "Not An Id").await;
        b.click("provision-submit").await;
        b.until_contains("provision-error", "An org id is 1 to 64 of a-z, 0-9 and -")
            .await;
        b.type_into("provision-org", "acme").await;
        b.click("provision-submit").await;
        b.until_text(
            "provision-error",
            "An organization with this id exists already.",
        )
        .await;
        b.type_into("provision-org", "globex").await;
        b.click("provision-submit").await;
        b.until_text("org-name", "globex").await;
        b.until_text("status-value", "Enabled").await;
        let page = gw.page("globex").await;
        b.until_text("key-value", &masked(page["key"].as_str().unwrap()))
            .await;
        assert!(b.shown("provider-panel").await);

        // Disable needs a reason.
        b.click("disable-submit").await;
        b.until_text(
            "disable-error",
            "Give a reason: the organization sees it on its key page.",
        )
        .await;
        b.type_into("disable-reason", "unpaid invoice").await;
        b.click("disable-submit").await;
        b.until_text("status-value", "Disabled").await;
        let page = gw.page("globex").await;
        assert_eq!(page["status"], "disabled");
        assert_eq!(page["disabled_reason"], "unpaid invoice");
        let notice = b.text("notice-disabled").await;
        assert!(notice.contains("(unpaid invoice)"), "{notice}");
        assert!(
            notice.ends_with("Enable it under Provider controls below."),
            "{notice}"
        );
        assert!(b.shown("enable-key").await);
        assert!(!b.shown("disable-form").await);

        b.click("enable-key").await;
        b.until_text("status-value", "Enabled").await;
        assert_eq!(gw.page("globex").await["status"], "enabled");

        // Subscription: an end, then none.
        b.js("document.getElementById('subscription-at').value = '2030-06-01T12:00:00';")
            .await;
        b.click("subscription-save").await;
        b.until_text("subscription-value", "Active until 2030-06-01 12:00:00 UTC")
            .await;
        assert_eq!(
            gw.page("globex").await["subscription_expires_at"],
            "2030-06-01T12:00:00Z"
        );
        b.click("subscription-clear").await;
        b.until_text("subscription-value", "No expiry").await;
        assert_eq!(
            gw.page("globex").await["subscription_expires_at"],
            Value::Null
        );

        // Limits: a threshold the usage bar then measures against.
        b.type_into("limit-threshold", "500").await;
        b.type_into("limit-rate", "0").await;
        b.click("limits-save").await;
        b.until_contains("org-error", "rate_per_sec").await;
        assert_eq!(
            gw.page("globex").await["limits"]["threshold_calls"],
            100_000
        );
        b.type_into("limit-rate", "20").await;
        b.click("limits-save").await;
        b.until_text("org-message", "The limits were saved.").await;
        b.until_contains("usage-text", "0 of 500 calls").await;
        let limits = &gw.page("globex").await["limits"];
        assert_eq!(limits["threshold_calls"], 500);
        assert_eq!(limits["rate_per_sec"], 20);
        let key = gw.page("globex").await["key"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            gw.get_with("/globex/x", &key)
                .await
                .assert_status(StatusCode::OK);
        }
        b.key_page(&gw, "globex").await;
        b.until_contains("usage-text", "3 of 500 calls in this window (under 1%)")
            .await;
        let meter = b
            .js("const m = document.getElementById('usage-meter'); return [m.value, m.max];")
            .await;
        assert_eq!(meter, json!([3, 500]));
        b.screenshot("provider-org").await;

        // Delete the org: confirmed, back on the list, gone from the API.
        b.click("delete-org").await;
        b.until_shown("confirm-dialog", true).await;
        assert_eq!(
            b.text("confirm-title").await,
            "Delete the organization globex?"
        );
        b.click("confirm-ok").await;
        b.until_shown("view-orgs", true).await;
        b.until_text("orgs-message", "The organization globex was deleted.")
            .await;
        gw.get("/v1/orgs/globex/key", Some(PROVIDER))
            .await
            .assert_refused(StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
        b.until(
            "globex to leave the list",
            "!document.getElementById('orgs-body').textContent.includes('globex')",
        )
        .await;
    });
}

#[test]
fn the_provider_creates_a_token_shown_once_lists_and_deletes_it() {
    browser_test(|b| async move {
        let gw = Gateway::start().await;
        gw.provision("acme").await;
        b.sign_in(&gw, PROVIDER).await;
        b.until_shown("orgs-table", true).await;
        b.click("nav-tokens").await;
        b.until_shown("view-tokens", true).await;
        b.until_shown("tokens-empty", true).await;

        b.type_into("token-name", "bob").await;
        b.c.find(Locator::Id("token-role"))
            .await
            .unwrap()
            .select_by_value("admin")
            .await
            .unwrap();
        b.type_into("token-org", "acme").await;
        b.click("token-create").await;
        b.until_shown("token-created", true).await;
        let token = b.text("token-created-value").await;
        assert!(!token.is_empty());
        // The token works, as what the form said.
        let who = gw.get("/v1/whoami", Some(&token)).await;
        assert_eq!(
            who.json,
            json!({ "name": "bob", "role": "admin", "org": "acme" })
        );
        b.until_contains("tokens-body", "bob").await;
        let listed = gw.get("/v1/tokens", Some(PROVIDER)).await;
        assert_eq!(listed.json["tokens"][0]["name"], "bob");
        b.screenshot("token-created").await;

        // A taken name is refused in words.
        b.type_into("token-name", "bob").await;
        b.click("token-create").await;
        b.until_text("token-form-error", "A token with this name exists already.")
            .await;

        // Done: the token is gone from the page for good.
        b.click("token-created-done").await;
        b.until_shown("token-created", false).await;
        assert_eq!(b.text("token-created-value").await, "");

        b.c.find(Locator::Css("#tokens-body button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.until_shown("confirm-dialog", true).await;
        assert_eq!(b.text("confirm-title").await, "Delete the token bob?");
        b.click("confirm-ok").await;
        b.until_text("tokens-message", "The token bob was deleted.")
            .await;
        b.until_shown("tokens-empty", true).await;
        gw.get("/v1/whoami", Some(&token))
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        assert_eq!(
            gw.get("/v1/tokens", Some(PROVIDER)).await.json["tokens"],
            json!([])
        );
    });
}

// ---------------------------------------------------------------------------
// Small screens
// ---------------------------------------------------------------------------

#[test]
fn the_key_page_fits_a_360_px_wide_screen_without_scrolling_sideways() {
    browser_test(|b| async move {
        let gw = Gateway::start().await;
        // The longest org id there can be, so the base URL is as long as it gets.
        let org = format!("a{}", "-long-org".repeat(7));
        assert_eq!(org.len(), 64);
        gw.provision(&org).await;
        let admin = gw.token("alice", "admin", &org).await;
        gw.disable(
            &org,
            "a rather long reason that a provider wrote to explain what happened",
        )
        .await;

        b.c.set_window_size(360, 780).await.unwrap();
        b.sign_in(&gw, &admin).await;
        b.until_text("org-name", &org).await;
        b.until_text("status-value", "Disabled").await;
        assert_eq!(
            b.js("return window.innerWidth;").await,
            json!(360),
            "the viewport"
        );
        let overflow =
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;";
        assert_eq!(
            b.js(overflow).await,
            json!(0),
            "the disabled key page scrolls sideways"
        );
        b.screenshot("disabled-360").await;

        gw.post(&format!("/v1/orgs/{org}/enable"), Some(PROVIDER), None)
            .await
            .assert_status(StatusCode::OK);
        b.key_page(&gw, &org).await;
        b.until_text("status-value", "Enabled").await;
        assert_eq!(
            b.js(overflow).await,
            json!(0),
            "the key page scrolls sideways"
        );
        b.click("reveal-key").await;
        assert_eq!(
            b.js(overflow).await,
            json!(0),
            "the revealed key scrolls sideways"
        );
        b.screenshot("key-page-360").await;
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        b.type_into("edit-input", "bad key").await;
        let dialog = b
            .js("const r = document.getElementById('edit-dialog').getBoundingClientRect(); return [r.left >= 0, r.right <= window.innerWidth];")
            .await;
        assert_eq!(dialog, json!([true, true]), "the dialog fits the screen");
        assert_eq!(b.js(overflow).await, json!(0));
        b.screenshot("edit-dialog-360").await;
        b.keys(&Key::Escape).await;

        // The provider's pages too.
        b.click("signout").await;
        b.sign_in(&gw, PROVIDER).await;
        b.until_shown("orgs-table", true).await;
        assert_eq!(
            b.js(overflow).await,
            json!(0),
            "the org list scrolls sideways"
        );
        b.key_page(&gw, &org).await;
        assert_eq!(
            b.js(overflow).await,
            json!(0),
            "the provider's key page scrolls sideways"
        );
    });
}

// ---------------------------------------------------------------------------
// Accessibility
// ---------------------------------------------------------------------------

/// axe-core's script, which `scripts/test` installs from the npm registry
/// (pinned) into `target/axe`; `AXE_CORE_JS` names another copy. `None`
/// (after a note) when it is missing, except under `CI=true`.
fn axe_source() -> Option<String> {
    let path = std::env::var_os("AXE_CORE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/axe/node_modules/axe-core/axe.min.js")
        });
    match std::fs::read_to_string(&path) {
        Ok(source) => Some(source),
        Err(e) => {
            let note = format!(
                "the accessibility test needs axe-core at {} ({e}); scripts/test installs it",
                path.display()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{note}");
            }
            skip_note(&note);
            None
        }
    }
}

impl Browser {
    /// Runs axe-core over the page as it is now and returns its violations
    /// as `[id, impact, targets]`, having printed them all.
    async fn axe(&self, axe: &str, state: &str) -> Vec<(String, String, String)> {
        // Scripts sent over WebDriver are not the page's: the page's CSP
        // still allows only its own script.
        self.c
            .execute(&format!("{axe}\n;return typeof axe;"), vec![])
            .await
            .unwrap();
        let found = self
            .c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document)
                    .then(r => done({ passed: r.passes.length, violations: r.violations.map(v =>
                        [v.id, v.impact || '', v.nodes.map(n => n.target.join(' ')).join(', ')]) }))
                    .catch(e => done({ passed: 0, violations: [['axe-failed', 'critical', String(e)]] }));",
                vec![],
            )
            .await
            .unwrap();
        // A run that checked nothing proves nothing.
        assert!(
            found["passed"].as_u64().unwrap() > 0,
            "axe checked nothing: {found}"
        );
        let found: Vec<(String, String, String)> =
            serde_json::from_value(found["violations"].clone()).unwrap();
        println!(
            "axe, {state}: {} violations{}",
            found.len(),
            found
                .iter()
                .map(|(id, impact, at)| format!("\n  {impact} {id} at {at}"))
                .collect::<String>()
        );
        found
    }
}

#[test]
fn no_state_of_the_console_has_a_serious_or_critical_accessibility_violation() {
    let Some(axe) = axe_source() else { return };
    browser_test(|b| async move {
        let a = acme().await;
        let gw = &a.gw;
        gw.provision("globex").await;
        gw.disable("globex", "abuse").await;
        let mut serious = Vec::new();
        let mut check = |state: &str, found: Vec<(String, String, String)>| {
            serious.extend(
                found
                    .into_iter()
                    .filter(|(_, impact, _)| impact == "serious" || impact == "critical")
                    .map(|v| format!("{state}: {v:?}")),
            );
        };

        b.open(gw).await;
        b.until_shown("signin-token", true).await;
        check("sign-in", b.axe(&axe, "sign-in").await);

        b.sign_in(gw, PROVIDER).await;
        b.until_shown("orgs-table", true).await;
        check("org list", b.axe(&axe, "org list").await);
        b.click_link("globex").await;
        b.until_text("status-value", "Disabled").await;
        check(
            "provider's key page, disabled",
            b.axe(&axe, "provider's key page, disabled").await,
        );
        b.click("nav-tokens").await;
        b.until_shown("view-tokens", true).await;
        b.type_into("token-name", "bob").await;
        b.type_into("token-org", "acme").await;
        b.click("token-create").await;
        b.until_shown("token-created", true).await;
        check("tokens", b.axe(&axe, "tokens").await);
        b.click("signout").await;

        b.sign_in(gw, &a.admin).await;
        b.until_text("modified-by", "provider").await;
        check("admin's key page", b.axe(&axe, "admin's key page").await);
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        b.type_into("edit-input", "bad-key").await;
        b.until_contains("edit-problem", "Only A-Z").await;
        check("edit dialog", b.axe(&axe, "edit dialog").await);
        b.keys(&Key::Escape).await;
        b.click("delete-key").await;
        b.until_shown("confirm-dialog", true).await;
        check("confirm dialog", b.axe(&axe, "confirm dialog").await);
        b.click("confirm-cancel").await;
        b.click("tab-audit").await;
        b.until_shown("audit-table", true).await;
        check("audit", b.axe(&axe, "audit").await);

        assert!(serious.is_empty(), "axe found:\n{}", serious.join("\n"));

        // The check itself can fail: an input without a label is found.
        b.js("document.getElementById('main').append(document.createElement('input'));")
            .await;
        let found = b.axe(&axe, "with an unlabelled input added").await;
        assert!(
            found
                .iter()
                .any(|(id, impact, _)| id == "label" && impact == "critical"),
            "{found:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// At scale
// ---------------------------------------------------------------------------

#[test]
fn the_org_list_shows_a_first_page_and_a_search_of_100_000_imported_orgs() {
    browser_test(|b| async move {
        let mut gw = Gateway::start().await;
        let list: String = (0..100_000).map(|i| format!("org-{i:06}\n")).collect();
        let imported = keygate::store::import_orgs(gw.memory(), list.as_bytes(), gw.now())
            .await
            .unwrap();
        assert_eq!(imported, 100_000);
        // The running store loaded before the import: start again over it.
        gw.restart().await;
        let all = gw
            .get("/v1/orgs?limit=1&after=org-099998", Some(PROVIDER))
            .await;
        assert_eq!(all.json["orgs"][0]["org"], "org-099999");

        b.sign_in(&gw, PROVIDER).await;
        b.until(
            "the first page",
            "document.querySelectorAll('#orgs-body tr').length === 50",
        )
        .await;
        // Measured in the browser: a fresh load of the page, from navigation
        // start to the list call's answer (its rows are drawn as it is
        // read), and the list call alone.
        b.c.refresh().await.unwrap();
        b.until(
            "the first page again",
            "document.querySelectorAll('#orgs-body tr').length === 50",
        )
        .await;
        let first = b
            .js("const call = performance.getEntriesByType('resource').find(e => e.name.includes('/v1/orgs?'));
                 return [call ? call.responseEnd : -1, call ? call.responseEnd - call.startTime : -1];")
            .await;
        assert_eq!(b.text("orgs-page").await, "Page 1, 50 shown");
        assert_eq!(
            b.js("return document.querySelector('#orgs-body td').textContent;")
                .await,
            json!("org-000000")
        );

        // A search, from the Enter key to its rows on the page.
        b.js("window.measured = {};
              document.getElementById('orgs-q').addEventListener('keydown', e => {
                  if (e.key === 'Enter') window.measured.start = performance.now();
              }, { capture: true });
              new MutationObserver(() => {
                  const m = window.measured;
                  if (m.start && !m.shown && document.querySelectorAll('#orgs-body tr').length === 10)
                      m.shown = performance.now() - m.start;
              }).observe(document.getElementById('orgs-body'), { childList: true });")
            .await;
        b.type_into("orgs-q", "org-09999").await;
        b.keys(&Key::Enter).await;
        b.until("the search's rows", "window.measured.shown !== undefined")
            .await;
        let search = b.js("return window.measured.shown;").await;
        let want: Vec<String> = (99_990..100_000).map(|i| format!("org-{i:06}")).collect();
        let found = b
            .js("return Array.from(document.querySelectorAll('#orgs-body tr td:first-child')).map(td => td.textContent);")
            .await;
        assert_eq!(found, json!(want));
        println!(
            "100,000 orgs (debug build): first page {:.0} ms from navigation start to the list's \
             answer (the list call {:.0} ms); a search {:.0} ms from Enter to its rows",
            first[0].as_f64().unwrap(),
            first[1].as_f64().unwrap(),
            search.as_f64().unwrap()
        );
    });
}

// ---------------------------------------------------------------------------
// Cluster mode
// ---------------------------------------------------------------------------

#[test]
fn any_node_of_a_cluster_serves_the_console_with_the_clusters_state() {
    browser_test(|b| async move {
        // Two keygates over one shared backend: an in-process cluster.
        let backend = std::sync::Arc::new(keygate::store::MemoryBackend::shared());
        let one = Gateway::builder()
            .memory_backend(backend.clone())
            .start()
            .await;
        let two = Gateway::builder().memory_backend(backend).start().await;
        let key = one.provision("acme").await;
        let admin = one.token("alice", "admin", "acme").await;

        // Signed in on the other node with a token made on the first.
        b.sign_in(&two, &admin).await;
        b.until_text("key-value", &masked(&key)).await;
        b.click("edit-key").await;
        b.until_shown("edit-dialog", true).await;
        b.type_into("edit-input", "NewKey123456").await;
        b.until_text("edit-problem", "").await;
        b.keys(&Key::Enter).await;
        b.until_text(
            "org-message",
            "The key was changed. The old key no longer works.",
        )
        .await;
        // Both nodes serve the new key and refuse the old one.
        for node in [&one, &two] {
            assert_eq!(node.page("acme").await["key"], "NewKey123456");
            node.get_with("/acme/x", &key)
                .await
                .assert_refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
            node.get_with("/acme/x", "NewKey123456")
                .await
                .assert_status(StatusCode::OK);
        }

        // Disabled through the first node: the page on the second says so.
        one.disable("acme", "abuse").await;
        b.key_page(&two, "acme").await;
        b.until_text("status-value", "Disabled").await;
        assert!(b.text("notice-disabled").await.contains("(abuse)"));
        assert!(!b.shown("key-actions").await);
    });
}
