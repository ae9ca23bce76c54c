//! The dry-run contract end to end: a client POSTs through the real strangler proxy to a route
//! in shadow mode with `writes = "dry-run"`. The monolith stand-in answers the client; the copy
//! reaches a service built on `bm_common::dryrun` with the dry-run header, runs its INSERT in
//! the request transaction against the real Postgres, and leaves no row behind. The proxy signs
//! the header with the secret the service verifies (a forged one is refused: tests/dryrun.rs).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

fn strangler_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug/strangler");
    assert!(bin.exists(), "{} is missing: build the workspace first (scripts/test does)", bin.display());
    bin
}

struct Proxy(Child);
impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowed_post_leaves_no_row_behind() {
    let pool = support::pool().await;
    let schema = format!("dryrun_proxy_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await.unwrap();
    let table = format!("{schema}.items");
    sqlx::query(&format!("CREATE TABLE {table} (id serial PRIMARY KEY, name text NOT NULL)")).execute(&pool).await.unwrap();

    // the monolith stand-in answers like the service would
    let legacy_hits = Arc::new(AtomicUsize::new(0));
    let hits = legacy_hits.clone();
    let legacy = serve(Router::new().route(
        "/items",
        post(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { (axum::http::StatusCode::CREATED, Json(json!({ "id": 1, "seen": 1, "dryRun": false }))) }
        }),
    ))
    .await;
    let service = serve(support::router(pool.clone(), table.clone())).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndefault_upstream = \"legacy\"\nthreads = 1\ngrace_period_secs = 0\nshutdown_timeout_secs = 1\n\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n\
             [upstreams.legacy]\nurl = \"{legacy}\"\n\n[upstreams.svc]\nurl = \"{service}\"\ndry_run = true\n\n\
             [[routes]]\nname = \"items\"\nmatch = {{ path_prefix = \"/items\" }}\ntarget = \"svc\"\nmode = \"shadow\"\n\
             shadow = {{ writes = \"dry-run\", noise_sample_percent = 0, ignore = [\"$.dryRun\"] }}\n"
        ),
    )
    .unwrap();
    let _proxy = Proxy(
        Command::new(strangler_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--bound-addrs-file")
            .arg(dir.path().join("bound.json"))
            .env("STRANGLER_LOG", "warn")
            .env("STRANGLER_DRY_RUN_SECRET", support::SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // ports 0 in the file: the proxy writes back the addresses it got
    let bound: serde_json::Value = loop {
        if let Some(v) = std::fs::read(dir.path().join("bound.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            break v;
        }
        assert!(Instant::now() < deadline, "strangler did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (port, admin) = (
        bound["listeners"][0].as_str().unwrap().rsplit(':').next().unwrap().to_string(),
        bound["admin"].as_str().unwrap().rsplit(':').next().unwrap().to_string(),
    );
    while http.get(format!("http://127.0.0.1:{admin}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "strangler did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let r = http.post(format!("http://127.0.0.1:{port}/items")).json(&json!({ "name": "shadowed" })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(legacy_hits.load(Ordering::SeqCst), 1, "the monolith answered the client");

    // wait until the proxy has compared the shadow answer: the service ran the request
    let summary = loop {
        let v: serde_json::Value = http.get(format!("http://127.0.0.1:{admin}/shadow")).send().await.unwrap().json().await.unwrap();
        if v["routes"]["items"]["compared"].as_u64() == Some(1) {
            break v;
        }
        assert!(Instant::now() < deadline, "no comparison recorded: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(summary["routes"]["items"]["matches"], 1, "the dry run answered like the monolith (it saw its own insert): {summary}");
    assert_eq!(count(&pool, &table).await, 0, "the shadowed POST left a row behind");

    // the same request without the dry-run header commits: the table and service are real
    let direct = http.post(format!("{service}/items")).json(&json!({ "name": "real" })).send().await.unwrap();
    assert_eq!(direct.status(), 201);
    assert_eq!(count(&pool, &table).await, 1, "a normal write commits");
}
