//! The admin API, on its own listener (loopback by default).
//!
//! | path | what |
//! |---|---|
//! | `GET /healthz` | the process is up (no token needed: probes) |
//! | `GET /readyz` | 200 while serving, 503 until the edge listeners accept and once draining (no token needed) |
//! | `GET /routes` | the active table, its hash, when it was loaded, the last reload error, breakers, upstream health |
//! | `GET /shadow` | shadow comparisons per route: parity, mismatching fields with examples, noise, drops |
//! | `GET /metrics` | Prometheus text |
//! | `POST /reload` | reload now; 200 with the routing diff, or 422 with every error (old table kept) |
//! | `GET /plan` | the migration's progress from live traffic, per route and per stage of the plan (`progress::report`) |
//! | `GET /dashboard` | the cut-over dashboard: a page that draws `/plan` (no token needed for the page itself) |
//!
//! When `[admin] token_env` names a variable, every path but the probes and the dashboard's
//! static files needs `Authorization: Bearer <token>`; compile refuses a non-loopback admin
//! address without one. The dashboard page holds no data: its script asks for the token (kept in
//! the tab's `sessionStorage`) and sends it with each request for `/plan`, as any client does.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::clock::unix_secs;
use crate::reload::{LiveState, ReloadOutcome};

pub struct Admin {
    pub state: Arc<LiveState>,
    pub prometheus: PrometheusHandle,
    pub token: Option<String>,
    pub tee: std::sync::Arc<crate::shadow::tee::Tee>,
    /// The edge's listeners: `/readyz` is 503 until each accepts a connection (Pingora starts
    /// its services on their own threads, the admin listener may come first).
    pub listeners: Vec<std::net::SocketAddr>,
    pub listening: std::sync::atomic::AtomicBool,
}

