//! The shared comparison store: the `strangler.shadow_comparisons` table in Postgres, for when
//! several proxies shadow the same routes and one report should cover them all.
//!
//! Same contract as the JSONL store ([`super::jsonl`]): the tee offers records on a bounded
//! channel ([`super::offer`], a full channel drops and counts `store_full`), and one writer task
//! drains it. The writer batches rows (up to [`PgWriter::batch_rows`] or
//! [`PgWriter::linger`] after the first, one `INSERT … SELECT FROM UNNEST` per batch), keeps one
//! connection and reconnects with exponential backoff after an error, counting every failure in
//! `strangler_shadow_store_errors_total{op}`. While it waits for the database it holds one batch;
//! further records wait in the channel, and once that is full they are dropped and counted: the
//! request path never waits for Postgres. On shutdown it writes what is queued, for at most
//! [`PgWriter::flush_timeout`]. At most once per [`PgWriter::trim_every`] it deletes the oldest rows beyond
//! [`PgWriter::max_rows`] (over the whole table: rows of proxies that are gone age out too).
//!
//! Each row keeps the redacted [`Record`] whole as `jsonb`, so `strangler report` and `strangler
//! corpus` read exactly what they read from JSONL files; the other columns are for queries.
//! The schema is `migrations/strangler/0001_shadow_store.sql` (`scripts/migrate`).

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{Filter, Sink};
use crate::metrics as m;
use crate::shadow::record::Record;

/// The table the migration creates.
pub const TABLE: &str = "strangler.shadow_comparisons";

/// A limit on each statement and on connecting, so a hung database is an error like any other.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows read per query by the readers (keyset pagination on `id`).
const READ_PAGE: i64 = 2_000;

/// Where the table is: connection options (the URL) and the table's qualified name.
#[derive(Clone)]
pub struct Database {
    pub options: PgConnectOptions,
    /// `schema.table`; [`TABLE`] except in tests.
    pub table: String,
}

impl std::fmt::Debug for Database {
    /// Never the URL: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("host", &self.options.get_host()).field("table", &self.table).finish()
    }
}

impl Database {
    /// Parses a `postgres://` URL. The error never repeats the URL.
    pub fn from_url(url: &str) -> anyhow::Result<Database> {
        let options = PgConnectOptions::from_str(url.trim())
            .map_err(|e| anyhow::anyhow!("not a Postgres URL ({})", describe_url_error(&e)))?
            .application_name("strangler shadow store");
        Ok(Database { options, table: TABLE.to_string() })
    }

    /// The URL from an environment variable, named in every error.
    pub fn from_env(var: &str) -> anyhow::Result<Database> {
        match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => Database::from_url(&url).map_err(|e| anyhow::anyhow!("`{var}`: {e}")),
            _ => anyhow::bail!("the environment variable `{var}` (the shadow store's database URL) is empty or unset"),
        }
    }

    pub async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        match tokio::time::timeout(STATEMENT_TIMEOUT, self.options.connect()).await {
            Ok(r) => r,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }
}

fn describe_url_error(e: &sqlx::Error) -> String {
    match e {
        // url::ParseError and sqlx's own configuration errors name the problem, not the URL.
        sqlx::Error::Configuration(inner) => inner.to_string(),
        _ => "unreadable".into(),
    }
}

/// The default `proxy` column: the host name (`HOSTNAME`, else the kernel's), else `unknown`.
pub fn default_proxy_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Postgres text cannot hold NUL, not even escaped in `jsonb`; a record must never fail its
/// whole batch over one odd request body.
fn no_nul(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

/// The record as `jsonb` text.
fn record_json(r: &Record) -> Option<String> {
    let text = serde_json::to_string(r).ok()?;
    if !text.contains("\\u0000") {
        return Some(text);
    }
    fn clean(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = no_nul(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(clean),
            serde_json::Value::Object(o) => {
                *o = std::mem::take(o)
                    .into_iter()
                    .map(|(k, mut v)| {
                        clean(&mut v);
                        (no_nul(&k), v)
                    })
                    .collect()
            }
            _ => {}
        }
    }
    let mut v = serde_json::to_value(r).ok()?;
    clean(&mut v);
    serde_json::to_string(&v).ok()
}

/// Whether an error is about the connection (reconnect and retry the batch) rather than the
/// statement (retrying would fail the same way).
fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            // Class 08: connection exceptions; 57P01..57P03: the server is shutting down or
            // starting; 53300: too many connections.
            let code = db.code().unwrap_or_default();
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }
        _ => true,
    }
}

pub struct PgWriter {
    pub db: Database,
    /// This proxy's name in the `proxy` column.
    pub proxy: String,
    /// Rows kept over the whole table.
    pub max_rows: u64,
    pub batch_rows: usize,
    /// How long a batch waits for more rows after its first.
    pub linger: Duration,
    pub trim_every: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a stopping writer keeps trying to write what is queued.
    pub flush_timeout: Duration,
}

