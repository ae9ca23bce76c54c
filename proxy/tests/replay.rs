//! `strangler replay` and `strangler corpus`: the CI gate of a cut-over.

mod common;

use std::process::Command;

use common::*;

fn strangler(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strangler")).args(args).env("STRANGLER_DRY_RUN_SECRET", DRY_RUN_SECRET).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

const CORPUS: &str = r#"{"method":"GET","uri":"/random","headers":[["accept","application/json"]]}
{"method":"GET","uri":"/random","headers":[]}
{"method":"POST","uri":"/items?x=1","headers":[["content-type","application/json"]],"body":{"text":"hi"}}
{"method":"GET","uri":"/status/404","headers":[]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_gates_on_parity_after_rules_and_noise() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("2026-01-test");
    std::fs::create_dir(&cut).unwrap();
    std::fs::write(cut.join("requests.jsonl"), CORPUS).unwrap();
    std::fs::write(
        cut.join("parity.toml"),
        "route = \"items\"\nmin_parity = 100.0\nnoise_samples = 2\n[rules]\nignore = [\"$.server\", \"$.headers\"]\n",
    )
    .unwrap();
    let out = dir.path().join("reports");
    let (l, c) = (legacy.url(), svc.url());
    let dir_s = cut.to_str().unwrap().to_string();
    let out_s = out.to_str().unwrap().to_string();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || strangler(&["replay", &dir_s, "--legacy", &l, "--candidate", &c, "--out", &out_s]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| `items` | 4 | 100.00% |"), "{md}");
    assert!(md.contains("`$.nonce`"), "noise should be reported: {md}");
    let junit = std::fs::read_to_string(out.join("report.junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");
    // The POST reached each side once; each GET was asked of the monolith twice (noise sampling,
    // up to noise_samples per endpoint): 2 × /random × 2 + /status × 2 + POST = 7.
    assert_eq!(svc.requests.lock().unwrap().len(), 4);
    assert_eq!(legacy.requests.lock().unwrap().len(), 7);
    assert_eq!(legacy.requests.lock().unwrap().iter().filter(|(m, _, _)| m == "POST").count(), 1);

    // Without the rules the same corpus fails the gate, naming the field.
    std::fs::write(cut.join("parity.toml"), "route = \"items\"\n").unwrap();
    let (l, c) = (legacy.url(), svc.url());
    let dir_s = cut.to_str().unwrap().to_string();
    let (code, md, _) =
        tokio::task::spawn_blocking(move || strangler(&["replay", &dir_s, "--legacy", &l, "--candidate", &c])).await.unwrap();
    assert_eq!(code, 1, "{md}");
    assert!(md.contains("`$.server`"), "{md}");

    // A bad rule is a config error with its place.
    std::fs::write(cut.join("parity.toml"), "route = \"items\"\n[rules]\nignore = [\"server\"]\n").unwrap();
    let dir_s = cut.to_str().unwrap().to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        strangler(&["replay", &dir_s, "--legacy", "http://127.0.0.1:1", "--candidate", "http://127.0.0.1:1"])
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("bad JSON path `server`"), "{err}");
}

#[test]
fn corpus_extracts_a_routes_requests_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let record = |route: &str, uri: &str| {
        serde_json::json!({ "ts_unix_ms": 1, "route": route, "endpoint": "GET /x", "request_id": "r", "method": "GET", "uri": uri,
            "primary": "legacy", "outcome": "match", "legacy_status": 200, "candidate_status": 200,
            "request_headers": [["authorization", "[redacted]"]] })
        .to_string()
    };
    std::fs::write(dir.path().join("shadow-1.jsonl"), format!("{}\n{}\n{{torn", record("auth", "/auth/me"), record("chat", "/graphql")))
        .unwrap();
    let (code, out, _) = strangler(&["corpus", "--store", dir.path().to_str().unwrap(), "--route", "auth"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["uri"], "/auth/me");
    assert_eq!(v["headers"][0][1], "[redacted]");
}

#[test]
fn corpus_lines_carry_the_answers_secret_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let record = |uri: &str, secrets: serde_json::Value| {
        let mut r = serde_json::json!({ "ts_unix_ms": 1, "route": "auth", "endpoint": "POST /x", "request_id": "r", "method": "POST",
            "uri": uri, "primary": "legacy", "outcome": "match", "legacy_status": 200, "candidate_status": 200,
            "request_headers": [["content-type", "application/json"]], "request_body": { "password": "[redacted]" } });
        if !secrets.is_null() {
            r["answer_secrets"] = secrets;
        }
        r.to_string()
    };
    let lines =
        [record("/auth/login", serde_json::json!({ "$.refreshToken": "0123456789ab" })), record("/auth/me", serde_json::Value::Null)];
    std::fs::write(dir.path().join("shadow-1.jsonl"), lines.join("\n")).unwrap();
    let (code, out, _) = strangler(&["corpus", "--store", dir.path().to_str().unwrap(), "--route", "auth"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines[0],
        serde_json::json!({ "method": "POST", "uri": "/auth/login", "headers": [["content-type", "application/json"]],
            "body": { "password": "[redacted]" }, "answer_secrets": { "$.refreshToken": "0123456789ab" } })
    );
    assert!(lines[1].get("answer_secrets").is_none(), "{}", lines[1]);
}

/// A stateful fake auth service, started twice — as the monolith and as the candidate — over
/// ONE state, as both sides share one database. The candidate honours `x-strangler-dry-run`
/// (answers, but changes nothing) and, being a rewrite, validates token and code shapes (400 /
/// 422) where the monolith only looks them up (401 / 400): unfilled placeholders show up as
/// mismatches.
mod auth {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::{SystemTime, UNIX_EPOCH};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use serde_json::{json, Value};
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;

    /// One request a side answered.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Seen {
        pub side: &'static str,
        pub method: String,
        pub path: String,
        pub dry_run: bool,
        pub status: u16,
        pub body: Value,
    }

    #[derive(Default)]
    pub struct Db {
        users: BTreeMap<String, String>,
        email: Option<String>,
        refresh: Option<String>,
        access: Option<String>,
        pub totp_key: Option<Vec<u8>>,
        two_factor: bool,
    }

    #[derive(Default)]
    pub struct Shared {
        pub db: Mutex<Db>,
        pub seen: Mutex<Vec<Seen>>,
    }

    pub struct Server {
        pub url: String,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn start(side: &'static str, shared: Arc<Shared>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(side, &shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Server { url, task }
    }

    /// A random 43-character token.
    pub fn token() -> String {
        format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())[..43].to_string()
    }

    pub fn base32(data: &[u8]) -> String {
        const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let (mut acc, mut bits, mut out) = (0u32, 0u32, String::new());
        for &b in data {
            acc = (acc << 8) | b as u32;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(A[((acc >> bits) & 31) as usize] as char);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push(A[((acc << (5 - bits)) & 31) as usize] as char);
        }
        out
    }

    /// RFC 6238, written independently of the proxy's.
    pub fn totp(key: &[u8], unix: u64) -> String {
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
        m.update(&(unix / 30).to_be_bytes());
        let h = m.finalize().into_bytes();
        let o = (h[19] & 15) as usize;
        format!("{:06}", u32::from_be_bytes([h[o] & 0x7f, h[o + 1], h[o + 2], h[o + 3]]) % 1_000_000)
    }

    pub fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    async fn handle(side: &'static str, shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        // as bm-common does: a dry run only when the proxy's signature verifies
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let target = req.uri().path_and_query().map_or(path.clone(), |pq| pq.as_str().to_string());
        let dry_run = req.headers().contains_key("x-strangler-dry-run")
            && super::dry_run_verifies(&header("x-strangler-dry-run"), &header("x-request-id"), &method, &target);
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let candidate = side == "candidate";
        let (status, answer) = {
            let mut db = shared.db.lock().unwrap();
            route(&mut db, candidate, !(candidate && dry_run), &method, &path, &bearer, &body)
        };
        shared.seen.lock().unwrap().push(Seen { side, method, path, dry_run, status, body });
        let mut resp = Response::builder().status(status);
        if answer.is_some() {
            resp = resp.header("content-type", "application/json");
        }
        resp.body(Full::new(answer.map(|a| Bytes::from(a.to_string())).unwrap_or_default())).unwrap()
    }

    fn issue(db: &mut Db, persist: bool, email: Option<String>) -> (u16, Option<Value>) {
        let (refresh, access) = (token(), token());
        if persist {
            db.refresh = Some(refresh.clone());
            db.access = Some(access.clone());
            if email.is_some() {
                db.email = email;
            }
        }
        (200, Some(json!({ "refreshToken": refresh, "accessToken": access, "tokenType": "Bearer" })))
    }

    fn route(db: &mut Db, candidate: bool, persist: bool, method: &str, path: &str, bearer: &str, body: &Value) -> (u16, Option<Value>) {
        let s = |k: &str| body[k].as_str().unwrap_or("").to_string();
        let err = |status: u16, e: &str| (status, Some(json!({ "error": e })));
        // The rewrite checks a token's shape first; the monolith just fails to find it.
        let malformed = |t: &str| candidate && !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let authed = |db: &Db| -> Result<(), (u16, Option<Value>)> {
            if malformed(bearer) {
                Err(err(400, "malformed token"))
            } else if !bearer.is_empty() && db.access.as_deref() == Some(bearer) {
                Ok(())
            } else {
                Err(err(401, "invalid token"))
            }
        };
        match (method, path) {
            ("POST", "/auth/register") => {
                let email = s("email");
                if db.users.contains_key(&email) {
                    return err(409, "email taken");
                }
                if persist {
                    db.users.insert(email.clone(), s("password"));
                }
                (201, Some(json!({ "email": email })))
            }
            ("POST", "/auth/login") => {
                if db.users.get(&s("email")) != Some(&s("password")) {
                    return err(401, "bad credentials");
                }
                issue(db, persist, Some(s("email")))
            }
            ("POST", "/auth/refresh") => {
                let t = s("refreshToken");
                if malformed(&t) {
                    return err(400, "malformed token");
                }
                if db.refresh.as_deref() != Some(t.as_str()) {
                    return err(401, "invalid token");
                }
                issue(db, persist, None)
            }
            ("GET", "/auth/me") => match authed(db) {
                Ok(()) => (200, Some(json!({ "email": db.email, "twoFactor": db.two_factor }))),
                Err(e) => e,
            },
            ("POST", "/auth/2fa/setup") => match authed(db) {
                Ok(()) => {
                    let key: Vec<u8> =
                        uuid::Uuid::new_v4().as_bytes().iter().chain(&uuid::Uuid::new_v4().as_bytes()[..4]).copied().collect();
                    let secret = base32(&key);
                    if persist {
                        db.totp_key = Some(key);
                    }
                    (200, Some(json!({ "secret": secret, "digits": 6 })))
                }
                Err(e) => e,
            },
            ("POST", "/auth/2fa/verify") => {
                if let Err(e) = authed(db) {
                    return e;
                }
                let code = s("code");
                if candidate && !(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())) {
                    return err(422, "code must be 6 digits");
                }
                let now = now();
                let valid = db.totp_key.as_ref().is_some_and(|k| [now - 30, now, now + 30].iter().any(|t| totp(k, *t) == code));
                if !valid {
                    return err(400, "invalid code");
                }
                if persist {
                    db.two_factor = true;
                }
                (200, Some(json!({ "enabled": true })))
            }
            ("POST", "/auth/logout") => match authed(db) {
                Ok(()) => {
                    if persist {
                        db.access = None;
                        db.refresh = None;
                    }
                    (204, None)
                }
                Err(e) => e,
            },
            _ => err(404, "not found"),
        }
    }
}

