//! The cut-over dashboard in a real headless Chromium (Debian's `chromium`, installed by
//! scripts/setup), driven over the DevTools protocol from this test, against a running proxy
//! with traffic flowing: the page loads without a console error, shows a route flipped by a
//! reload within seconds (waiting on the DOM, not on a timer), asks for the admin token when the
//! API needs one, and leaves screenshots in `target/dashboard/`.
//!
//! Why the protocol directly rather than Playwright: the proxy, its upstreams and the traffic
//! come from the same fixtures as every other integration test (`common`), the test runs under
//! nextest like the rest, and it needs no npm package; the dozen DevTools commands it uses are a
//! small client over the WebSocket crate the tests already have.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A headless Chromium on a DevTools port of its own, killed on drop.
struct Browser {
    child: Child,
    dir: tempfile::TempDir,
    cdp: Cdp,
}

impl Browser {
    async fn start() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let bin = std::env::var("STRANGLER_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let log = std::fs::File::create(dir.path().join("chromium.log")).unwrap();
        let child = Command::new(&bin)
            .args([
                "--headless",
                // root in a container: no user namespace for the sandbox
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                // nothing but the proxy: no update checks, no sync, no field trials
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{bin}` (scripts/setup installs Debian's chromium): {e}"));
        // Chromium writes the port it got and the browser's WebSocket path here
        let active = dir.path().join("profile").join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws = loop {
            if let Some((port, path)) = std::fs::read_to_string(&active).ok().and_then(|t| {
                let mut lines = t.lines();
                Some((lines.next()?.trim().to_string(), lines.next()?.trim().to_string()))
            }) {
                break format!("ws://127.0.0.1:{port}{path}");
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port:\n{}", chromium_log(dir.path()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let cdp = Cdp::connect(&ws).await;
        Browser { child, dir, cdp }
    }

    /// A new tab, attached: its commands go with its session id.
    async fn tab(&self) -> Tab<'_> {
        let target = self.cdp.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached = self.cdp.call(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
        let tab = Tab { cdp: &self.cdp, session: attached["sessionId"].as_str().unwrap().to_string() };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            tab.call(domain, json!({})).await;
        }
        tab.call("Emulation.setDeviceMetricsOverride", json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }))
            .await;
        tab
    }
}

fn chromium_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default()
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- chromium log ---\n{}", chromium_log(self.dir.path()));
        }
    }
}

/// A DevTools protocol client: commands by id, events kept in order for the test to read.
struct Cdp {
    sink: tokio::sync::Mutex<Sink>,
    next: AtomicU64,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    events: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("DevTools at {url}: {e}"));
        let (sink, mut stream) = ws.split();
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (w, e) = (waiting.clone(), events.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else { continue };
                match v["id"].as_u64() {
                    Some(id) => {
                        if let Some(tx) = w.lock().unwrap().remove(&id) {
                            let _ = tx.send(v);
                        }
                    }
                    None => e.lock().unwrap().push(v),
                }
            }
        });
        Cdp { sink: tokio::sync::Mutex::new(sink), next: AtomicU64::new(1), waiting, events, reader }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.sink.lock().await.send(Message::text(msg.to_string())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer from chromium"))
            .unwrap();
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Tab<'a> {
    cdp: &'a Cdp,
    session: String,
}

impl Tab<'_> {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await
    }

    fn events(&self) -> Vec<Value> {
        self.cdp.events.lock().unwrap().iter().filter(|e| e["sessionId"] == self.session.as_str()).cloned().collect()
    }

    /// Loads `url` and waits for its load event.
    async fn open(&self, url: &str) {
        let seen = self.events().len();
        self.call("Page.navigate", json!({ "url": url })).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.events()[seen..].iter().any(|e| e["method"] == "Page.loadEventFired") {
            assert!(Instant::now() < deadline, "{url} never finished loading");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn eval(&self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "awaitPromise": true, "returnByValue": true })).await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}\nthrew: {e}\npage text:\n{}", self.text().await);
        }
        r["result"]["value"].clone()
    }

    async fn text(&self) -> String {
        let r = self.call("Runtime.evaluate", json!({ "expression": "document.body.innerText", "returnByValue": true })).await;
        r["result"]["value"].as_str().unwrap_or_default().to_string()
    }

    /// Resolves once `condition` (a JavaScript expression) holds, re-checked on every change of
    /// the DOM; fails after `within`.
    async fn wait_for(&self, condition: &str, within: Duration) {
        let js = format!(
            r#"new Promise((resolve, reject) => {{
                const ok = () => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }};
                if (ok()) return resolve(true);
                const seen = new MutationObserver(() => {{ if (ok()) {{ seen.disconnect(); clearTimeout(timer); resolve(true); }} }});
                seen.observe(document.documentElement, {{ subtree: true, childList: true, attributes: true, characterData: true }});
                const timer = setTimeout(() => {{ seen.disconnect(); reject(new Error("timed out waiting for: " + {quoted})); }}, {ms});
            }})"#,
            quoted = serde_json::to_string(condition).unwrap(),
            ms = within.as_millis()
        );
        self.eval(&js).await;
    }

    /// Console errors, uncaught exceptions and error log entries (failed loads, CSP violations),
    /// except those `allowed` says are expected.
    fn errors(&self, allowed: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => matches!(e["params"]["type"].as_str(), Some("error" | "assert")),
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .filter(|e| !allowed(e))
            .collect()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true })).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// Requests to the proxy until dropped, so the page has live traffic to show.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Traffic {
    fn start(base: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut sent = 0u64;
            while !s.load(Ordering::Relaxed) {
                for path in [format!("/svc/items/{sent}"), format!("/users/{sent}")] {
                    let _ = c.get(format!("{base}{path}")).send().await;
                }
                sent += 1;
                // a steady trickle, not a load test: the page draws it as it comes
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        });
        Traffic { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

const ROUTES: &str = "[plan]\nstages = [{ name = \"january\", services = [\"svc\"] }, { name = \"april\", services = [\"ai\"] }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_traffic_and_a_flip_within_seconds_without_console_errors() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let body = |mode: &str| {
        Routes::new()
            .upstream("legacy", &legacy.url())
            .upstream("svc", &svc.url())
            .raw(ROUTES)
            .route("svc", "/svc", "svc", mode, "stage = \"january\"")
            .build()
    };
    let proxy = Proxy::start(&body("legacy")).await;
    let traffic = Traffic::start(format!("http://{}", proxy.addr));
    let browser = Browser::start().await;
    let tab = browser.tab().await;
    tab.open(&format!("http://{}/dashboard", proxy.admin)).await;

    // the route as the file says, and the traffic the monolith answers, drawn
    tab.wait_for(r#"document.querySelector('tr[data-route="svc"]')?.dataset.mode === "legacy""#, Duration::from_secs(10)).await;
    tab.wait_for(r#"document.querySelector("svg.chart rect.legacy")"#, Duration::from_secs(10)).await;
    tab.wait_for(r#"document.getElementById("monolith")?.textContent.includes("GET /users/{id}")"#, Duration::from_secs(10)).await;
    let text = tab.text().await;
    for expected in ["january", "april", "Requests by backend", "Still answered by the monolith", "GET /svc/items/{id}"] {
        assert!(text.contains(expected), "`{expected}` not on the page:\n{text}");
    }

    // flip the route in the file the proxy serves, and reload: the page follows on its own
    proxy.write_body(&body("extracted"));
    let (status, reload) = proxy.admin_post("/reload").await;
    assert_eq!(status, 200, "{reload}");
    let flipped = Instant::now();
    tab.wait_for(r#"document.querySelector('tr[data-route="svc"]')?.dataset.mode === "extracted""#, Duration::from_secs(10)).await;
    let shown_after = flipped.elapsed();
    // and the service's answers arrive in the chart
    tab.wait_for(r#"document.querySelector("svg.chart rect.target")"#, Duration::from_secs(10)).await;
    tab.wait_for(r#"document.querySelector('[data-stage="january"]')?.classList.contains("extracted")"#, Duration::from_secs(10)).await;
    eprintln!("the dashboard showed the flip {} ms after the reload answered", shown_after.as_millis());
    let path = tab.screenshot("dashboard.png").await;
    eprintln!("screenshot: {}", path.display());

    // a broken file: the page shows the error, the old table keeps serving
    proxy.write_body(&body("extracted").replace("mode = \"extracted\"", "mode = \"extractd\""));
    let (status, _) = proxy.admin_post("/reload").await;
    assert_eq!(status, 422);
    tab.wait_for(r#"document.getElementById("reload-error")?.textContent.includes("unknown mode `extractd`")"#, Duration::from_secs(10))
        .await;
    tab.screenshot("dashboard-reload-error.png").await;

    let sent = traffic.stop().await;
    assert!(sent > 0);
    let errors = tab.errors(|_| false);
    assert!(errors.is_empty(), "console errors on the dashboard: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_admin_token_and_keeps_it_in_the_tab() {
    let legacy = TestUpstream::start("legacy").await;
    let body = Routes::new().upstream("legacy", &legacy.url()).raw(ROUTES).build();
    let env = [("TEST_ADMIN_TOKEN", "dashboard-s3cret")];
    let proxy = Proxy::start_opts(&body, Opts { admin: "token_env = \"TEST_ADMIN_TOKEN\"", env: &env, ..Opts::default() }).await;
    let browser = Browser::start().await;
    let tab = browser.tab().await;
    tab.open(&format!("http://{}/dashboard", proxy.admin)).await;
    tab.wait_for(r#"!document.getElementById("token-form").hidden"#, Duration::from_secs(10)).await;
    // a wrong token is refused and asked for again
    tab.eval(r#"document.getElementById("token").value = "wrong"; document.getElementById("token-form").requestSubmit(); true"#).await;
    tab.wait_for(r#"document.getElementById("token-error").textContent.includes("refused")"#, Duration::from_secs(10)).await;
    tab.eval(r#"document.getElementById("token").value = "dashboard-s3cret"; document.getElementById("token-form").requestSubmit(); true"#)
        .await;
    tab.wait_for(
        r#"document.querySelector('[data-stage="april"]') && document.getElementById("token-form").hidden"#,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(tab.eval(r#"sessionStorage.getItem("strangler-admin-token")"#).await, "dashboard-s3cret");
    tab.screenshot("dashboard-token.png").await;
    // the two 401s the page was answered before it had the token are the only errors
    let unauthorized = |e: &Value| {
        e["method"] == "Log.entryAdded"
            && e["params"]["entry"]["source"] == "network"
            && e["params"]["entry"]["text"].as_str().is_some_and(|t| t.contains("401"))
    };
    let errors = tab.errors(unauthorized);
    assert!(errors.is_empty(), "console errors on the dashboard: {errors:#?}");
    assert_eq!(tab.events().iter().filter(|e| unauthorized(e)).count(), 2);
}
