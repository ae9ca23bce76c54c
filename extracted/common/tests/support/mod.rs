//! Shared by the dry-run tests: a Postgres pool from DATABASE_URL and a tiny service whose
//! handlers write through the request transaction.
#![allow(dead_code)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bm_common::dryrun::{transaction_per_request, DryRun, RequestTx, TxState};
use bm_common::DryRunKey;
use serde_json::{json, Value};
use sqlx::PgPool;

pub async fn pool() -> PgPool {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with scripts/test, or `scripts/stack up && source .run/stack.env`");
    PgPool::connect(&url).await.expect("Postgres at DATABASE_URL answers")
}

/// A table of its own for one test, in a fresh schema.
pub async fn table(pool: &PgPool) -> String {
    let schema = format!("dryrun_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(pool).await.unwrap();
    sqlx::query(&format!("CREATE TABLE {schema}.items (id serial PRIMARY KEY, name text NOT NULL)")).execute(pool).await.unwrap();
    format!("{schema}.items")
}

#[derive(Clone)]
struct App {
    table: String,
}

async fn create(State(app): State<App>, tx: RequestTx, dry: DryRun, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let mut conn = tx.conn().await.unwrap();
    let id: i32 = sqlx::query_scalar(&format!("INSERT INTO {} (name) VALUES ($1) RETURNING id", app.table))
        .bind(body["name"].as_str().unwrap_or(""))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    // the handler sees its own write inside the transaction, dry run or not
    let seen: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {} WHERE id = $1", app.table)).bind(id).fetch_one(&mut *conn).await.unwrap();
    (StatusCode::CREATED, Json(json!({ "id": id, "seen": seen, "dryRun": dry.0 })))
}

async fn create_then_fail(State(app): State<App>, tx: RequestTx) -> StatusCode {
    let mut conn = tx.conn().await.unwrap();
    sqlx::query(&format!("INSERT INTO {} (name) VALUES ('doomed')", app.table)).execute(&mut *conn).await.unwrap();
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn rejected_after_write(State(app): State<App>, tx: RequestTx) -> StatusCode {
    // e.g. refresh-token reuse: the revocation is written, the client gets 401
    let mut conn = tx.conn().await.unwrap();
    sqlx::query(&format!("INSERT INTO {} (name) VALUES ('kept')", app.table)).execute(&mut *conn).await.unwrap();
    StatusCode::UNAUTHORIZED
}

/// The dry-run secret the tests' services verify with (and their proxy signs with).
pub const SECRET: &str = "test-dry-run-secret-0123456789abcdef";

pub fn key() -> DryRunKey {
    DryRunKey::try_new(SECRET.as_bytes()).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A dry-run header value for `method target` of request `id`, signed `age_secs` ago.
pub fn signed(method: &str, target: &str, id: &str, age_secs: u64) -> String {
    use strangler_protocol::dry_run::Signed;
    key().sign(now() - age_secs, Signed { request_id: id, method, target })
}

pub fn tx_state(pool: PgPool) -> TxState {
    TxState::new(pool, Some(key()))
}

pub fn router(pool: PgPool, table: String) -> Router {
    Router::new()
        .route("/items", post(create))
        .route("/fail", post(create_then_fail))
        .route("/reject", post(rejected_after_write))
        .route("/health", get(|| async { "ok" }))
        .with_state(App { table })
        .layer(axum::middleware::from_fn_with_state(tx_state(pool), transaction_per_request))
}
