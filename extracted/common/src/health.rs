//! `GET /health` answers while the process runs; `GET /ready` answers 200 only when every
//! dependency check passes (Postgres, Redis, …), 503 with the failing ones otherwise.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

type Check = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    pub fn check<F, Fut>(mut self, name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
        self
    }

    /// A Postgres pool answers `SELECT 1`.
    pub fn postgres(self, pool: sqlx::PgPool) -> Self {
        self.check("database", move || {
            let pool = pool.clone();
            async move { sqlx::query("SELECT 1").execute(&pool).await.map(|_| ()).map_err(|e| e.to_string()) }
        })
    }

    async fn run(&self) -> (bool, Value) {
        let mut out = Map::new();
        let mut ok = true;
        for (name, check) in &self.checks {
            let r = tokio::time::timeout(Duration::from_secs(2), check()).await.unwrap_or_else(|_| Err("timed out".into()));
            ok &= r.is_ok();
            out.insert((*name).into(), json!(if r.is_ok() { "up" } else { "down" }));
            if let Err(e) = r {
                tracing::warn!(check = name, error = %e, "readiness check failed");
            }
        }
        (ok, Value::Object(out))
    }

    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new().route("/health", get(|| async { Json(json!({ "status": "ok" })) })).route(
            "/ready",
            get(move || {
                let me = self.clone();
                async move {
                    let (ok, checks) = me.run().await;
                    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (status, Json(json!({ "status": if ok { "ok" } else { "error" }, "checks": checks }))).into_response()
                }
            }),
        )
    }
}