impl Sink for PgWriter {
    fn run(self: Box<Self>, rx: mpsc::Receiver<Record>, stop: oneshot::Receiver<()>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin((*self).write(rx, stop))
    }
}

impl PgWriter {
    pub fn new(db: Database, proxy: String, max_rows: u64) -> PgWriter {
        PgWriter {
            db,
            proxy: no_nul(&proxy),
            max_rows,
            batch_rows: 500,
            linger: Duration::from_millis(200),
            trim_every: Duration::from_secs(60),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(5),
        }
    }

    /// Writes records until every sender is gone or `stop` fires; on stop, what is already
    /// queued is still written (for at most `flush_timeout`).
    pub async fn write(self, mut rx: mpsc::Receiver<Record>, mut stop: oneshot::Receiver<()>) {
        info!(proxy = %self.proxy, table = %self.db.table, "shadow store: postgres");
        let mut conn: Option<PgConnection> = None;
        let mut batch: Vec<Record> = Vec::with_capacity(self.batch_rows);
        // No more records will arrive (every sender gone, or stopping and the queue drained).
        let mut closed = false;
        let mut flush_deadline: Option<Instant> = None;
        let mut backoff = self.min_backoff;
        let mut next_trim = Instant::now();
        loop {
            // Gather: wait as long as it takes for a first record, then `linger` for more.
            let mut linger_until = (!batch.is_empty()).then(|| tokio::time::Instant::now() + self.linger);
            while !closed && batch.len() < self.batch_rows {
                let linger = async {
                    match linger_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(r) => {
                            batch.push(r);
                            linger_until.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                        }
                        None => closed = true,
                    },
                    _ = &mut stop, if flush_deadline.is_none() => {
                        flush_deadline = Some(Instant::now() + self.flush_timeout);
                        rx.close();
                    }
                    _ = linger => break,
                }
            }
            if batch.is_empty() {
                if closed {
                    break;
                }
                continue;
            }
            match self.insert(&mut conn, &batch).await {
                Ok(()) => {
                    batch.clear();
                    backoff = self.min_backoff;
                    if flush_deadline.is_none() && Instant::now() >= next_trim {
                        self.trim(&mut conn).await;
                        next_trim = Instant::now() + self.trim_every;
                    }
                }
                Err((op, e)) if op != "connect" && !is_connection_error(&e) => {
                    metrics::counter!(m::SHADOW_STORE_ERRORS_TOTAL, "op" => op).increment(1);
                    let hint = match &e {
                        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                            " (is migrations/strangler applied? run scripts/migrate)"
                        }
                        _ => "",
                    };
                    warn!(error = %e, rows = batch.len(), "shadow store: insert failed, rows dropped{hint}");
                    lost(&batch);
                    batch.clear();
                }
                Err((op, e)) => {
                    metrics::counter!(m::SHADOW_STORE_ERRORS_TOTAL, "op" => op).increment(1);
                    conn = None;
                    let now = Instant::now();
                    if flush_deadline.is_some_and(|d| now >= d) {
                        warn!(error = %e, "shadow store: database unavailable at shutdown, queued rows dropped");
                        lost(&batch);
                        while let Ok(r) = rx.try_recv() {
                            lost(std::slice::from_ref(&r));
                        }
                        break;
                    }
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "shadow store: database unavailable; will retry");
                    let wait = flush_deadline.map_or(backoff, |d| backoff.min(d.saturating_duration_since(now)));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut stop, if flush_deadline.is_none() => {
                            flush_deadline = Some(Instant::now() + self.flush_timeout);
                            rx.close();
                        }
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    }

