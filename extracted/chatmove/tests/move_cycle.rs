//! The whole move against real PostgreSQL while a client writes where the routing says (as the
//! chat service does): copy, follow, verify, switch reads, switch writes (the writes in flight
//! meet the fence and go to the shards; nothing lost), reverse sync, then a rollback to the
//! monolith's tables — every message the client wrote or touched checked on the side that is the
//! truth after each step. Then the same for adding a fifth shard to a finished move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bm_chatmove::mover::{MoveSpec, Mover};
use bm_chatmove::plan::Origin;
use bm_chatmove::routing::Routing;
use bm_chatmove::testkit::{check, writer, Expected, Fixture, Outcome};
use bm_shards::ShardMap;
use tokio::task::JoinHandle;

struct Client {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Outcome>,
}

fn start(pools: &HashMap<String, sqlx::PgPool>) -> Client {
    let stop = Arc::new(AtomicBool::new(false));
    Client { task: tokio::spawn(writer(pools.clone(), stop.clone(), 100_000)), stop }
}

impl Client {
    async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn assert_all_there(pools: &HashMap<String, sqlx::PgPool>, expected: &HashMap<uuid::Uuid, Expected>, step: &str) {
    let routing = Routing::load(&pools["legacy"]).await.unwrap();
    let problems = check(pools, &routing, expected).await;
    assert!(problems.is_empty(), "{step}: {} problems, first: {:?}", problems.len(), &problems[..problems.len().min(5)]);
}

/// Lets the client write for a while (a number of its messages, not a time): counted wherever
/// they are (a message both on the source and, followed, on a shard counts twice — it only has
/// to grow).
async fn let_it_write(pools: &HashMap<String, sqlx::PgPool>, rows: i64) {
    let count = || async {
        let mut n = 0i64;
        for (db, p) in pools {
            let schema = bm_chatmove::plan::schema_of(db);
            n += sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {schema}.messages WHERE client_message_id LIKE 'w-%'"))
                .fetch_one(p)
                .await
                .unwrap();
        }
        n
    };
    let start = count().await;
    while count().await < start + rows {
        tokio::task::yield_now().await;
    }
}

/// The write fence's triggers on a database's chat tables (three while installed).
async fn fence_triggers(pool: &sqlx::PgPool, db: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE t.tgname = 'chat_move_fence' AND n.nspname = $1",
    )
    .bind(bm_chatmove::plan::schema_of(db))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_then_roll_back_under_writes_loses_nothing() {
    let fx = Fixture::create(4).await;
    fx.seed(40, 60, 3000).await;
    let pools = fx.pools().await;
    let map = fx.map(1, 4);
    let url_of = fx.url_of();
    let spec = MoveSpec { from: Origin::Legacy, from_text: None, to: ShardMap::parse("shards.toml", &map).unwrap(), to_text: map.clone() };

    let client = start(&pools);
    let mut m = Mover::open(&fx.main_url, spec, &url_of).await.unwrap();
    m.chunk = 500;
    m.prepare().await.unwrap();
    m.copy(|_| {}).await.unwrap();
    assert!(m.verify().await.unwrap().is_clean());
    m.switch_reads().await.unwrap();
    assert_eq!(Routing::load(&fx.main).await.unwrap().reads[0], "s0");
    let_it_write(&pools, 50).await;
    let switch = m.switch_writes().await.unwrap();
    let max_before_switch: i64 = sqlx::query_scalar("SELECT max(seq) FROM legacy.messages").fetch_one(&fx.main).await.unwrap();
    assert_eq!(m.stage().await.unwrap(), "writes-switched");
    let routing = Routing::load(&fx.main).await.unwrap();
    assert_eq!((routing.writes[5].as_deref(), routing.writes[1000].as_deref()), (Some("s0"), Some("s3")));
    // the client goes on writing, on the shards now; reverse sync carries it back
    let_it_write(&pools, 50).await;
    m.catch_up(true).await.unwrap();
    let reverse = m.verify().await.unwrap();
    assert!(reverse.is_clean(), "after the switch: {:?}", reverse.differences);
    let out = client.stop().await;
    assert!(out.written.fenced + out.written.paused > 0 || switch.write_pause_ms < 5, "the client met the switch: {:?}", out.written);
    assert_all_there(&pools, &out.expected, "on the shards after the switch").await;
    // new messages on the shards are numbered above everything before, in each shard's residue
    for (i, (name, _, _)) in fx.shards.iter().enumerate() {
        let (new, off): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE seq % 64 <> $2) FROM chat.messages WHERE seq > $1")
                .bind(max_before_switch)
                .bind(i as i64)
                .fetch_one(&pools[name])
                .await
                .unwrap();
        assert!(new > 0 && off == 0, "shard {name}: {new} new messages, {off} numbered outside its residue");
    }
    m.catch_up(true).await.unwrap();
    assert_all_there(&pools, &out.expected, "reverse-synced to the monolith's tables").await;

