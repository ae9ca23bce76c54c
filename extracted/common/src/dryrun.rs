//! One database transaction per request, and dry runs for shadow traffic.
//!
//! [`transaction_per_request`] puts a [`RequestTx`] on every request. Handlers do all their
//! database work through it (`tx.conn().await?` gives the connection of the request's
//! transaction, begun on first use). When the handler has answered:
//!
//! * a normal request is committed unless the answer is a 5xx (then rolled back);
//! * a request carrying `x-strangler-dry-run` — a shadow copy the strangler proxy sends for a
//!   route with `writes = "dry-run"` — is always **rolled back**: the service runs the full code
//!   path, answers as it would, and leaves no row behind. Handlers that have side effects outside
//!   the database (mail, push, payments, Redis) check [`DryRun`] and skip them.
//!
//! The proxy strips the header from client requests, so no client can ask for a dry run.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::DRY_RUN_HEADER;

/// Whether this request is a shadow dry run (its writes will be rolled back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRun(pub bool);

impl DryRun {
    pub fn of(headers: &axum::http::HeaderMap) -> Self {
        DryRun(headers.get(DRY_RUN_HEADER).is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true")))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for DryRun {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<DryRun>().copied().unwrap_or_else(|| DryRun::of(&parts.headers)))
    }
}

type Deferred = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

struct Inner {
    pool: PgPool,
    tx: Mutex<Option<Transaction<'static, Postgres>>>,
    /// work that may only happen once the request's writes are committed (mail, messages)
    after_commit: std::sync::Mutex<Vec<Deferred>>,
}

/// The request's transaction (begun lazily: requests that never touch the database cost nothing).
#[derive(Clone)]
pub struct RequestTx(Arc<Inner>);

/// The connection of a request's transaction; deref to `PgConnection` for sqlx queries:
/// `sqlx::query(..).execute(&mut *conn)`.
pub struct TxConn<'a>(MutexGuard<'a, Option<Transaction<'static, Postgres>>>);

impl std::ops::Deref for TxConn<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.0.as_ref().expect("transaction begun")
    }
}
impl std::ops::DerefMut for TxConn<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("transaction begun")
    }
}

impl RequestTx {
    pub fn new(pool: PgPool) -> Self {
        RequestTx(Arc::new(Inner { pool, tx: Mutex::new(None), after_commit: Default::default() }))
    }

    /// Runs `work` in the background once this request's transaction has committed; never when
    /// it is rolled back (a dry run, a 5xx, a failed commit). For side effects that must not
    /// happen for writes that did not: the mail with a link to a row, a message about it.
    pub fn after_commit(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.after_commit.lock().unwrap_or_else(|e| e.into_inner()).push(Box::pin(work));
    }

    /// The connection of this request's transaction, beginning it on first use.
    pub async fn conn(&self) -> Result<TxConn<'_>, sqlx::Error> {
        let mut guard = self.0.tx.lock().await;
        if guard.is_none() {
            *guard = Some(self.0.pool.begin().await?);
        }
        Ok(TxConn(guard))
    }

    async fn finish(&self, commit: bool) -> Result<(), sqlx::Error> {
        match self.0.tx.lock().await.take() {
            Some(tx) if commit => tx.commit().await,
            Some(tx) => tx.rollback().await,
            None => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestTx {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<RequestTx>().cloned().ok_or_else(|| {
            tracing::error!("RequestTx used on a route without the transaction_per_request layer");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        })
    }
}

/// Middleware: `Router::layer(axum::middleware::from_fn_with_state(pool, transaction_per_request))`.
pub async fn transaction_per_request(State(pool): State<PgPool>, mut req: Request, next: Next) -> Response {
    let dry = DryRun::of(req.headers());
    let tx = RequestTx::new(pool);
    req.extensions_mut().insert(tx.clone());
    req.extensions_mut().insert(dry);
    let res = next.run(req).await;
    let commit = !dry.0 && !res.status().is_server_error();
    if dry.0 {
        metrics::counter!("dry_run_requests_total").increment(1);
    }
    match tx.finish(commit).await {
        Ok(()) => {
            let deferred = std::mem::take(&mut *tx.0.after_commit.lock().unwrap_or_else(|e| e.into_inner()));
            if commit {
                for work in deferred {
                    tokio::spawn(work);
                }
            }
            res
        }
        Err(e) => {
            // the client must not believe a write happened when the commit failed
            tracing::error!(error = %e, "finishing the request transaction failed");
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(serde_json::json!({ "statusCode": 500, "message": "Internal server error" })))
                .into_response()
        }
    }
}
