//! A request's transactions on two databases (the chat service's request on the monolith's
//! database and a chat's shard), against the real Postgres of scripts/stack: both commit, the
//! other database first; both roll back together; the hooks run where they say — before the
//! commit while its locks are held (the row not yet visible to anyone else), after it before
//! the answer (visible), and never for a rollback.

use bm_common::dryrun::RequestTx;
use sqlx::PgPool;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

mod support;
use support::{pool, table};

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap()
}

/// A request that writes one row in `main_table` and one in `other_table` (through a second
/// pool, as on another database), with hooks that record what another session sees.
async fn request(main: &PgPool, other: &PgPool, main_table: &str, other_table: &str, log: UnboundedSender<String>) -> RequestTx {
    let tx = RequestTx::new(main.clone());
    sqlx::query(&format!("INSERT INTO {main_table} (name) VALUES ('main')")).execute(&mut *tx.conn().await.unwrap()).await.unwrap();
    sqlx::query(&format!("INSERT INTO {other_table} (name) VALUES ('other')"))
        .execute(&mut *tx.conn_on("shard", other).await.unwrap())
        .await
        .unwrap();
    // a read through the request sees its own write on the other database
    let mine = tx.conn_on_if_begun("shard").await.expect("begun");
    drop(mine);
    assert!(tx.conn_on_if_begun("elsewhere").await.is_none());
    for (hook, when) in [("before", 0), ("on", 1), ("after", 2)] {
        let (log, outside, t) = (log.clone(), other.clone(), other_table.to_string());
        let work = async move {
            let seen = count(&outside, &t).await;
            let _ = log.send(format!("{hook}: {seen}"));
        };
        match when {
            0 => tx.before_commit(work),
            1 => tx.on_commit(work),
            _ => tx.after_commit(work),
        }
    }
    tx
}

#[tokio::test]
async fn commits_both_databases_and_runs_each_hook_in_its_place() {
    let main = pool().await;
    let other = pool().await;
    let (t1, t2) = (table(&main).await, table(&main).await);
    let (log, mut seen) = unbounded_channel();
    let tx = request(&main, &other, &t1, &t2, log).await;
    tx.complete(true).await.unwrap();
    assert_eq!((count(&main, &t1).await, count(&main, &t2).await), (1, 1));
    drop(tx);
    // every hook's record (the after-commit work is spawned: the channel closes when it is done)
    let mut log = Vec::new();
    while let Some(entry) = tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv()).await.expect("the hooks ran") {
        log.push(entry);
    }
    assert_eq!(log, ["before: 0", "on: 1", "after: 1"], "before the commit nothing is visible; after it, the row");
}

#[tokio::test]
async fn a_rollback_leaves_nothing_on_either_database_and_runs_no_hook() {
    let main = pool().await;
    let other = pool().await;
    let (t1, t2) = (table(&main).await, table(&main).await);
    let (log, mut seen) = unbounded_channel();
    let tx = request(&main, &other, &t1, &t2, log).await;
    tx.complete(false).await.unwrap();
    assert_eq!((count(&main, &t1).await, count(&main, &t2).await), (0, 0));
    drop(tx);
    assert_eq!(seen.recv().await, None, "no hook ran for a rollback (they were dropped)");
}

#[tokio::test]
async fn a_failed_commit_on_the_other_database_rolls_the_main_one_back() {
    let main = pool().await;
    let other = pool().await;
    let (t1, t2) = (table(&main).await, table(&main).await);
    let tx = RequestTx::new(main.clone());
    sqlx::query(&format!("INSERT INTO {t1} (name) VALUES ('main')")).execute(&mut *tx.conn().await.unwrap()).await.unwrap();
    {
        let mut c = tx.conn_on("shard", &other).await.unwrap();
        // a deferred constraint that fails only at COMMIT
        sqlx::query(&format!("ALTER TABLE {t2} ADD CONSTRAINT once UNIQUE (name) DEFERRABLE INITIALLY DEFERRED"))
            .execute(&other)
            .await
            .unwrap();
        sqlx::query(&format!("INSERT INTO {t2} (name) VALUES ('same'), ('same')")).execute(&mut *c).await.unwrap();
    }
    assert!(tx.complete(true).await.is_err(), "the request fails");
    assert_eq!((count(&main, &t1).await, count(&main, &t2).await), (0, 0), "and keeps nothing");
}

#[tokio::test]
async fn a_transaction_begun_by_a_mutation_is_discarded_whole_and_the_next_use_begins_anew() {
    let main = pool().await;
    let other = pool().await;
    let t = table(&main).await;
    let tx = RequestTx::new(main.clone());
    // the first use begins it: fresh; a second use of the same database is not
    let mut c = tx.conn_on("shard", &other).await.unwrap();
    assert!(c.is_fresh());
    sqlx::query(&format!("INSERT INTO {t} (name) VALUES ('failed mutation')")).execute(&mut *c).await.unwrap();
    c.discard().await;
    assert!(tx.conn_on_if_begun("shard").await.is_none(), "a discarded transaction is forgotten");
    let mut c = tx.conn_on("shard", &other).await.unwrap();
    assert!(c.is_fresh(), "the next use begins a new one");
    sqlx::query(&format!("INSERT INTO {t} (name) VALUES ('kept')")).execute(&mut *c).await.unwrap();
    drop(c);
    assert!(!tx.conn_on("shard", &other).await.unwrap().is_fresh());
    tx.complete(true).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM {t}")).fetch_all(&main).await.unwrap();
    assert_eq!(names, vec!["kept".to_string()]);
}
