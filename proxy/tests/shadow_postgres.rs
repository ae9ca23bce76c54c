//! The shared shadow store in Postgres (`[shadow] store = "postgres"`), against the real
//! database at DATABASE_URL: two proxies write one table and one report covers both; the writer
//! batches, keeps order, flushes on stop, trims, reconnects, and never makes the tee wait.
//!
//! Writer tests use a schema of their own (the migration's SQL with `strangler.` replaced);
//! the proxy tests use the real `strangler` schema, applied here as scripts/migrate does, and
//! keep to their own route names and proxy ids.

mod common;

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::ConnectOptions;
use strangler::cli::stored::StoredRecords;
use strangler::shadow::record::{Outcome, Record};
use strangler::shadow::store::offer;
use strangler::shadow::store::postgres::{self as pgstore, Database, PgWriter};
use strangler::shadow::store::Filter;
use tokio::sync::{mpsc, oneshot};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/strangler");
const MIGRATION: &str = include_str!("../../migrations/strangler/0001_shadow_store.sql");

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with scripts/test, or `scripts/stack up && source .run/stack.env`")
}

async fn connect(url: &str) -> PgConnection {
    PgConnectOptions::from_str(url).unwrap().connect().await.expect("Postgres at DATABASE_URL answers")
}

/// Applies migrations/strangler as scripts/migrate does (the same `_sqlx_migrations` rows and
/// checksums), so it is a no-op where scripts/migrate already ran and scripts/migrate is one
/// after this.
async fn migrate_strangler_schema(url: &str) {
    let mut conn = PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", "strangler"), ("client_min_messages", "warning")])
        .connect()
        .await
        .expect("Postgres at DATABASE_URL answers");
    // Tests run in parallel processes: CREATE SCHEMA IF NOT EXISTS can still race.
    sqlx::query("SELECT pg_advisory_lock(736617)").execute(&mut conn).await.unwrap();
    sqlx::query("CREATE SCHEMA IF NOT EXISTS strangler").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT pg_advisory_unlock(736617)").execute(&mut conn).await.unwrap();
    let migrator = sqlx::migrate::Migrator::new(std::path::Path::new(MIGRATIONS)).await.unwrap();
    migrator.run(&mut conn).await.expect("applying migrations/strangler");
}

/// A table of its own: the migration in a fresh schema.
async fn fresh_table(url: &str) -> (Database, String) {
    let schema = format!("shadow_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = connect(url).await;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
    sqlx::raw_sql(&MIGRATION.replace("strangler.", &format!("{schema}."))).execute(&mut conn).await.unwrap();
    let mut db = Database::from_url(url).unwrap();
    db.table = format!("{schema}.shadow_comparisons");
    (db, schema)
}

async fn drop_schema(url: &str, schema: &str) {
    let mut conn = connect(url).await;
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await;
}

fn record(route: &str, i: usize) -> Record {
    Record {
        ts_unix_ms: 1_700_000_000_000 + i as u64,
        route: route.into(),
        endpoint: "GET /items/{id}".into(),
        request_id: format!("r{i}"),
        method: "GET".into(),
        uri: format!("/items/{i}"),
        primary: "legacy".into(),
        outcome: if i % 2 == 0 { Outcome::Match } else { Outcome::Mismatch },
        legacy_status: Some(200),
        candidate_status: if i % 3 == 0 { None } else { Some(500) },
        differences: vec![],
        noise: vec![],
        error: None,
        request_headers: vec![("accept".into(), "*/*".into())],
        request_body: None,
        answer_secrets: Default::default(),
        answer_ids: Default::default(),
    }
}

/// The process's metrics recorder (one per process; nextest runs each test in its own).
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| strangler::metrics::install().unwrap())
}

