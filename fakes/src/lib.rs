//! Local fakes of the third-party APIs BrainMessenger calls, speaking their real HTTP shapes so
//! the monolith and the extracted services reach them exactly as production reaches the real
//! ones: through a base-URL setting.
//!
//! - [`stripe`]: Customers, Checkout Sessions, Subscriptions (form-encoded, `Bearer sk_…`), and
//!   signed webhook delivery (`Stripe-Signature: t=…,v1=…`).
//! - [`fcm`]: Firebase Cloud Messaging HTTP v1 `messages:send`, recording every message with
//!   the time it arrived so tests can assert delivery and latency.
//! - [`google`]: OAuth 2.0 authorize / token / userinfo.
//! - [`gmail`]: `users.messages.send` with RFC 2822 `raw` messages.
//! - [`tls`]: HTTPS serving (`--tls-cert`/`--tls-key`) and a throwaway CA for tests.
//!
//! Everything received is readable under `/_fake/…` (see [`app`]).

pub mod fcm;
pub mod gmail;
pub mod google;
pub mod stripe;
pub mod tls;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

/// How the fakes present themselves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The fakes' own base URL, used in links they hand out (Checkout URLs).
    pub public_base: String,
    pub stripe_webhook_url: Option<String>,
    pub stripe_webhook_secret: String,
}

/// Shared state: everything each fake has received.
#[derive(Clone)]
pub struct FakeState {
    pub settings: Arc<Settings>,
    // A std mutex: never held across an `.await`.
    pub(crate) db: Arc<Mutex<Db>>,
    pub(crate) http: reqwest::Client,
}

#[derive(Default)]
pub(crate) struct Db {
    pub stripe: stripe::Store,
    pub fcm: Vec<serde_json::Value>,
    /// `POST /_fake/fcm/outage`: FCM answers this status to the next `requests` sends
    pub fcm_outage: Option<fcm::Outage>,
    pub gmail: Vec<serde_json::Value>,
    pub google: google::Store,
}

impl FakeState {
    pub fn new(settings: Settings) -> Self {
        FakeState {
            settings: Arc::new(settings),
            db: Arc::default(),
            http: reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().expect("client"),
        }
    }

    pub(crate) fn with_db<T>(&self, f: impl FnOnce(&mut Db) -> T) -> T {
        f(&mut self.db.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// All fakes on one router: their paths do not collide, so one port serves them all.
pub fn app(state: FakeState) -> Router {
    Router::new()
        .merge(stripe::router())
        .merge(fcm::router())
        .merge(google::router())
        .merge(gmail::router())
        .route("/_fake/health", get(|| async { "ok" }))
        .route("/_fake/reset", post(reset))
        .with_state(state)
}

async fn reset(axum::extract::State(state): axum::extract::State<FakeState>) -> StatusCode {
    state.with_db(|db| *db = Db::default());
    StatusCode::NO_CONTENT
}

/// Serves until `shutdown` completes, on a TCP listener or a [`tls::TlsListener`].
pub async fn run<L>(listener: L, state: FakeState, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// A random id with a prefix, like the real APIs' ids (`cus_…`, `cs_test_…`).
pub(crate) fn id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A JSON error response.
pub(crate) fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

pub(crate) fn ok(body: serde_json::Value) -> Response {
    Json(body).into_response()
}

pub(crate) fn list(items: Vec<serde_json::Value>) -> Response {
    ok(json!({ "items": items }))
}