    // roll back while the client writes
    let client = start(&pools);
    let_it_write(&pools, 50).await;
    m.rollback().await.unwrap();
    let_it_write(&pools, 50).await;
    let back = client.stop().await;
    let routing = Routing::load(&fx.main).await.unwrap();
    assert!(routing.reads.iter().all(|r| r == "legacy") && routing.writes.iter().all(|w| w.as_deref() == Some("legacy")));
    let mut expected = out.expected;
    expected.extend(back.expected);
    assert_all_there(&pools, &expected, "back on the monolith's tables").await;
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE database LIKE $1 || '%'")
        .bind(&fx.name)
        .fetch_one(&fx.main)
        .await
        .unwrap();
    assert_eq!(slots, 0, "no slot left behind");
    // every fence is open again: its triggers are gone (writes between moves pay nothing for them)
    for (db, p) in &pools {
        assert_eq!(fence_triggers(p, db).await, 0, "{db}: the fence's triggers outlived the move");
    }
    // the monolith numbers new messages above everything the shards numbered
    let (max, next): (i64, i64) = sqlx::query_as(
        "SELECT max(seq), (SELECT seq FROM legacy.messages ORDER BY created_at DESC, seq DESC LIMIT 1) FROM legacy.messages",
    )
    .fetch_one(&fx.main)
    .await
    .unwrap();
    assert_eq!(max, next, "the newest message has the highest seq");
    fx.drop_all().await;
}

fn spec_of(from: Option<&str>, to: &str) -> MoveSpec {
    MoveSpec::parse(from.map(str::to_string), to.to_string()).unwrap()
}

/// Runs a whole move to its end (the client keeps writing throughout).
async fn move_all_the_way(fx: &Fixture, from: Option<&str>, to: &str) -> (u64, usize) {
    let url_of = fx.url_of();
    let mut m = Mover::open(&fx.main_url, spec_of(from, to), &url_of).await.unwrap();
    m.chunk = 500;
    m.prepare().await.unwrap();
    m.copy(|_| {}).await.unwrap();
    let v = m.verify().await.unwrap();
    assert!(v.is_clean(), "{:?}", v.differences);
    m.switch_reads().await.unwrap();
    let s = m.switch_writes().await.unwrap();
    m.catch_up(true).await.unwrap();
    let v = m.verify().await.unwrap();
    assert!(v.is_clean(), "after the switch: {:?}", v.differences);
    m.finish().await.unwrap();
    (s.write_pause_ms, s.drained)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_shard_takes_a_share_of_every_shard_under_writes() {
    let mut fx = Fixture::create(4).await;
    fx.seed(40, 80, 3000).await;
    let four = fx.map(1, 4);
    move_all_the_way(&fx, None, &four).await;
    fx.add_shards(1).await;
    let pools = fx.pools().await;
    // the monolith's fence stays closed (a stale writer is refused there), the shards' are open
    // and without triggers
    for (db, p) in &pools {
        let want = if db == "legacy" { 3 } else { 0 };
        assert_eq!(fence_triggers(p, db).await, want, "{db} after the first move");
    }
    let env = |i: usize| fx.shards[i].1.clone();
    let five = format!(
        "version = 2\n\
         [[shards]]\nname = \"s0\"\nurl_env = \"{}\"\nbuckets = [\"0-204\"]\n\
         [[shards]]\nname = \"s1\"\nurl_env = \"{}\"\nbuckets = [\"256-460\"]\n\
         [[shards]]\nname = \"s2\"\nurl_env = \"{}\"\nbuckets = [\"512-716\"]\n\
         [[shards]]\nname = \"s3\"\nurl_env = \"{}\"\nbuckets = [\"768-972\"]\n\
         [[shards]]\nname = \"s4\"\nurl_env = \"{}\"\nbuckets = [\"205-255\", \"461-511\", \"717-767\", \"973-1023\"]\n",
        env(0),
        env(1),
        env(2),
        env(3),
        env(4)
    );
    let before: i64 = {
        let mut n = 0;
        for i in 0..4 {
            n += sqlx::query_scalar::<_, i64>("SELECT count(*) FROM chat.messages").fetch_one(&pools[&format!("s{i}")]).await.unwrap();
        }
        n
    };
    assert!(before >= 3000);

    let client = start(&pools);
    let_it_write(&pools, 30).await;
    move_all_the_way(&fx, Some(&four), &five).await;
    let_it_write(&pools, 30).await;
    let out = client.stop().await;
    assert_all_there(&pools, &out.expected, "on five shards").await;
    let routing = Routing::load(&fx.main).await.unwrap();
    assert_eq!((routing.reads[250].as_str(), routing.reads[204].as_str()), ("s4", "s0"));
    for (db, p) in &pools {
        let want = if db == "s4" { 0 } else { 3 };
        assert_eq!(fence_triggers(p, db).await, want, "{db} after the fifth shard's move: sources keep a closed fence");
    }
    // s4 holds exactly its buckets' rows, and the old shards no longer hold them
    let on_s4: i64 = sqlx::query_scalar("SELECT count(*) FROM chat.messages").fetch_one(&pools["s4"]).await.unwrap();
    assert!(on_s4 > 0);
    for i in 0..4 {
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM chat.messages WHERE {} BETWEEN {} AND {}",
            bm_shards::bucket_sql("chat_id"),
            i * 256 + 205,
            i * 256 + 255
        ))
        .fetch_one(&pools[&format!("s{i}")])
        .await
        .unwrap();
        assert_eq!(left, 0, "s{i} still holds rows of the buckets s4 took");
    }
    let mut total = 0;
    for p in pools.values() {
        if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM chat.messages").fetch_one(p).await {
            total += n;
        }
    }
    let written = out.written.sent as i64 + out.written.chats_created as i64;
    let hard_deleted = out.expected.values().filter(|e| matches!(e, Expected::Gone { .. })).count() as i64;
    assert_eq!(total, before + written - hard_deleted, "every message once: {before} before, {written} written, {hard_deleted} deleted");
    fx.drop_all().await;
}
