//! One database transaction per request, and dry runs for shadow traffic.
//!
//! [`transaction_per_request`] puts a [`RequestTx`] on every request. Handlers do all their
//! database work through it (`tx.conn().await?` gives the connection of the request's
//! transaction, begun on first use). When the handler has answered:
//!
//! * a normal request is committed unless the answer is a 5xx (then rolled back);
//! * a request carrying a valid `x-strangler-dry-run` — a shadow copy the strangler proxy sends
//!   for a route with `writes = "dry-run"` — is always **rolled back**: the service runs the full
//!   code path, answers as it would, and leaves no row behind. Handlers that have side effects
//!   outside the database (mail, push, payments, Redis the monolith shares) check [`DryRun`] and
//!   skip them. A dry run still passes (and counts against) the service's own rate limits, and
//!   never returns a credential that works (see the auth service).
//!
//! The header is **signed** by the proxy (`strangler_protocol::dry_run`: HMAC-SHA256 with the
//! secret in `DRY_RUN_SECRET`, over the request id, method, target and time; valid for 30 s
//! either side). A request whose header does not verify — unsigned, forged, stale, or with no
//! secret configured here — is answered `400` and runs neither way: not as a dry run (anyone
//! could skip side effects and limits), and not for real (the sender meant it to leave nothing
//! behind, so running it would be a second write). Counted in
//! `dry_run_rejected_total{reason}`. The proxy also strips the header from client requests.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use strangler_protocol::dry_run::Signed;
use strangler_protocol::{DryRunKey, DryRunRejection};

use crate::{DRY_RUN_HEADER, REQUEST_ID_HEADER};

/// Whether this request is a verified shadow dry run (its writes will be rolled back). Set by
/// [`transaction_per_request`]; a request it did not see is not a dry run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRun(pub bool);

impl DryRun {
    /// Verifies the request's dry-run header, if it has one: `Ok(DryRun(false))` without it,
    /// `Ok(DryRun(true))` when it verifies, the reason otherwise. `target` is the request target
    /// as the proxy sent it (signed as sent, before [`crate::nest::express_routing`] rewrites it).
    pub fn verify(
        key: Option<&DryRunKey>,
        method: &axum::http::Method,
        target: &str,
        headers: &axum::http::HeaderMap,
        now_unix_secs: u64,
    ) -> Result<DryRun, DryRunRejection> {
        let Some(value) = headers.get(DRY_RUN_HEADER) else { return Ok(DryRun(false)) };
        let key = key.ok_or(DryRunRejection::NoKey)?;
        let value = value.to_str().map_err(|_| DryRunRejection::Malformed)?;
        let request_id = headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).ok_or(DryRunRejection::Malformed)?;
        key.verify(value, now_unix_secs, Signed { request_id, method: method.as_str(), target })?;
        Ok(DryRun(true))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for DryRun {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<DryRun>().copied().unwrap_or(DryRun(false)))
    }
}

type Deferred = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

type Slot = Arc<Mutex<Option<Transaction<'static, Postgres>>>>;

struct Inner {
    pool: PgPool,
    tx: Mutex<Option<Transaction<'static, Postgres>>>,
    /// transactions on other databases (a chat's shard), by name, in the order they were begun:
    /// committed before the main one, rolled back with it
    others: std::sync::Mutex<Vec<(String, Slot)>>,
    /// work that may only happen once the request's writes are committed (mail, messages)
    after_commit: std::sync::Mutex<Vec<Deferred>>,
    /// work run (awaited, in order) right before the commit, while the transaction's locks are
    /// still held: what must happen in commit order (a chat's live messages)
    before_commit: std::sync::Mutex<Vec<Deferred>>,
    /// work run (awaited, in order) right after a successful commit, before the answer goes out:
    /// what the client must find on its next request, written without holding the request's
    /// connections (a second database's row)
    on_commit: std::sync::Mutex<Vec<Deferred>>,
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

/// The connection of a request's transaction on another database ([`RequestTx::conn_on`]).
pub struct OtherConn {
    guard: tokio::sync::OwnedMutexGuard<Option<Transaction<'static, Postgres>>>,
    fresh: bool,
}

impl OtherConn {
    /// Whether this transaction was begun by this call: nothing of the request is in it yet, so a
    /// failed mutation can [`discard`](Self::discard) it whole instead of working in a savepoint
    /// (two round trips fewer: no SAVEPOINT, no RELEASE).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Rolls this database's transaction back and forgets it (the request's next use of the
    /// database begins a new one). For a mutation that failed in a [fresh](Self::is_fresh) one.
    pub async fn discard(mut self) {
        if let Some(tx) = self.guard.take() {
            if let Err(e) = tx.rollback().await {
                tracing::warn!(error = %e, "rolling back a request's transaction on another database");
            }
        }
    }
}

impl std::ops::Deref for OtherConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.guard.as_ref().expect("transaction begun")
    }
}
impl std::ops::DerefMut for OtherConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.guard.as_mut().expect("transaction begun")
    }
}

