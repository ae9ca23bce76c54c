//! The per-request transaction against the real Postgres of scripts/stack (DATABASE_URL):
//! normal writes commit, 5xx answers roll back, signed dry runs answer normally and leave no row,
//! and a dry-run header that does not verify runs nothing at all.

use std::net::SocketAddr;

use axum::Router;
use serde_json::{json, Value};
use sqlx::PgPool;

mod support;
use support::{pool, router, signed, table};

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn commits_normal_writes_and_rolls_back_dry_runs_and_5xx() {
    let pool = pool().await;
    let table = table(&pool).await;
    let addr = serve(router(pool.clone(), table.clone())).await;
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/items");

    let r = c.post(&url).json(&json!({ "name": "real" })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["dryRun"], false);
    assert_eq!(count(&pool, &table).await, 1);

    let r = c
        .post(&url)
        .header("x-request-id", "req-1")
        .header("x-strangler-dry-run", signed("POST", "/items", "req-1", 0))
        .json(&json!({ "name": "shadow" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a dry run answers as the real request would");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["seen"], 1, "the handler saw its own write");
    assert_eq!(body["dryRun"], true);
    assert_eq!(count(&pool, &table).await, 1, "the dry run left no row behind");

    assert_eq!(c.post(format!("http://{addr}/fail")).send().await.unwrap().status(), 500);
    assert_eq!(count(&pool, &table).await, 1, "a 5xx answer rolls back");

    assert_eq!(c.post(format!("http://{addr}/reject")).send().await.unwrap().status(), 401);
    assert_eq!(count(&pool, &table).await, 2, "a 4xx answer keeps what the handler wrote");

    assert_eq!(c.post(&url).json(&json!({ "name": "plain" })).send().await.unwrap().status(), 201);
    assert_eq!(count(&pool, &table).await, 3);
}

/// See: issue 10, "The dry-run header is trusted from anyone who can reach a service". A header
/// that does not verify makes the request run neither as a dry run (skipping side effects and
/// limits) nor for real (a second write): 400, no row.
#[tokio::test]
async fn a_dry_run_header_that_does_not_verify_runs_nothing() {
    let pool = pool().await;
    let table = table(&pool).await;
    let addr = serve(router(pool.clone(), table.clone())).await;
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/items");
    let forged = [
        ("1".to_string(), "req-1"),
        ("true".to_string(), "req-1"),
        (signed("POST", "/items", "req-1", 120), "req-1"), // stale
        (signed("POST", "/other", "req-1", 0), "req-1"),   // another target
        (signed("DELETE", "/items", "req-1", 0), "req-1"), // another method
        (signed("POST", "/items", "req-2", 0), "req-1"),   // another request
    ];
    for (value, id) in forged {
        let r = c
            .post(&url)
            .header("x-request-id", id)
            .header("x-strangler-dry-run", &value)
            .json(&json!({ "name": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{value}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["statusCode"], 400);
        assert!(body["message"].as_str().unwrap().starts_with("invalid dry-run header"), "{body}");
    }
    assert_eq!(count(&pool, &table).await, 0, "a refused dry run wrote nothing");

    // a service without the secret cannot verify any dry run, so it refuses them all
    let keyless = Router::new().route("/items", axum::routing::post(|| async { "ran" })).layer(axum::middleware::from_fn_with_state(
        bm_common::dryrun::TxState::new(pool.clone(), None),
        bm_common::dryrun::transaction_per_request,
    ));
    let addr = serve(keyless).await;
    let r = c
        .post(format!("http://{addr}/items"))
        .header("x-request-id", "req-1")
        .header("x-strangler-dry-run", signed("POST", "/items", "req-1", 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn requests_that_never_touch_the_database_take_no_connection() {
    let pool = pool().await;
    let table = table(&pool).await;
    let small = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&std::env::var("DATABASE_URL").unwrap()).await.unwrap();
    let _held = small.acquire().await.unwrap(); // the only connection is taken
    let addr = serve(router(small.clone(), table)).await;
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), reqwest::get(format!("http://{addr}/health"))).await;
    assert_eq!(r.expect("a request without database work must not wait for a connection").unwrap().status(), 200);
}

#[tokio::test]
async fn after_commit_work_runs_only_when_the_request_committed() {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use bm_common::dryrun::{transaction_per_request, RequestTx};
    use tokio::sync::mpsc;

    let pool = pool().await;
    let table = table(&pool).await;
    let (tx_done, mut done) = mpsc::unbounded_channel::<String>();
    #[derive(Clone)]
    struct S(String, mpsc::UnboundedSender<String>);
    async fn write(State(S(table, done)): State<S>, tx: RequestTx, body: String) -> StatusCode {
        let mut conn = tx.conn().await.unwrap();
        sqlx::query(&format!("INSERT INTO {table} (name) VALUES ($1)")).bind(&body).execute(&mut *conn).await.unwrap();
        let name = body.clone();
        tx.after_commit(async move {
            let _ = done.send(name);
        });
        if body == "fails" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::CREATED
        }
    }
    let app = Router::new()
        .route("/w", post(write))
        .with_state(S(table.clone(), tx_done))
        .layer(axum::middleware::from_fn_with_state(support::tx_state(pool.clone()), transaction_per_request));
    let addr = serve(app).await;
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/w");
    let dry = c.post(&url).body("dry").header("x-request-id", "d").header("x-strangler-dry-run", signed("POST", "/w", "d", 0));
    assert_eq!(dry.send().await.unwrap().status(), 201);
    assert_eq!(c.post(&url).body("fails").send().await.unwrap().status(), 500);
    assert_eq!(c.post(&url).body("kept").send().await.unwrap().status(), 201);
    // the committed request's work runs, and it runs after its row is visible to others
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), done.recv()).await.unwrap().unwrap();
    assert_eq!(first, "kept", "neither the dry run nor the 5xx ran their after-commit work");
    let seen: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE name = 'kept'")).fetch_one(&pool).await.unwrap();
    assert_eq!(seen, 1);
    assert!(done.try_recv().is_err());
}