use std::sync::Arc;

const EMAIL: &str = "ann@example.com";
const PASSWORD: &str = "corpus-password-1";

const SESSION_PARITY: &str = r#"route = "auth"
min_parity = 100.0
noise_samples = 1
candidate_dry_run = true
[rules]
ignore = ["$.accessToken", "$.refreshToken", "$.secret"]
[fill]
password = "corpus-password-1"
code = "totp:secret"
"#;

fn fp(v: &str) -> String {
    sha256_hex(v.as_bytes())[..12].to_string()
}

fn corpus_line(method: &str, uri: &str, bearer: Option<&str>, body: Option<serde_json::Value>, secrets: &[(&str, &str)]) -> String {
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    if body.is_some() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    if let Some(t) = bearer {
        headers.push(("authorization".into(), format!("Bearer [redacted:{}]", fp(t))));
    }
    let mut line = serde_json::json!({ "method": method, "uri": uri, "headers": headers, "body": body });
    if !secrets.is_empty() {
        line["answer_secrets"] = secrets.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(fp(v)))).collect();
    }
    line.to_string()
}

/// A session as the store records it: register → login → me → refresh → me → refresh with the
/// OLD token (reuse detection) → 2FA setup → verify with a TOTP code → me → logout → me. The
/// recorded tokens are random, as they were at recording time; only their fingerprints remain.
fn recorded_session() -> String {
    use serde_json::json;
    let (r1, a1, r2, a2, secret) = (auth::token(), auth::token(), auth::token(), auth::token(), auth::base32(&[7u8; 20]));
    let red = |v: &str| format!("[redacted:{}]", fp(v));
    let lines = [
        corpus_line("POST", "/auth/register", None, Some(json!({ "email": EMAIL, "password": "[redacted]" })), &[]),
        corpus_line(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "email": EMAIL, "password": "[redacted]" })),
            &[("$.refreshToken", &r1), ("$.accessToken", &a1)],
        ),
        corpus_line("GET", "/auth/me", Some(&a1), None, &[]),
        corpus_line(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({ "refreshToken": red(&r1) })),
            &[("$.refreshToken", &r2), ("$.accessToken", &a2)],
        ),
        corpus_line("GET", "/auth/me", Some(&a2), None, &[]),
        corpus_line("POST", "/auth/refresh", None, Some(json!({ "refreshToken": red(&r1) })), &[]),
        corpus_line("POST", "/auth/2fa/setup", Some(&a2), Some(json!({})), &[("$.secret", &secret)]),
        corpus_line("POST", "/auth/2fa/verify", Some(&a2), Some(json!({ "code": "[redacted]" })), &[]),
        corpus_line("GET", "/auth/me", Some(&a2), None, &[]),
        corpus_line("POST", "/auth/logout", Some(&a2), None, &[]),
        corpus_line("GET", "/auth/me", Some(&a2), None, &[]),
    ];
    lines.join("\n") + "\n"
}

