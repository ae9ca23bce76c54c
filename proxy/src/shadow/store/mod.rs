//! Where comparison records go: one interface, two back ends.
//!
//! The tee hands each [`Record`] to [`offer`], which puts it on a bounded channel without
//! waiting (a full channel drops and counts it: storage must never slow the proxy). One
//! [`Sink`] drains the channel as a Pingora background service ([`StoreService`]):
//! [`jsonl`] (rotating files in a folder, one per proxy, the default) or [`postgres`] (one table
//! for several proxies). Both keep the same redacted record, so `strangler report` and `strangler
//! corpus` read either the same way (`crate::cli::stored`).

pub mod jsonl;
pub mod postgres;

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use super::record::Record;
use crate::metrics as m;

/// A point in time for `--since`.
pub type Since = sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>;

/// Which records a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records made at or after this time.
    pub since: Option<Since>,
    pub route: Option<String>,
}

impl Filter {
    pub fn admits(&self, r: &Record) -> bool {
        self.since.is_none_or(|s| r.ts_unix_ms as i64 >= s.timestamp_millis()) && self.route.as_ref().is_none_or(|route| &r.route == route)
    }
}

/// Hands a record to the store writer without waiting: when the channel is full (the writer is
/// behind, or its database is down) the record is dropped and counted as `store_full`. Returns
/// whether it was queued.
pub fn offer(store: &mpsc::Sender<Record>, record: Record) -> bool {
    match store.try_send(record) {
        Ok(()) => true,
        Err(e) => {
            let record = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            metrics::counter!(m::SHADOW_DROPPED_TOTAL, "route" => record.route, "reason" => "store_full").increment(1);
            false
        }
    }
}

/// A back end's writer: drains `rx` until every sender is gone or `stop` fires, and on stop
/// still writes what is queued (within its own bound).
pub trait Sink: Send + 'static {
    fn run(self: Box<Self>, rx: mpsc::Receiver<Record>, stop: oneshot::Receiver<()>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The writer as a Pingora background service: it owns the receiving end and stops, after
/// writing what is queued, when the server shuts down.
pub struct StoreService {
    /// taken once, when the service starts
    writer: std::sync::Mutex<Option<Pending>>,
}

/// A sink and the records it will drain.
type Pending = (Box<dyn Sink>, mpsc::Receiver<Record>);

impl StoreService {
    pub fn new(sink: Box<dyn Sink>, rx: mpsc::Receiver<Record>) -> StoreService {
        StoreService { writer: std::sync::Mutex::new(Some((sink, rx))) }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for StoreService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some((sink, rx)) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let run = tokio::spawn(sink.run(rx, stop_rx));
        let _ = shutdown.changed().await;
        let _ = stop_tx.send(());
        let _ = run.await;
    }
}
