//! The outbox relay against a real broker (tansu, SQLite engine) and a real PostgreSQL: events
//! written in transactions while the broker restarts and the relay is killed and replaced all
//! reach the topic, each chat's in order; nothing lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bm_events::event::{MessageSent, HEADER_EVENT_ID, MESSAGE_SENT_TOPIC, TOPICS};
use bm_events::relay::{Relay, RelayConfig};
use bm_events::testkit;
use bm_events::KafkaConfig;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use sqlx::PgPool;
use uuid::Uuid;

const CHATS: usize = 20;
const PER_CHAT: usize = 100;

fn kafka(brokers: &str) -> KafkaConfig {
    KafkaConfig { brokers: brokers.to_string(), client_id: "relay-test".into(), extra: Default::default() }
}

fn relay(pool: &PgPool, brokers: &str) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let r = Relay {
        pool: pool.clone(),
        kafka: kafka(brokers),
        cfg: RelayConfig { poll: Duration::from_millis(200), ..Default::default() },
        table: bm_events::outbox::LEGACY,
        source: "legacy".into(),
    };
    (stop, tokio::spawn(r.run(stopped)))
}

async fn published(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM legacy.outbox WHERE published_at IS NOT NULL").fetch_one(pool).await.unwrap()
}

/// Waits until `cond` holds, polling the observable state (no fixed sleeps).
async fn until<F: std::future::Future<Output = bool>>(what: &str, limit: Duration, mut cond: impl FnMut() -> F) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_or_reordered_across_a_broker_restart_and_a_relay_crash() {
    let mut broker = testkit::Broker::start().await;
    let (pool, db) = testkit::fresh_database().await;
    kafka(&broker.brokers()).ensure_topics(TOPICS).await.expect("topics");

    let (_stop1, relay1) = relay(&pool, &broker.brokers());
    // a second relay waiting for the lock: it takes over when the first one dies
    let (stop2, relay2) = relay(&pool, &broker.brokers());

    // writers: one per chat, each message in its own transaction, as sendMessage does
    let mut sent: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    let mut writers = Vec::new();
    for _ in 0..CHATS {
        let chat = Uuid::new_v4();
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for seq in 0..PER_CHAT {
                let e = MessageSent::new(
                    "chat",
                    chat,
                    Uuid::new_v4(),
                    seq as i64,
                    Uuid::new_v4(),
                    "Ann",
                    None,
                    "hi",
                    vec![],
                    false,
                    chrono::Utc::now(),
                );
                let mut tx = pool.begin().await.unwrap();
                bm_events::outbox::enqueue(&mut tx, &e.to_outbox()).await.unwrap();
                tx.commit().await.unwrap();
                ids.push(e.id);
                tokio::task::yield_now().await;
            }
            (chat, ids)
        }));
    }
    let total = (CHATS * PER_CHAT) as i64;

    // mid-stream: the broker restarts
    until("a quarter published", Duration::from_secs(60), || async { published(&pool).await >= total / 4 }).await;
    broker.restart().await;
    // then the leading relay dies without a word (its lock connection goes with it)
    until("half published", Duration::from_secs(90), || async { published(&pool).await >= total / 2 }).await;
    relay1.abort();
    let _ = relay1.await;

    for w in writers {
        let (chat, ids) = w.await.unwrap();
        sent.insert(chat, ids);
    }
    until("every event published", Duration::from_secs(120), || async { published(&pool).await == total }).await;

    // read the whole topic back
    let consumer = kafka(&broker.brokers()).consumer(&format!("relay-test-{}", Uuid::new_v4())).unwrap();
    consumer.subscribe(&[MESSAGE_SENT_TOPIC]).unwrap();
    let want: HashSet<Uuid> = sent.values().flatten().copied().collect();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut order: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    let mut duplicates = 0;
    let start = Instant::now();
    while seen.len() < want.len() {
        assert!(start.elapsed() < Duration::from_secs(60), "only {} of {} events on the topic", seen.len(), want.len());
        let m = match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(m) => m.expect("consuming"),
            Err(_) => continue,
        };
        let e = MessageSent::parse(m.payload().unwrap()).unwrap();
        let header = m.headers().and_then(|h| h.iter().find(|h| h.key == HEADER_EVENT_ID)).and_then(|h| h.value).unwrap();
        assert_eq!(header, e.id.to_string().as_bytes(), "the event-id header names the payload's id");
        assert_eq!(m.key().unwrap(), e.chat_id.to_string().as_bytes(), "keyed by chat");
        if seen.insert(e.id) {
            order.entry(e.chat_id).or_default().push(e.id);
        } else {
            duplicates += 1;
        }
    }
    assert_eq!(seen, want, "every event written is on the topic");
    for (chat, ids) in &sent {
        assert_eq!(order.get(chat), Some(ids), "chat {chat}: first deliveries in the order written");
    }
    eprintln!("{} events, {duplicates} delivered twice (at least once: consumers deduplicate by id)", want.len());

    let _ = stop2.send(true);
    relay2.await.unwrap();
    broker.stop();
    testkit::drop_database(pool, &db).await;
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_event() {
    let (pool, db) = testkit::fresh_database().await;
    let e =
        MessageSent::new("chat", Uuid::new_v4(), Uuid::new_v4(), 1, Uuid::new_v4(), "Ann", None, "hi", vec![], false, chrono::Utc::now());
    let mut tx = pool.begin().await.unwrap();
    bm_events::outbox::enqueue(&mut tx, &e.to_outbox()).await.unwrap();
    tx.rollback().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy.outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 0);
    testkit::drop_database(pool, &db).await;
}