impl RequestTx {
    pub fn new(pool: PgPool) -> Self {
        RequestTx(Arc::new(Inner {
            pool,
            tx: Mutex::new(None),
            others: Default::default(),
            after_commit: Default::default(),
            before_commit: Default::default(),
            on_commit: Default::default(),
        }))
    }

    fn slot(&self, name: &str) -> Option<Slot> {
        let others = self.0.others.lock().unwrap_or_else(|e| e.into_inner());
        others.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone())
    }

    /// Runs `work` when this request's transaction is about to commit — after its last statement,
    /// before COMMIT, so while its row locks are held: two requests that lock the same row run
    /// theirs in the order they commit. Never for a rollback (a dry run, a 5xx). If the commit
    /// then fails, the work has happened for writes that did not (logged): use it only where
    /// order matters more than that (a chat's live messages; docs/api/chat.md).
    pub fn before_commit(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.before_commit.lock().unwrap_or_else(|e| e.into_inner()).push(Box::pin(work));
    }

    /// Runs `work` right after this request's transaction commits, awaited before the answer is
    /// sent (so the client's next request sees what it wrote), with the request's connections
    /// already returned: for a write on another database that must not wait for a connection
    /// while this request holds one (two requests doing that the other way round would wait for
    /// each other's pools). Never for a rollback; its failure is logged, the commit stands.
    pub fn on_commit(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.on_commit.lock().unwrap_or_else(|e| e.into_inner()).push(Box::pin(work));
    }

    /// The connection of this request's transaction on another database, `name` (a shard),
    /// beginning it on `pool` on first use. It ends with the request's: committed first (so a
    /// lock the main transaction holds, an advisory lock, is released only after these writes
    /// are visible), rolled back on a dry run or a 5xx. There is no two-phase commit: a request
    /// that writes on two databases must keep its main transaction free of writes that need the
    /// other one's (the chat service writes a message's effects on its shard, in one place).
    pub async fn conn_on(&self, name: &str, pool: &PgPool) -> Result<OtherConn, sqlx::Error> {
        let slot = match self.slot(name) {
            Some(s) => s,
            None => {
                let mut others = self.0.others.lock().unwrap_or_else(|e| e.into_inner());
                match others.iter().find(|(n, _)| n == name) {
                    Some((_, s)) => s.clone(),
                    None => {
                        let s: Slot = Arc::default();
                        others.push((name.to_string(), s.clone()));
                        s
                    }
                }
            }
        };
        let mut guard = slot.lock_owned().await;
        let fresh = guard.is_none();
        if fresh {
            *guard = Some(pool.begin().await?);
        }
        Ok(OtherConn { guard, fresh })
    }

    /// The transaction on `name` if this request has begun it.
    pub async fn conn_on_if_begun(&self, name: &str) -> Option<OtherConn> {
        let guard = self.slot(name)?.lock_owned().await;
        guard.is_some().then_some(OtherConn { guard, fresh: false })
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

    /// The transaction's connection if this request has begun it (it wrote, or read for a
    /// write): reads after a write go through it to see that write; other reads can use the pool.
    pub async fn conn_if_begun(&self) -> Option<TxConn<'_>> {
        let guard = self.0.tx.lock().await;
        guard.is_some().then_some(TxConn(guard))
    }

    /// Ends the transaction: commits (then starts the [`after_commit`](Self::after_commit) work)
    /// or rolls back. [`transaction_per_request`] calls it for HTTP requests; call it yourself for
    /// work outside one (an operation over a WebSocket).
    pub async fn complete(&self, commit: bool) -> Result<(), sqlx::Error> {
        let before = std::mem::take(&mut *self.0.before_commit.lock().unwrap_or_else(|e| e.into_inner()));
        if commit {
            for work in before {
                work.await;
            }
        }
        let others = std::mem::take(&mut *self.0.others.lock().unwrap_or_else(|e| e.into_inner()));
        let mut commit_main = commit;
        let mut failed = None;
        for (name, slot) in others {
            let finished = match slot.lock().await.take() {
                Some(tx) if commit_main => tx.commit().await,
                Some(tx) => tx.rollback().await,
                None => Ok(()),
            };
            if let Err(e) = finished {
                tracing::error!(database = %name, error = %e, "ending a request's transaction on another database");
                // the rest, and the main one, are rolled back: nothing of the request is kept
                // that the failed commit's writes belonged with (what committed before stays)
                commit_main = false;
                failed.get_or_insert(e);
            }
        }
        let finished = match self.0.tx.lock().await.take() {
            Some(tx) if commit_main => tx.commit().await,
            Some(tx) => tx.rollback().await,
            None => Ok(()),
        };
        let finished = match failed {
            Some(e) => Err(e),
            None => finished,
        };
        if commit && finished.is_err() {
            tracing::error!(
                "a request's commit failed after its before-commit work ran (a live message may have announced a write that is not there)"
            );
        }
        let inline = std::mem::take(&mut *self.0.on_commit.lock().unwrap_or_else(|e| e.into_inner()));
        if commit && finished.is_ok() {
            for work in inline {
                work.await;
            }
        }
        let deferred = std::mem::take(&mut *self.0.after_commit.lock().unwrap_or_else(|e| e.into_inner()));
        if commit && finished.is_ok() {
            for work in deferred {
                tokio::spawn(work);
            }
        }
        finished
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

/// What [`transaction_per_request`] needs: the pool, and the key that verifies dry runs.
#[derive(Clone)]
pub struct TxState {
    pub pool: PgPool,
    pub dry_run_key: Option<DryRunKey>,
}

impl TxState {
    pub fn new(pool: PgPool, dry_run_key: Option<DryRunKey>) -> TxState {
        TxState { pool, dry_run_key }
    }
}

/// Middleware:
/// `Router::layer(axum::middleware::from_fn_with_state(TxState::new(pool, key), transaction_per_request))`.
pub async fn transaction_per_request(State(state): State<TxState>, mut req: Request, next: Next) -> Response {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let target = match req.extensions().get::<crate::nest::ClientUrl>() {
        Some(sent) => sent.0.clone(),
        None => req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |pq| pq.as_str().to_string()),
    };
    let dry = match DryRun::verify(state.dry_run_key.as_ref(), req.method(), &target, req.headers(), now) {
        Ok(dry) => dry,
        Err(why) => {
            metrics::counter!("dry_run_rejected_total", "reason" => why.as_str()).increment(1);
            tracing::warn!(reason = why.as_str(), method = %req.method(), path = %req.uri().path(), "refused a request with an invalid dry-run header");
            let body =
                serde_json::json!({ "statusCode": 400, "message": format!("invalid dry-run header: {why}"), "error": "Bad Request" });
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let tx = RequestTx::new(state.pool);
    req.extensions_mut().insert(tx.clone());
    req.extensions_mut().insert(dry);
    let res = next.run(req).await;
    let commit = !dry.0 && !res.status().is_server_error();
    if dry.0 {
        metrics::counter!("dry_run_requests_total").increment(1);
    }
    match tx.complete(commit).await {
        Ok(()) => res,
        Err(e) => {
            // the client must not believe a write happened when the commit failed
            tracing::error!(error = %e, "finishing the request transaction failed");
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(serde_json::json!({ "statusCode": 500, "message": "Internal server error" })))
                .into_response()
        }
    }
}