/// What each side must have answered when the session replays as recorded: (method, path,
/// status, whether the monolith was asked a second time for noise).
const SESSION_ANSWERS: &[(&str, &str, u16, bool)] = &[
    ("POST", "/auth/register", 201, false),
    ("POST", "/auth/login", 200, false),
    ("GET", "/auth/me", 200, true),
    ("POST", "/auth/refresh", 200, false),
    ("GET", "/auth/me", 200, false),
    ("POST", "/auth/refresh", 401, false),
    ("POST", "/auth/2fa/setup", 200, false),
    ("POST", "/auth/2fa/verify", 200, false),
    ("GET", "/auth/me", 200, false),
    ("POST", "/auth/logout", 204, false),
    ("GET", "/auth/me", 401, false),
];

struct Replayed {
    code: i32,
    stderr: String,
    report: serde_json::Value,
    seen: Vec<auth::Seen>,
}

impl Replayed {
    fn parity(&self) -> f64 {
        self.report["routes"]["auth"]["parity"].as_f64().unwrap_or(-1.0)
    }
}

/// Replays a corpus against a fresh monolith/candidate pair sharing one fresh state.
async fn replay_session(corpus: &str, parity: &str) -> Replayed {
    let shared = Arc::new(auth::Shared::default());
    let legacy = auth::start("legacy", shared.clone()).await;
    let candidate = auth::start("candidate", shared.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("2026-02-auth");
    std::fs::create_dir(&cut).unwrap();
    std::fs::write(cut.join("requests.jsonl"), corpus).unwrap();
    std::fs::write(cut.join("parity.toml"), parity).unwrap();
    let out = dir.path().join("reports");
    let args: Vec<String> = vec![
        "replay".into(),
        cut.to_str().unwrap().into(),
        "--legacy".into(),
        legacy.url.clone(),
        "--candidate".into(),
        candidate.url.clone(),
        "--out".into(),
        out.to_str().unwrap().into(),
    ];
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || strangler(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap();
    let report = std::fs::read_to_string(out.join("report.json")).map(|t| serde_json::from_str(&t).unwrap()).unwrap_or_default();
    let seen = shared.seen.lock().unwrap().clone();
    Replayed { code, stderr, report, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_replays_with_filled_secrets_and_a_dry_run_candidate_first() {
    let r = replay_session(&recorded_session(), SESSION_PARITY).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.report);
    assert_eq!(r.parity(), 100.0, "{}", r.report);
    assert_eq!(r.report["routes"]["auth"]["compared"], SESSION_ANSWERS.len(), "{}", r.report);
    assert!(!r.stderr.contains("left redacted"), "{}", r.stderr);

    // Each request reached the candidate first, as a dry run, then the monolith; both saw the
    // same state, and the session ran as recorded (the reused OLD refresh token is refused).
    let mut expected = Vec::new();
    for (method, path, status, sampled) in SESSION_ANSWERS {
        let ev = |side, dry_run| (side, method.to_string(), path.to_string(), dry_run, *status);
        expected.push(ev("candidate", true));
        expected.push(ev("legacy", false));
        if *sampled {
            expected.push(ev("legacy", false));
        }
    }
    let got: Vec<_> = r.seen.iter().map(|s| (s.side, s.method.clone(), s.path.clone(), s.dry_run, s.status)).collect();
    assert_eq!(got, expected);
    // The same filled request went to both sides: the password from [fill], the login's refresh
    // token of THIS replay, and a current TOTP code.
    let bodies = |path: &str| -> Vec<serde_json::Value> { r.seen.iter().filter(|s| s.path == path).map(|s| s.body.clone()).collect() };
    assert!(bodies("/auth/login").iter().all(|b| b["password"] == PASSWORD));
    let refresh = bodies("/auth/refresh");
    assert_eq!(refresh.len(), 4);
    assert!(refresh.iter().all(|b| b == &refresh[0]), "the reuse presents the login's token again: {refresh:?}");
    assert_eq!(refresh[0]["refreshToken"].as_str().map(str::len), Some(43));
    assert!(bodies("/auth/2fa/verify").iter().all(|b| b["code"].as_str().is_some_and(|c| c.len() == 6 && c != "[redacted]")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fill_or_dry_run_the_same_session_falls_below_parity() {
    let corpus = recorded_session();

    // Without the answers' fingerprints (a corpus recorded before them), tokens stay
    // placeholders: the rewrite rejects their shape where the monolith says 401.
    let stripped: String = corpus
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("answer_secrets");
            v.to_string() + "\n"
        })
        .collect();
    let r = replay_session(&stripped, SESSION_PARITY).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.parity() < 100.0, "{}", r.report);
    assert!(r.report["routes"]["auth"]["mismatched_fields"]["status"]["count"].as_u64().unwrap_or(0) > 0, "{}", r.report);
    assert!(
        r.stderr.contains("warning: corpus#3 GET /auth/me: left redacted") && r.stderr.contains("header:authorization"),
        "{}",
        r.stderr
    );

    // Without [fill], the 2FA code stays `[redacted]` (and so does the password, which both
    // sides happen to accept).
    let no_fill = SESSION_PARITY.split("[fill]").next().unwrap();
    let r = replay_session(&corpus, no_fill).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.parity() < 100.0, "{}", r.report);
    assert!(r.stderr.contains("left redacted (nothing to fill it with): code"), "{}", r.stderr);
    assert!(r.stderr.contains("left redacted (nothing to fill it with): password"), "{}", r.stderr);

    // Without the dry run, the monolith's register is in the shared database before the
    // candidate is asked: 409.
    let r = replay_session(&corpus, &SESSION_PARITY.replace("candidate_dry_run = true", "candidate_dry_run = false")).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.parity() < 100.0, "{}", r.report);
    assert!(r.seen.iter().any(|s| s.side == "candidate" && s.path == "/auth/register" && s.status == 409 && !s.dry_run));
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The whole loop: a session through the proxy in shadow mode is stored with fingerprints,
/// `strangler corpus` extracts it, and it replays against a fresh database at full parity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_recorded_through_the_proxy_replays_at_full_parity() {
    let shared = Arc::new(auth::Shared::default());
    let legacy = auth::start("legacy", shared.clone()).await;
    let candidate = auth::start("candidate", shared.clone()).await;
    let body = Routes::new()
        .upstream("legacy", &legacy.url)
        .dry_run_upstream("svc", &candidate.url)
        .route("auth", "/auth", "svc", "shadow", "shadow = { writes = \"dry-run\", noise_sample_percent = 0 }")
        .build();
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    let mut recorded = Vec::new();
    let mut step = 0u64;
    let mut call = |method: &str, path: &str, bearer: Option<&str>, body: Option<serde_json::Value>| {
        let mut req = c.request(method.parse().unwrap(), proxy.url(path));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        step += 1;
        let n = step;
        let proxy = &proxy;
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            // One request at a time through the comparison, so the store keeps session order.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let s: serde_json::Value = serde_json::from_str(&proxy.admin_get("/shadow").await.unwrap().1).unwrap();
                if s["routes"]["auth"]["compared"].as_u64().unwrap_or(0) >= n {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "comparison {n} never finished: {s}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (status, v)
        }
    };
    use serde_json::json;
    assert_eq!(call("POST", "/auth/register", None, Some(json!({ "email": EMAIL, "password": PASSWORD }))).await.0, 201);
    let (_, login) = call("POST", "/auth/login", None, Some(json!({ "email": EMAIL, "password": PASSWORD }))).await;
    let (r1, a1) = (login["refreshToken"].as_str().unwrap().to_string(), login["accessToken"].as_str().unwrap().to_string());
    assert_eq!(call("GET", "/auth/me", Some(&a1), None).await.0, 200);
    let (_, refreshed) = call("POST", "/auth/refresh", None, Some(json!({ "refreshToken": r1 }))).await;
    let (r2, a2) = (refreshed["refreshToken"].as_str().unwrap().to_string(), refreshed["accessToken"].as_str().unwrap().to_string());
    assert_eq!(call("GET", "/auth/me", Some(&a2), None).await.0, 200);
    assert_eq!(call("POST", "/auth/refresh", None, Some(json!({ "refreshToken": r1 }))).await.0, 401);
    let (_, setup) = call("POST", "/auth/2fa/setup", Some(&a2), Some(json!({}))).await;
    let key = shared.db.lock().unwrap().totp_key.clone().unwrap();
    let code = auth::totp(&key, auth::now());
    assert_eq!(call("POST", "/auth/2fa/verify", Some(&a2), Some(json!({ "code": code }))).await.0, 200);
    assert_eq!(call("GET", "/auth/me", Some(&a2), None).await.0, 200);
    assert_eq!(call("POST", "/auth/logout", Some(&a2), None).await.0, 204);
    assert_eq!(call("GET", "/auth/me", Some(&a2), None).await.0, 401);
    recorded.extend([r1, a1, r2, a2, setup["secret"].as_str().unwrap().to_string(), PASSWORD.to_string(), code]);

    let store = proxy.dir.path().join("shadow-store");
    wait_until("11 records in the store", || {
        std::fs::read_dir(&store)
            .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).map(|t| t.lines().count()).sum::<usize>() >= 11)
            .unwrap_or(false)
    })
    .await;
    let (code, corpus, err) = strangler(&["corpus", "--store", store.to_str().unwrap(), "--route", "auth"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(corpus.lines().count(), 11, "{corpus}");
    for secret in &recorded {
        assert!(!corpus.contains(secret.as_str()), "{secret} reached the corpus:\n{corpus}");
    }
    let lines: Vec<serde_json::Value> = corpus.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[1]["answer_secrets"]["$.refreshToken"], fp(&recorded[0]), "{}", lines[1]);
    assert_eq!(lines[1]["answer_secrets"]["$.accessToken"], fp(&recorded[1]), "{}", lines[1]);
    assert_eq!(lines[3]["body"]["refreshToken"], format!("[redacted:{}]", fp(&recorded[0])));
    assert_eq!(lines[5]["body"]["refreshToken"], format!("[redacted:{}]", fp(&recorded[0])));
    let auth_header = |l: &serde_json::Value| {
        l["headers"].as_array().unwrap().iter().find(|h| h[0] == "authorization").map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(auth_header(&lines[4]), Some(format!("Bearer [redacted:{}]", fp(&recorded[3]))));
    assert_eq!(lines[7]["body"]["code"], "[redacted]");
    drop(proxy);

    // Replayed against a fresh database (as CI would), the recorded session replays in full.
    let r = replay_session(&corpus, SESSION_PARITY).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.report);
    assert_eq!(r.parity(), 100.0, "{}", r.report);
    let legacy_statuses: Vec<u16> = r.seen.iter().filter(|s| s.side == "legacy").map(|s| s.status).collect();
    assert_eq!(legacy_statuses, vec![201, 200, 200, 200, 200, 200, 401, 200, 200, 200, 204, 401]);
}