    /// One statement for the whole batch; ids follow the batch's order.
    async fn insert(&self, conn: &mut Option<PgConnection>, batch: &[Record]) -> Result<(), (&'static str, sqlx::Error)> {
        if conn.is_none() {
            *conn = Some(self.db.connect().await.map_err(|e| ("connect", e))?);
        }
        let Some(c) = conn.as_mut() else { return Ok(()) };
        let n = batch.len();
        let (mut ms, mut routes, mut endpoints, mut outcomes, mut legacy, mut candidate, mut records) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for r in batch {
            let Some(json) = record_json(r) else { continue };
            ms.push(i64::try_from(r.ts_unix_ms).unwrap_or(i64::MAX));
            routes.push(no_nul(&r.route));
            endpoints.push(no_nul(&r.endpoint));
            outcomes.push(r.outcome.as_str());
            legacy.push(r.legacy_status.map(i32::from));
            candidate.push(r.candidate_status.map(i32::from));
            records.push(json);
        }
        let sql = format!(
            "INSERT INTO {} (recorded_at, proxy, route, endpoint, outcome, legacy_status, candidate_status, record)
             SELECT to_timestamp(t.ms / 1000.0), $1, t.route, t.endpoint, t.outcome, t.legacy, t.candidate, t.record::jsonb
             FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int4[], $8::text[])
                  WITH ORDINALITY AS t(ms, route, endpoint, outcome, legacy, candidate, record, n)
             ORDER BY t.n",
            self.db.table
        );
        let q = sqlx::query(&sql)
            .bind(&self.proxy)
            .bind(ms)
            .bind(routes)
            .bind(endpoints)
            .bind(outcomes)
            .bind(legacy)
            .bind(candidate)
            .bind(records)
            .execute(&mut *c);
        match tokio::time::timeout(STATEMENT_TIMEOUT, q).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(("insert", e)),
            Err(_) => Err(("insert", sqlx::Error::PoolTimedOut)),
        }
    }

    /// Deletes the oldest rows beyond `max_rows`. A failure is counted and left for next time.
    async fn trim(&self, conn: &mut Option<PgConnection>) {
        let Some(c) = conn else { return };
        let sql = format!("DELETE FROM {t} WHERE id <= (SELECT id FROM {t} ORDER BY id DESC OFFSET $1 LIMIT 1)", t = self.db.table);
        let q = sqlx::query(&sql).bind(i64::try_from(self.max_rows).unwrap_or(i64::MAX)).execute(&mut *c);
        let result = match tokio::time::timeout(STATEMENT_TIMEOUT * 6, q).await {
            Ok(r) => r,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        };
        match result {
            Ok(done) if done.rows_affected() > 0 => {
                info!(deleted = done.rows_affected(), kept = self.max_rows, "shadow store: trimmed the oldest rows");
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!(m::SHADOW_STORE_ERRORS_TOTAL, "op" => "trim").increment(1);
                warn!(error = %e, "shadow store: trimming failed; will retry");
                if is_connection_error(&e) {
                    *conn = None;
                }
            }
        }
    }
}

/// Records given up on, counted per route.
fn lost(batch: &[Record]) {
    for r in batch {
        metrics::counter!(m::SHADOW_DROPPED_TOTAL, "route" => r.route.clone(), "reason" => "store_error").increment(1);
    }
}

/// Reads every matching record in `id` order. Rows whose `record` does not parse are counted
/// in the second number and skipped.
pub async fn for_each(db: &Database, filter: &Filter, mut f: impl FnMut(Record)) -> anyhow::Result<(usize, usize)> {
    let mut conn = db.connect().await.map_err(|e| anyhow::anyhow!("connecting to the shadow store database: {e}"))?;
    let sql = format!(
        "SELECT id, record::text FROM {} WHERE id > $1 AND ($2::timestamptz IS NULL OR recorded_at >= $2)
           AND ($3::text IS NULL OR route = $3) ORDER BY id LIMIT $4",
        db.table
    );
    let (mut read, mut bad, mut after) = (0, 0, 0i64);
    loop {
        let rows: Vec<(i64, String)> = sqlx::query_as(&sql)
            .bind(after)
            .bind(filter.since)
            .bind(filter.route.as_deref())
            .bind(READ_PAGE)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", db.table))?;
        let Some((last, _)) = rows.last() else { break };
        after = *last;
        for (_, text) in &rows {
            match serde_json::from_str::<Record>(text) {
                Ok(r) => {
                    f(r);
                    read += 1;
                }
                Err(_) => bad += 1,
            }
        }
    }
    let _ = conn.close().await;
    Ok((read, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_never_reaches_postgres_and_urls_never_reach_errors() {
        let r = Record {
            request_headers: vec![("x-\0".into(), "v\0".into())],
            request_body: Some(serde_json::json!({ "k\u{0}": ["\u{0}", "\\u0000"] })),
            ..Record::sample("a\0b", "GET", "/x")
        };
        let text = record_json(&r).unwrap();
        let back: Record = serde_json::from_str(&text).unwrap();
        assert!(!format!("{back:?}").contains("\\0"), "{back:?}");
        assert_eq!(back.route, "a\u{fffd}b");
        assert_eq!(back.request_body.unwrap()["k\u{fffd}"][1], "\\u0000", "a literal backslash-u stays");

        let err = Database::from_url("postgres://user:hunter2@db.example:notaport/x").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = Database::from_env("STRANGLER_TEST_UNSET_URL_VAR").unwrap_err().to_string();
        assert!(err.contains("`STRANGLER_TEST_UNSET_URL_VAR`"), "{err}");
        let db = Database::from_url("postgres://user:hunter2@db.example:5432/x").unwrap();
        assert!(!format!("{db:?}").contains("hunter2"));
    }
}
