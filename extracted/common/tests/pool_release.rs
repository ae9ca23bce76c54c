//! Every service's pool (`bm_common::config::pool_options`) on the vendored sqlx-core, whose
//! connections are no longer pinged when they are returned (vendor/sqlx-core, "strangler patch"),
//! against the real Postgres of scripts/stack, through a relay that counts what the client sends:
//! a clean connection goes back without a byte on the wire, and what the ping used to settle is
//! still settled — a dropped transaction is rolled back when its connection is returned (its
//! locks freed then, not at the connection's next use), a connection whose backend died under a
//! statement is closed, and a statement abandoned mid-answer is drained before the connection
//! answers anything else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::table;

/// A TCP relay in front of `DATABASE_URL`'s server; counts the bytes clients send, each counted
/// before it is passed on (so a message the server answered has been counted).
struct Relay {
    sent: Arc<AtomicU64>,
    url: String,
}

async fn relay() -> Relay {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
    let parsed = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    let server = format!("{}:{}", parsed.host_str().unwrap_or("127.0.0.1"), parsed.port().unwrap_or(5432));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut url = parsed.clone();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(listener.local_addr().unwrap().port())).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(&server).await.expect("Postgres answers");
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
            });
        }
    });
    Relay { sent, url: url.to_string() }
}

/// A pool of one connection with every service's settings, through `relay`.
async fn one_connection(relay: &Relay) -> PgPool {
    bm_common::config::pool_options(1, Duration::from_secs(10)).connect(&relay.url).await.expect("Postgres through the relay")
}

#[tokio::test]
async fn a_clean_connection_goes_back_to_its_pool_without_a_round_trip() {
    let relay = relay().await;
    let pool = one_connection(&relay).await;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    let after_answer = relay.sent.load(Ordering::SeqCst);
    // the pool's only connection: this waits until the first checkout's return has finished
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        relay.sent.load(Ordering::SeqCst),
        after_answer,
        "the connection was sent something between its answer and its next checkout (sqlx's ping on release is a 5-byte Sync)"
    );
    let two: i32 = sqlx::query_scalar("SELECT 2").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(two, 2);
}

#[tokio::test]
async fn a_dropped_transaction_is_rolled_back_when_its_connection_is_returned() {
    let relay = relay().await;
    let pool = one_connection(&relay).await;
    let outside = support::pool().await;
    let t = table(&outside).await;
    sqlx::query(&format!("INSERT INTO {t} (name) VALUES ('before')")).execute(&outside).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("UPDATE {t} SET name = 'abandoned'")).execute(&mut *tx).await.unwrap();
    drop(tx);
    // the pool's only connection, back from its return and not used since: its transaction's
    // row lock is gone already (not at the connection's next statement, which may be much later)
    let idle = pool.acquire().await.unwrap();
    let mut other = outside.begin().await.unwrap();
    let name: String = sqlx::query_scalar(&format!("SELECT name FROM {t} FOR UPDATE NOWAIT"))
        .fetch_one(&mut *other)
        .await
        .expect("the row is not locked by the dropped transaction any more");
    assert_eq!(name, "before");
    other.rollback().await.unwrap();
    drop(idle);
    // and its next statement is outside any transaction: another session sees its write at once
    sqlx::query(&format!("INSERT INTO {t} (name) VALUES ('kept')")).execute(&pool).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM {t} ORDER BY id")).fetch_all(&outside).await.unwrap();
    assert_eq!(names, ["before", "kept"]);
}

#[tokio::test]
async fn a_statement_abandoned_mid_answer_does_not_leak_into_the_next_one() {
    let relay = relay().await;
    let pool = one_connection(&relay).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();
    {
        let mut conn = pool.acquire().await.unwrap();
        let mut rows = sqlx::query_scalar::<_, i32>("SELECT g FROM generate_series(1, 200000) g").fetch(&mut *conn);
        assert_eq!(rows.next().await.transpose().unwrap(), Some(1));
        // the stream and the connection dropped with ~200k rows still coming
    }
    let answer: i32 = sqlx::query_scalar("SELECT 42").fetch_one(&pool).await.unwrap();
    assert_eq!(answer, 42, "the next statement got its own answer, not the abandoned one's rows");
    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert_eq!(again, pid, "the drained connection was kept, not closed and replaced");
}

#[tokio::test]
async fn a_connection_whose_backend_died_under_a_statement_is_not_handed_out_again() {
    let relay = relay().await;
    let pool = one_connection(&relay).await;
    let outside = support::pool().await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();
    let sleeping = {
        let pool = pool.clone();
        tokio::spawn(async move { sqlx::query("SELECT pg_sleep(30)").execute(&pool).await })
    };
    // terminate the backend once it is inside the statement (as an administrator or a failover would)
    loop {
        let active: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%')")
                .bind(pid)
                .fetch_one(&outside)
                .await
                .unwrap();
        if active {
            break;
        }
        tokio::task::yield_now().await;
    }
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&outside).await.unwrap();
    assert!(killed);
    assert!(sleeping.await.unwrap().is_err(), "the statement failed with its backend");
    // the next request gets a working connection, not the dead one
    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.expect("a live connection");
    assert_ne!(again, pid);
}