/// A counter's value in the Prometheus text, 0 when absent.
fn counter(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&mut connect(url).await).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_batches_keeps_order_and_flushes_on_stop() {
    let url = database_url();
    let (db, schema) = fresh_table(&url).await;
    let (tx, rx) = mpsc::channel(2000);
    for i in 0..1234 {
        assert!(offer(&tx, record("items", i)));
    }
    // Stopped at once: everything queued is still written, in order, in batches of 500.
    let (stop_tx, stop_rx) = oneshot::channel();
    stop_tx.send(()).unwrap();
    PgWriter::new(db.clone(), "proxy-a".into(), 1_000_000).write(rx, stop_rx).await;

    let mut read = Vec::new();
    let (n, bad) = pgstore::for_each(&db, &Filter::default(), |r| read.push(r.request_id)).await.unwrap();
    assert_eq!((n, bad), (1234, 0));
    assert_eq!(read, (0..1234).map(|i| format!("r{i}")).collect::<Vec<_>>());
    let t = &db.table;
    assert_eq!(count(&url, &format!("SELECT count(DISTINCT xmin::text) FROM {t}")).await, 3, "one INSERT per batch of 500");
    // The columns are copies of the record.
    let row: (String, String, String, String, Option<i32>, Option<i32>, i64) = sqlx::query_as(&format!(
        "SELECT proxy, route, endpoint, outcome, legacy_status, candidate_status, (extract(epoch FROM recorded_at) * 1000)::int8
         FROM {t} WHERE record->>'request_id' = 'r3'"
    ))
    .fetch_one(&mut connect(&url).await)
    .await
    .unwrap();
    assert_eq!(row, ("proxy-a".into(), "items".into(), "GET /items/{id}".into(), "mismatch".into(), Some(200), None, 1_700_000_000_003));

    // The readers feed the same summary as the JSONL store.
    let (summary, n, _) = StoredRecords::Postgres(Box::new(db.clone())).summarize(&Filter::default()).await.unwrap();
    assert_eq!(n, 1234);
    let items = &summary.routes["items"];
    assert_eq!((items.compared, items.matches, items.mismatches), (1234, 617, 617));
    let since = Some(sqlx::types::chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + 1000).unwrap());
    let (summary, n, _) = StoredRecords::Postgres(Box::new(db.clone())).summarize(&Filter { since, route: None }).await.unwrap();
    assert_eq!((n, summary.routes["items"].compared), (234, 234));
    let lines = StoredRecords::Postgres(Box::new(db.clone())).corpus("items", &[]).await.unwrap();
    assert_eq!(lines.len(), 1234);
    assert_eq!(serde_json::from_str::<Value>(&lines[7]).unwrap()["uri"], "/items/7");
    assert!(StoredRecords::Postgres(Box::new(db.clone())).corpus("other", &[]).await.unwrap().is_empty());
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_rows_and_trims_at_most_once_a_minute() {
    let url = database_url();
    let (db, schema) = fresh_table(&url).await;
    let t = db.table.clone();
    let (tx, rx) = mpsc::channel(100);
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut writer = PgWriter::new(db.clone(), "proxy-r".into(), 10);
    writer.linger = Duration::from_millis(100);
    let run = tokio::spawn(writer.write(rx, stop_rx));
    for i in 0..25 {
        offer(&tx, record("kept", i));
    }
    // The first write trims at once: the 10 newest rows stay.
    eventually("the trim", Duration::from_secs(10), || async {
        let left = count(&url, &format!("SELECT count(*) FROM {t}")).await;
        (left == 10).then_some(())
    })
    .await;
    let mut ids = Vec::new();
    pgstore::for_each(&db, &Filter::default(), |r| ids.push(r.request_id)).await.unwrap();
    assert_eq!(ids, (15..25).map(|i| format!("r{i}")).collect::<Vec<_>>());
    // Within the minute, later rows are not trimmed yet.
    for i in 25..30 {
        offer(&tx, record("kept", i));
    }
    drop(stop_tx);
    drop(tx);
    run.await.unwrap();
    assert_eq!(count(&url, &format!("SELECT count(*) FROM {t}")).await, 15);
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_drops_and_counts_instead_of_blocking() {
    let m = metrics();
    // Nobody listens on this port: the writer holds one row and keeps reconnecting.
    let (dead, _keep_it_dead) = dead_addr();
    let db = Database::from_url(&format!("postgres://postgres@{dead}/nowhere")).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut writer = PgWriter::new(db, "proxy-down".into(), 1_000_000);
    writer.batch_rows = 1;
    writer.min_backoff = Duration::from_millis(20);
    writer.flush_timeout = Duration::from_millis(300);
    let run = tokio::spawn(writer.write(rx, stop_rx));

    // offer never waits (a synchronous try_send): 200 offers against a stuck writer return
    let queued = (0..200).filter(|&i| offer(&tx, record("full", i))).count();
    assert!((4..=5).contains(&queued), "queued {queued}: the channel holds 4 and the writer one batch of 1");
    let text = eventually("connect errors to be counted", Duration::from_secs(10), || async {
        let text = m.render();
        (counter(&text, "strangler_shadow_store_errors_total{op=\"connect\"}") >= 2).then_some(text)
    })
    .await;
    assert_eq!(counter(&text, "strangler_shadow_dropped_total{route=\"full\",reason=\"store_full\"}"), 200 - queued as u64);

    // Stopping with the database still down gives up after flush_timeout and counts the loss.
    stop_tx.send(()).unwrap();
    // (a guard against hanging, not a measurement: the writer gives up after flush_timeout)
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("the writer never stopped").unwrap();
    let text = m.render();
    assert_eq!(counter(&text, "strangler_shadow_dropped_total{route=\"full\",reason=\"store_error\"}"), queued as u64, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_reconnects_after_losing_its_connection() {
    let m = metrics();
    let url = database_url();
    let (mut db, schema) = fresh_table(&url).await;
    let t = db.table.clone();
    let app = format!("strangler-test-{}", &schema[12..24]);
    db.options = db.options.application_name(&app);
    let (tx, rx) = mpsc::channel(100);
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut writer = PgWriter::new(db, "proxy-k".into(), 1_000_000);
    writer.linger = Duration::from_millis(10);
    writer.min_backoff = Duration::from_millis(20);
    let run = tokio::spawn(writer.write(rx, stop_rx));

    offer(&tx, record("re", 0));
    let sql = format!("SELECT count(*) FROM {t}");
    let rows = || count(&url, &sql);
    eventually("the first row", Duration::from_secs(10), || async { (rows().await == 1).then_some(()) }).await;
    let killed: i64 = sqlx::query_scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1")
        .bind(&app)
        .fetch_one(&mut connect(&url).await)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    offer(&tx, record("re", 1));
    eventually("the row after the reconnect", Duration::from_secs(10), || async { (rows().await == 2).then_some(()) }).await;
    assert!(counter(&m.render(), "strangler_shadow_store_errors_total{op=\"insert\"}") >= 1);
    stop_tx.send(()).unwrap();
    run.await.unwrap();
    drop_schema(&url, &schema).await;
}

fn strangler_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler")).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

async fn shadow_compared(proxy: &Proxy, route: &str, n: u64) {
    eventually(&format!("{n} comparisons on {route}"), Duration::from_secs(20), || async {
        let v: Value = serde_json::from_str(&proxy.admin_get("/shadow").await.ok()?.1).ok()?;
        (v["routes"][route]["compared"].as_u64().unwrap_or(0) >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_the_postgres_store_and_one_report_covers_both() {
    let url = database_url();
    migrate_strangler_schema(&url).await;
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let route = format!("pg_{}", &run[..12]);
    let (id_a, id_b) = (format!("test-{run}-a"), format!("test-{run}-b"));
    let body = |proxy_id: &str| {
        format!(
            "[shadow]\nstore = \"postgres\"\ndatabase_url_env = \"STRANGLER_TEST_SHADOW_DB\"\nproxy_id = \"{proxy_id}\"\n\n{}",
            Routes::new()
                .upstream("legacy", &legacy.url())
                .upstream("svc", &svc.url())
                .route(&route, "/pg", "svc", "shadow", "shadow = { noise_sample_percent = 0 }")
                .build()
        )
    };
    let env = [("STRANGLER_TEST_SHADOW_DB", url.as_str())];
    let a = Proxy::start_opts(&body(&id_a), Opts { env: &env, ..Opts::default() }).await;
    let mut b = Proxy::start_opts(&body(&id_b), Opts { env: &env, ..Opts::default() }).await;
    let c = reqwest::Client::new();
    for i in 0..3 {
        assert_eq!(c.get(a.url(&format!("/pg/a{i}"))).send().await.unwrap().headers()["x-served-by"], "legacy");
    }
    for i in 0..2 {
        assert_eq!(c.get(b.url(&format!("/pg/b{i}?token=hunter2"))).send().await.unwrap().headers()["x-served-by"], "legacy");
        // comparisons run concurrently off the request path: wait for each, so the store's
        // order is the order asserted below
        shadow_compared(&b, &route, i + 1).await;
    }
    shadow_compared(&a, &route, 3).await;
    // B stops right after comparing: its writer flushes on the way out.
    assert!(b.terminate().success(), "{}", b.logs());
    let per_proxy = format!("SELECT count(*) FROM strangler.shadow_comparisons WHERE route = '{route}' AND proxy = ");
    assert_eq!(count(&url, &format!("{per_proxy}'{id_b}'")).await, 2, "rows of the stopped proxy");
    eventually("proxy A's rows", Duration::from_secs(10), || async {
        (count(&url, &format!("{per_proxy}'{id_a}'")).await == 3).then_some(())
    })
    .await;

    // One report over both proxies, from the same code path as the JSONL store.
    let (code, out, err) =
        strangler_cli(&["report", "--database-url-env", "STRANGLER_TEST_SHADOW_DB", "--format", "json", "--min-parity", "0"], &env);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let r = &v["routes"][&route];
    assert_eq!((r["compared"].as_u64(), r["mismatches"].as_u64()), (Some(5), Some(5)), "{v}");
    assert_eq!(r["endpoints"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 5, "{v}");
    let (code, md, err) = strangler_cli(&["report", "--database-url", &url, "--min-parity", "0"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(md.contains(&format!("| `{route}` | 5 | 0.00% |")), "{md}");
    let (code, out, err) = strangler_cli(
        &["report", "--database-url-env", "STRANGLER_TEST_SHADOW_DB", "--format", "json", "--since", "2999-01-01T00:00:00Z"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["routes"].get(&route).is_none(), "{out}");

    // `strangler plan` from proxy A's admin API, with the parity of both proxies from the store:
    // A's own traffic, every proxy's comparisons (issue #15)
    let admin = format!("http://{}", a.admin);
    let (code, out, err) = strangler_cli(&["plan", "--admin", &admin, "--database-url-env", "STRANGLER_TEST_SHADOW_DB", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let r = v["routes"].as_array().unwrap().iter().find(|r| r["name"] == route.as_str()).unwrap();
    assert_eq!((r["parity"]["compared"].as_u64(), r["parity"]["mismatches"].as_u64()), (Some(5), Some(5)), "{r:#}");
    assert_eq!(r["traffic"]["since_start"]["legacy"], 3, "{r:#}");
    // without a proxy: the table and the store
    let (code, out, err) =
        strangler_cli(&["plan", "--config", a.config.to_str().unwrap(), "--database-url-env", "STRANGLER_TEST_SHADOW_DB"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no live traffic") && out.contains("parity 0.00% of 5 compared (5 mismatches"), "{out}");

    // The corpus: every request, redacted, in order per proxy.
    let (code, out, err) = strangler_cli(&["corpus", "--database-url-env", "STRANGLER_TEST_SHADOW_DB", "--route", &route], &env);
    assert_eq!(code, 0, "{err}");
    let uris: Vec<String> = out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["uri"].as_str().unwrap().to_string()).collect();
    let mut sorted = uris.clone();
    sorted.sort();
    assert_eq!(sorted, ["/pg/a0", "/pg/a1", "/pg/a2", "/pg/b0?token=[redacted]", "/pg/b1?token=[redacted]"], "{out}");
    assert!(!out.contains("hunter2"));
    assert!(uris.iter().position(|u| u == "/pg/b0?token=[redacted]") < uris.iter().position(|u| u == "/pg/b1?token=[redacted]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_database_changes_nothing_for_the_client() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("svc").await;
    let (dead_addr, _keep_it_dead) = dead_addr();
    let dead = format!("postgres://postgres@{dead_addr}/nowhere");
    let body = format!(
        "[shadow]\nstore = \"postgres\"\ndatabase_url_env = \"STRANGLER_TEST_SHADOW_DB\"\n\n{}",
        Routes::new()
            .upstream("legacy", &legacy.url())
            .upstream("svc", &svc.url())
            .route("down", "/down", "svc", "shadow", "shadow = { noise_sample_percent = 0 }")
            .build()
    );
    let mut proxy = Proxy::start_opts(&body, Opts { env: &[("STRANGLER_TEST_SHADOW_DB", &dead)], ..Opts::default() }).await;
    let c = reqwest::Client::new();
    for i in 0..5 {
        let started = Instant::now();
        let r = c.get(proxy.url(&format!("/down/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    shadow_compared(&proxy, "down", 5).await;
    eventually("store errors in /metrics", Duration::from_secs(10), || async {
        let text = proxy.admin_get("/metrics").await.ok()?.1;
        (counter(&text, "strangler_shadow_store_errors_total{op=\"connect\"}") >= 1).then_some(())
    })
    .await;
    proxy.wait_for_log_line(|l| l.contains("shadow store: database unavailable")).await;
    assert!(proxy.terminate().success(), "{}", proxy.logs());
}

#[test]
fn a_postgres_store_without_its_url_variable_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "{}[shadow]\nstore = \"postgres\"\ndatabase_url_env = \"STRANGLER_TEST_UNSET_DB_URL\"\n\n[upstreams.legacy]\nurl = \"http://127.0.0.1:9\"\n",
            header("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap(), Opts::default())
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("STRANGLER_TEST_UNSET_DB_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`STRANGLER_TEST_UNSET_DB_URL`") && err.contains("empty or unset"), "{err}");
}

#[test]
fn report_and_corpus_read_exactly_one_source() {
    let (code, _, err) = strangler_cli(&["report"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--store") && err.contains("--database-url-env") && err.contains("--database-url"), "{err}");
    let (code, _, err) = strangler_cli(&["corpus", "--route", "x", "--store", "/tmp", "--database-url", "postgres://h/db"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = strangler_cli(&["report", "--database-url-env", "STRANGLER_TEST_UNSET_DB_URL"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("`STRANGLER_TEST_UNSET_DB_URL`"), "{err}");
    let (code, _, err) = strangler_cli(&["report", "--database-url", "postgres://u:hunter2@h:port/db"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("not a Postgres URL") && !err.contains("hunter2"), "{err}");
    let (code, _, err) = strangler_cli(&["report", "--store", "/tmp", "--since", "yesterday"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("RFC 3339"), "{err}");
}
