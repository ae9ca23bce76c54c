//! Fixtures for integration tests: real upstream servers and a real `strangler` process, all on
//! ephemeral loopback ports, cleaned up on drop.
//!
//! ```ignore
//! let legacy = TestUpstream::start("legacy").await;
//! let proxy = Proxy::start(&Routes::new().upstream("legacy", &legacy).route(...)).await;
//! ```
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub type Body = BoxBody<Bytes, Infallible>;

/// Method, URI and headers of each request an upstream received.
pub type Received = Arc<Mutex<Vec<(String, String, Vec<(String, String)>)>>>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Deterministic content for big bodies: byte i is `i % 251`.
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    (0..len).map(|i| ((offset + i as u64) % 251) as u8).collect::<Vec<u8>>().into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A real HTTP/1.1 server (hyper) that says who it is.
///
/// - any path: JSON `{server, method, uri, headers, body_len, body_sha256}`
/// - `/status/{code}`: that status
/// - `/big/{bytes}`: a streamed body of that many pattern bytes; `/big/{bytes}/{server}`: only
///   from that server, the others answer `small`
/// - `/slow/{ms}`: answers after a delay
/// - `/hop`: a response carrying hop-by-hop headers
/// - `/not-modified`: 304 with an ETag
/// - `/ws` (or any WebSocket upgrade): WebSocket echo
pub struct TestUpstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted: shows whether the proxy reuses keep-alive connections.
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Requests as received: method, uri and headers (for shadow tests).
    pub requests: Received,
    /// When set, every request waits until [`TestUpstream::release`].
    gate: Option<Arc<tokio::sync::Semaphore>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Restart on a known address (after [`TestUpstream::kill`]).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::start_on(name, l),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("rebinding {addr}: {e}"),
            }
        }
    }

    /// An upstream that holds every request until [`TestUpstream::release`] is called.
    pub async fn start_gated(name: &str) -> Self {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        Self::start_inner(name, TcpListener::bind("127.0.0.1:0").await.unwrap(), Some(gate))
    }

    pub fn release(&self) {
        if let Some(g) = &self.gate {
            g.add_permits(1_000_000);
        }
    }

    pub fn start_on(name: &str, listener: TcpListener) -> Self {
        Self::start_inner(name, listener, None)
    }

    fn start_inner(name: &str, listener: TcpListener, gate: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests: Received = Arc::default();
        let (n, h, s, conn_count, reqs, g) =
            (name.to_string(), hits.clone(), seen.clone(), connections.clone(), requests.clone(), gate.clone());
        let task = tokio::spawn(async move {
            // Connection tasks live in the set: aborting this task drops the set and closes
            // every connection, as a killed process would.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                conn_count.fetch_add(1, Ordering::SeqCst);
                let (n, h, s, reqs, g) = (n.clone(), h.clone(), s.clone(), reqs.clone(), g.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (n, h, s, reqs, g) = (n.clone(), h.clone(), s.clone(), reqs.clone(), g.clone());
                        async move {
                            let headers =
                                req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
                            reqs.lock().unwrap().push((req.method().to_string(), req.uri().to_string(), headers));
                            if let Some(g) = g {
                                let _ = g.acquire().await;
                            }
                            handle(n, h, s, req).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        TestUpstream { name: name.to_string(), addr, hits, connections, seen, requests, gate, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every open connection.
    pub async fn kill(mut self) -> SocketAddr {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        task.abort();
        let _ = task.await;
        self.addr
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    name: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    seen.lock().unwrap().push(req.uri().to_string());
    let segs: Vec<&str> = path.split('/').collect();
    if req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return Ok(websocket_echo(req, &name));
    }
    match segs.get(1).copied().unwrap_or("") {
        "status" => {
            let code: u16 = segs.get(2).and_then(|s| s.parse().ok()).unwrap_or(500);
            return Ok(Response::builder()
                .status(code)
                .header("x-served-by", &name)
                .body(full(format!("{{\"server\":\"{name}\",\"status\":{code}}}")))
                .unwrap());
        }
        "big" if segs.get(3).is_some_and(|only| *only != name) => {
            return Ok(Response::builder().header("x-served-by", &name).body(full("small")).unwrap());
        }
        "big" => {
            let total: u64 = segs.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
            const CHUNK: u64 = 64 * 1024;
            let stream = futures_util::stream::unfold(0u64, move |off| async move {
                if off >= total {
                    return None;
                }
                let len = CHUNK.min(total - off);
                Some((Ok::<_, Infallible>(Frame::data(pattern_chunk(off, len as usize))), off + len))
            });
            return Ok(Response::builder().header("x-served-by", &name).body(BodyExt::boxed(StreamBody::new(stream))).unwrap());
        }
        "slow" => {
            let ms: u64 = segs.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "hop" => {
            return Ok(Response::builder()
                .header("connection", "x-up-secret")
                .header("x-up-secret", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("x-served-by", &name)
                .body(full("hop"))
                .unwrap());
        }
        "not-modified" => {
            return Ok(Response::builder()
                .status(304)
                .header("etag", "\"v1\"")
                .header("x-served-by", &name)
                .body(full(Bytes::new()))
                .unwrap());
        }
        "ws" => return Ok(websocket_echo(req, &name)),
        "random" => {
            let body = serde_json::json!({ "server": name, "nonce": uuid_like(), "fixed": [1, 2, 3] });
            return Ok(Response::builder()
                .header("content-type", "application/json")
                .header("x-served-by", &name)
                .body(full(body.to_string()))
                .unwrap());
        }
        _ => {}
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers().iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("").to_string()))).collect();
    // Stream the body through a hasher: an upload is never held whole.
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map(|f| f.into_data()) {
            if let Ok(d) = data {
                len += d.len() as u64;
                hasher.update(&d);
            }
        } else {
            break;
        }
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let v = serde_json::json!({ "server": name, "method": method, "uri": uri, "headers": headers, "body_len": len, "body_sha256": digest });
    Ok(Response::builder().header("content-type", "application/json").header("x-served-by", &name).body(full(v.to_string())).unwrap())
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos(), N.fetch_add(1, Ordering::SeqCst))
}

fn websocket_echo(mut req: Request<Incoming>, name: &str) -> Response<Body> {
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder().status(400).body(full("not a websocket request")).unwrap();
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(&mut req).await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .header("x-served-by", name)
        .body(full(Bytes::new()))
        .unwrap()
}

/// The dry-run secret every test proxy signs with.
pub const DRY_RUN_SECRET: &str = "test-dry-run-secret-0123456789abcdef";

/// Whether a dry-run header value is the proxy's signature for this request (as a service
/// built on bm-common checks it).
pub fn dry_run_verifies(value: &str, request_id: &str, method: &str, target: &str) -> bool {
    let key = strangler_protocol::DryRunKey::try_new(DRY_RUN_SECRET.as_bytes()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    key.verify(value, now, strangler_protocol::dry_run::Signed { request_id, method, target }).is_ok()
}

/// An address where nothing listens, and the socket that keeps it so (bound, not listening):
/// connections to it are refused for as long as the guard lives, whatever else runs.
pub fn dead_addr() -> (SocketAddr, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    (s.local_addr().unwrap().as_socket().unwrap(), s)
}

/// A `strangler serve` process with its own routes.toml in a temp folder.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Every listener's address, in file order (`addr` is the first).
    pub listeners: Vec<SocketAddr>,
    /// The [server]/[[listeners]]/[admin] text the fixture wrote (ports 0), kept on rewrites.
    pub header: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Child,
    log: PathBuf,
}

/// Extra lines for the sections the fixture owns, and the process environment.
#[derive(Default, Clone, Copy)]
pub struct Opts<'a> {
    pub server: &'a str,
    pub admin: &'a str,
    pub env: &'a [(&'a str, &'a str)],
    /// stderr is a pipe nobody reads (a log reader that stalled): `logs()` stays empty
    pub stalled_stderr: bool,
}

/// The [server], [[listeners]] and [admin] sections the fixture owns.
pub fn header(addr: SocketAddr, admin: SocketAddr, opts: Opts<'_>) -> String {
    format!(
        "[server]\ndefault_upstream = \"legacy\"\nthreads = 2\ngrace_period_secs = 3\nshutdown_timeout_secs = 2\n{}\n[[listeners]]\naddr = \"{addr}\"\n\n[admin]\naddr = \"{admin}\"\n{}\n",
        opts.server, opts.admin
    )
}

impl Proxy {
    /// `body` holds the upstreams and routes.
    pub async fn start(body: &str) -> Proxy {
        Self::start_opts(body, Opts::default()).await
    }

    /// Listeners and admin on port 0: the proxy binds them and writes back the addresses it got
    /// (`--bound-addrs-file`), so no port is picked here and raced for.
    pub async fn start_opts(body: &str, opts: Opts<'_>) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let header = header(any, any, opts);
        let config = dir.path().join("routes.toml");
        std::fs::write(&config, format!("{header}{body}")).unwrap();
        let log = dir.path().join("strangler.log");
        let bound = dir.path().join("bound.json");
        let child = Command::new(env!("CARGO_BIN_EXE_strangler"))
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--poll-interval-secs", "1", "--bound-addrs-file"])
            .arg(&bound)
            .env("STRANGLER_DRY_RUN_SECRET", DRY_RUN_SECRET)
            .envs(opts.env.iter().copied())
            .env("STRANGLER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(if opts.stalled_stderr { Stdio::piped() } else { std::fs::File::create(&log).unwrap().into() })
            .spawn()
            .unwrap();
        let mut p = Proxy { addr: any, admin: any, listeners: Vec::new(), header, dir, config, child, log };
        if !p.wait_ready(&bound).await {
            panic!("strangler did not start:\n{}", p.logs());
        }
        p
    }

    async fn wait_ready(&mut self, bound: &std::path::Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.listeners.is_empty() {
                if let Some(v) = std::fs::read(bound).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) {
                    self.listeners = v["listeners"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().parse().unwrap()).collect();
                    self.addr = self.listeners[0];
                    self.admin = v["admin"].as_str().unwrap().parse().unwrap();
                }
            } else if matches!(self.admin_get("/readyz").await, Ok((200, _))) && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The logs once a line satisfies `pred` (access lines are written by the access log's own
    /// thread, a moment after the answer); panics with the logs after 10 s.
    pub async fn wait_for_log_line(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.lines().any(&pred) {
                return logs;
            }
            assert!(std::time::Instant::now() < deadline, "the expected log line never came:\n{logs}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces routes.toml the way editors do: write a temp file, rename it into place.
    pub fn write_body(&self, body: &str) {
        self.write_raw(&format!("{}{body}", self.header));
    }

    pub fn write_raw(&self, text: &str) {
        let tmp = self.dir.path().join(".routes.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Result<(u16, String)> {
        let r = reqwest::get(format!("http://{}{path}", self.admin)).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        let r = reqwest::Client::new().post(format!("http://{}{path}", self.admin)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn routes_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/routes").await.unwrap().1).unwrap()
    }

    /// Waits until the served table has `hash`, or panics with the logs.
    pub async fn wait_for_hash_change(&self, old: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.routes_json().await;
            if v["hash"].as_str() != Some(old) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("table never reloaded; logs:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory of the proxy process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// SIGTERM, then waits for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("strangler did not exit after SIGTERM; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- strangler logs ---\n{}", self.logs());
        }
    }
}

/// Builds the upstream and route sections of a routes.toml.
#[derive(Default)]
pub struct Routes(String);

impl Routes {
    pub fn new() -> Self {
        Routes::default()
    }
    pub fn upstream(mut self, name: &str, url: &str) -> Self {
        self.0.push_str(&format!("[upstreams.{name}]\nurl = \"{url}\"\nconnect_timeout_ms = 500\n\n"));
        self
    }
    /// An upstream that declares it rolls dry runs back (may receive copies of writes).
    pub fn dry_run_upstream(mut self, name: &str, url: &str) -> Self {
        self.0.push_str(&format!("[upstreams.{name}]\nurl = \"{url}\"\nconnect_timeout_ms = 500\ndry_run = true\n\n"));
        self
    }
    pub fn raw(mut self, text: &str) -> Self {
        self.0.push_str(text);
        self.0.push('\n');
        self
    }
    pub fn route(mut self, name: &str, prefix: &str, target: &str, mode: &str, extra: &str) -> Self {
        self.0.push_str(&format!("[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\ntarget = \"{target}\"\nmode = \"{mode}\"\n{extra}\n\n"));
        self
    }
    pub fn build(&self) -> String {
        self.0.clone()
    }
}

/// Which upstream answered (from the echo's `x-served-by`).
pub async fn served_by(client: &reqwest::Client, url: &str) -> String {
    let r = client.get(url).send().await.unwrap();
    r.headers().get("x-served-by").map(|v| v.to_str().unwrap().to_string()).unwrap_or_else(|| format!("status {}", r.status()))
}

/// An unsigned JWT with the given subject (the proxy only decodes it).
pub fn jwt_for(sub: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}.c2ln", b.encode(r#"{"alg":"HS256","typ":"JWT"}"#), b.encode(format!(r#"{{"sub":"{sub}"}}"#)))
}