impl Admin {
    /// Whether every edge listener accepts connections; once true, not checked again.
    async fn listening(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.listening.load(Ordering::Relaxed) {
            return true;
        }
        for a in &self.listeners {
            let mut target = *a;
            if target.ip().is_unspecified() {
                target.set_ip(if a.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
            }
            let connected = tokio::time::timeout(std::time::Duration::from_secs(1), tokio::net::TcpStream::connect(target)).await;
            if !matches!(connected, Ok(Ok(_))) {
                return false;
            }
        }
        self.listening.store(true, Ordering::Relaxed);
        true
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static parts are valid")
}

/// The cut-over dashboard: one page, its script and its style, embedded (no build step, nothing
/// fetched from elsewhere at run time).
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// A dashboard file, with a policy that lets the page run only its own script and style and
/// talk only to this listener, and never be framed.
fn dashboard_file(content_type: &str, body: &str) -> Response<Vec<u8>> {
    let mut r = reply(StatusCode::OK, content_type, body.as_bytes().to_vec());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(http::header::X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
    h.insert(http::header::REFERRER_POLICY, http::HeaderValue::from_static("no-referrer"));
    r
}

fn reply_json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

/// Compares without an early exit, so response time does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else { return true };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }

    /// The migration's progress: counters, modes and their ages, parity, breaker and demotion
    /// histories, the last reload.
    fn plan(&self) -> crate::progress::report::PlanReport {
        use crate::progress::report::{ConfigState, Inputs, PlanReport, ReloadError};
        let table = self.state.table.load_full();
        let config = ConfigState {
            path: Some(self.state.config_path.display().to_string()),
            hash: table.hash.clone(),
            loaded_at_unix_secs: Some(unix_secs(self.state.loaded_at())),
            last_reload_error: self.state.last_error().map(|e| ReloadError {
                at_unix_secs: e.at_unix_secs,
                trigger: e.trigger.to_string(),
                errors: e.errors,
            }),
        };
        PlanReport::build(Inputs {
            table: &table,
            progress: &self.state.progress,
            shadow: &self.tee.summary(),
            breakers: self.state.breakers.history(),
            demoted: self.state.demoter.demotions(),
            demotion_history: self.state.demoter.history(),
            config,
            live: true,
            now: std::time::Instant::now(),
            now_wall: std::time::SystemTime::now(),
        })
    }

    fn routes(&self) -> serde_json::Value {
        let table = self.state.table.load_full();
        let mut v = table.to_json();
        v["loaded_at_unix_secs"] = json!(unix_secs(self.state.loaded_at()));
        v["config_path"] = json!(self.state.config_path.display().to_string());
        v["last_reload_error"] = json!(self.state.last_error());
        v["demoted"] = self
            .state
            .demoter
            .demotions()
            .into_iter()
            .map(|(route, d)| (route.to_string(), json!(d)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v["breakers"] = self
            .state
            .breakers
            .states()
            .into_iter()
            .map(|(route, s)| (route.to_string(), json!(s.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v["upstream_health"] =
            self.state.health.snapshot().into_iter().map(|(n, h)| (n.to_string(), json!(h))).collect::<serde_json::Map<_, _>>().into();
        v
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        match self.state.reload("admin").await {
            Ok(ReloadOutcome::Unchanged) => {
                reply_json(StatusCode::OK, json!({ "result": "unchanged", "hash": self.state.table.load().hash }))
            }
            Ok(ReloadOutcome::Applied { diff, warnings }) => reply_json(
                StatusCode::OK,
                json!({
                    "result": "applied",
                    "hash": self.state.table.load().hash,
                    "changes": diff.changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "warnings": warnings,
                }),
            ),
            Err(failure) => reply_json(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "result": "error", "message": "the file is invalid; the previous table keeps serving", "errors": failure.errors }),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (&Method::GET, "/readyz") if self.state.is_draining() => {
                return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"draining\n".to_vec())
            }
            (&Method::GET, "/readyz") if !self.listening().await => {
                return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"starting\n".to_vec())
            }
            (&Method::GET, "/readyz") => return reply(StatusCode::OK, "text/plain", b"ready\n".to_vec()),
            // the dashboard's files hold no data (they fetch /plan with the token), so a browser
            // can load them before it has been given the token
            (&Method::GET, "/") => {
                let mut r = reply(StatusCode::FOUND, "text/plain", b"see /dashboard\n".to_vec());
                r.headers_mut().insert(http::header::LOCATION, http::HeaderValue::from_static("/dashboard"));
                return r;
            }
            (&Method::GET, "/dashboard") => return dashboard_file("text/html; charset=utf-8", DASHBOARD_HTML),
            (&Method::GET, "/dashboard.js") => return dashboard_file("text/javascript; charset=utf-8", DASHBOARD_JS),
            (&Method::GET, "/dashboard.css") => return dashboard_file("text/css; charset=utf-8", DASHBOARD_CSS),
            _ => {}
        }
        if !self.authorized(session) {
            let mut r = reply_json(StatusCode::UNAUTHORIZED, json!({ "statusCode": 401, "message": "admin token required" }));
            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return r;
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/routes") => reply_json(StatusCode::OK, self.routes()),
            (&Method::GET, "/shadow") => {
                let summary = self.tee.summary();
                let mut v = serde_json::to_value(&summary).unwrap_or_default();
                for (route, r) in &summary.routes {
                    v["routes"][route]["parity"] = json!((r.parity() * 100.0).round() / 100.0);
                }
                v["noise"] = serde_json::to_value(self.tee.noise()).unwrap_or_default();
                reply_json(StatusCode::OK, v)
            }
            (&Method::GET, "/metrics") => {
                crate::accesslog::publish_drops();
                self.prometheus.run_upkeep();
                reply(StatusCode::OK, "text/plain; version=0.0.4", self.prometheus.render().into_bytes())
            }
            (&Method::POST, "/reload") => self.reload().await,
            (&Method::GET, "/plan") => reply_json(StatusCode::OK, serde_json::to_value(self.plan()).unwrap_or_default()),
            (_, "/routes" | "/shadow" | "/metrics" | "/reload" | "/healthz" | "/readyz" | "/plan" | "/dashboard" | "/") => {
                reply_json(StatusCode::METHOD_NOT_ALLOWED, json!({ "statusCode": 405, "message": "method not allowed" }))
            }
            _ => reply_json(
                StatusCode::NOT_FOUND,
                json!({ "statusCode": 404, "message": "no such admin endpoint", "endpoints": ["/healthz", "/readyz", "/routes", "/shadow", "/plan", "/dashboard", "/metrics", "POST /reload"] }),
            ),
        }
    }
}
