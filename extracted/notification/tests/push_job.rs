//! The push job as a real process against a real broker (tansu), PostgreSQL and the FCM fake:
//! events written through the outbox and its relay, pushes counted where FCM receives them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bm_events::event::{MessageSent, MESSAGE_SENT_TOPIC, PUSH_DEAD_LETTER_TOPIC};
use bm_events::relay::{Relay, RelayConfig};
use bm_events::testkit;
use bm_events::KafkaConfig;
use bm_notification::owner::{self, Owner};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

fn bin(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug");
    dir.join(name).to_string_lossy().into_owned()
}

/// A child process that printed `listening on <url>`; killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(u) = l.strip_prefix("listening on ") {
                        break u.trim().to_string();
                    }
                }
                _ => panic!("{what} exited before listening"),
            }
        };
        // keep draining its output (its log) so it never blocks on a full pipe; shown with a failure
        let name = what.to_string();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                eprintln!("[{name}] {l}");
            }
        });
        Proc { child, url }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the job drains and leaves the group.
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn fakes() -> Proc {
    let mut c = Command::new(bin("fakes"));
    c.args(["--listen", "127.0.0.1:0"]).env("RUST_LOG", "warn");
    Proc::spawn(c, "the fakes")
}

fn notification(db: &str, brokers: &str, fcm: &str, extra: &[(&str, &str)]) -> Proc {
    let mut c = Command::new(bin("bm-notification"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", std::env::var("PUSH_TEST_LOG").unwrap_or("warn".into()))
        .env("PORT", "0")
        .env("DATABASE_URL", testkit::database_url(db))
        .env("KAFKA_BROKERS", brokers)
        .env("FCM_BASE_URL", fcm)
        // (the REST routes need a key to verify tokens with; these tests do not call them)
        .env("JWT_PUBLIC_KEY_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jwt-test-public.pem"))
        .env("HTTP_TIMEOUT_MS", "1000")
        .env("PUSH_LEASE_MS", "3000")
        .env("PUSH_RETRY_BASE_MS", "50")
        .env("PUSH_LANES", "8");
    for (k, v) in extra {
        c.env(k, v);
    }
    Proc::spawn(c, "bm-notification")
}

fn kafka(brokers: &str) -> KafkaConfig {
    KafkaConfig { brokers: brokers.to_string(), client_id: "push-test".into(), extra: Default::default() }
}

fn relay(pool: &PgPool, brokers: &str) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let r = Relay {
        pool: pool.clone(),
        kafka: kafka(brokers),
        cfg: RelayConfig { poll: Duration::from_millis(100), ..Default::default() },
        table: bm_events::outbox::LEGACY,
        source: "legacy".into(),
    };
    tokio::spawn(r.run(stopped));
    stop
}

struct World {
    pool: PgPool,
    db: String,
    broker: testkit::Broker,
    fakes: Proc,
    http: reqwest::Client,
    _relay: tokio::sync::watch::Sender<bool>,
}

impl World {
    async fn new(owner_: Owner) -> World {
        // the relay runs in this process: its warnings (a broker away, a retry) show in a failure
        let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
        let broker = testkit::Broker::start().await;
        let (pool, db) = testkit::fresh_database().await;
        kafka(&broker.brokers()).ensure_topics(bm_events::event::TOPICS).await.unwrap();
        owner::switch(&pool, owner_).await.unwrap();
        let relay = relay(&pool, &broker.brokers());
        World { pool, db, broker, fakes: fakes(), http: reqwest::Client::new(), _relay: relay }
    }

    async fn user(&self, name: &str, tokens: &[&str]) -> Uuid {
        let id: Uuid = sqlx::query_scalar("INSERT INTO legacy.users (email, display_name) VALUES ($1, $2) RETURNING id")
            .bind(format!("{}@push.test", Uuid::new_v4()))
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        for t in tokens {
            sqlx::query("INSERT INTO legacy.devices (token, user_id, platform) VALUES ($1, $2, 'android')")
                .bind(t)
                .bind(id)
                .execute(&self.pool)
                .await
                .unwrap();
        }
        id
    }

    /// A message.sent written in a transaction, as sendMessage writes it.
    async fn send(&self, chat: Uuid, seq: i64, sender: Uuid, recipients: &[Uuid]) -> MessageSent {
        send(&self.pool, chat, seq, sender, recipients).await
    }

    /// What the FCM fake accepted, in arrival order: (messageId, token, chatId).
    async fn received(&self) -> Vec<(String, String, String)> {
        let v: Value = self.http.get(format!("{}/_fake/fcm/messages", self.fakes.url)).send().await.unwrap().json().await.unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let msg = &m["message"];
                (
                    msg["data"]["messageId"].as_str().unwrap().to_string(),
                    msg["token"].as_str().unwrap().to_string(),
                    msg["data"]["chatId"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn outage(&self, body: Value) {
        let r = self.http.post(format!("{}/_fake/fcm/outage", self.fakes.url)).json(&body).send().await.unwrap();
        assert!(r.status().is_success());
    }

    async fn finish(self) {
        drop(self.fakes);
        testkit::drop_database(self.pool, &self.db).await;
        drop(self.broker);
    }
}

async fn send(pool: &PgPool, chat: Uuid, seq: i64, sender: Uuid, recipients: &[Uuid]) -> MessageSent {
    let e = MessageSent::new(
        "chat",
        chat,
        Uuid::new_v4(),
        seq,
        sender,
        "Ann",
        Some("Ops"),
        &format!("message {seq}"),
        recipients.to_vec(),
        false,
        chrono::Utc::now(),
    );
    let mut tx = pool.begin().await.unwrap();
    bm_events::outbox::enqueue(&mut tx, &e.to_outbox()).await.unwrap();
    tx.commit().await.unwrap();
    e
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, limit: Duration, cond: impl FnMut() -> F) {
    assert!(within(limit, cond).await, "timed out waiting for {what}");
}

/// Whether `cond` held within `limit` (polled every 50 ms).
async fn within<F: std::future::Future<Output = bool>>(limit: Duration, mut cond: impl FnMut() -> F) -> bool {
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// How many partitions of message.sent the job says it holds (`None` before its first assignment).
async fn held(w: &World, job: &Proc) -> Option<f64> {
    let m = w.http.get(format!("{}/metrics", job.url)).send().await.ok()?.text().await.ok()?;
    m.lines().find_map(|l| l.strip_prefix("notification_assigned_partitions ")).and_then(|v| v.trim().parse().ok())
}

/// Where the events stand, for a wait that timed out: still in the outbox (the relay), not
/// consumed (the group: partitions held, lag), or claimed and not finished (FCM, the lanes).
async fn state(w: &World, job: &Proc) -> String {
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM legacy.outbox WHERE published_at IS NULL").fetch_one(&w.pool).await.unwrap();
    let pushes: Vec<(String, i64)> = sqlx::query_as("SELECT status, count(*) FROM notification.pushes GROUP BY status ORDER BY status")
        .fetch_all(&w.pool)
        .await
        .unwrap();
    let metrics = match w.http.get(format!("{}/metrics", job.url)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("(the job's /metrics: {e})"),
    };
    let job_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            [
                "notification_assigned_partitions",
                "notification_consumer_lag",
                "notification_rebalances_total",
                "notification_consumer_errors_total",
                "notification_events_total",
                "notification_pushes_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .collect();
    format!("outbox rows unpublished: {unpublished}; pushes by status: {pushes:?}\nthe job's metrics:\n{}", job_lines.join("\n"))
}

/// Checks the pushes the fake received against the events: every (message, device) at least
/// once, each chat's pushes to a device in send order; returns how many arrived twice.
fn check(received: &[(String, String, String)], sent: &[(MessageSent, Vec<String>)]) -> usize {
    let mut count: HashMap<(String, String), usize> = HashMap::new();
    for (m, t, _) in received {
        *count.entry((m.clone(), t.clone())).or_default() += 1;
    }
    for (e, tokens) in sent {
        for t in tokens {
            assert!(count.contains_key(&(e.message_id.to_string(), t.clone())), "message {} never reached device {t}", e.message_id);
        }
    }
    // order: per (chat, device), the first arrivals follow seq
    let seq: HashMap<String, i64> = sent.iter().map(|(e, _)| (e.message_id.to_string(), e.seq.parse().unwrap())).collect();
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut first_seen = std::collections::HashSet::new();
    for (m, t, chat) in received {
        if !first_seen.insert((m.clone(), t.clone())) {
            continue;
        }
        let s = seq[m];
        let prev = last.insert((chat.clone(), t.clone()), s);
        assert!(prev.is_none_or(|p| p < s), "chat {chat}: device {t} got seq {s} after {prev:?}");
    }
    count.values().map(|n| n - 1).sum()
}

async fn resent_unknown(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(sum(resent_unknown), 0)::bigint FROM notification.pushes").fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_push_per_device_through_a_crash_a_broker_restart_an_outage_and_a_dead_token() {
    let mut w = World::new(Owner::Notification).await;
    let sender = w.user("Ann", &[]).await;
    let bob = w.user("Bob", &["bob-phone", "bob-tablet"]).await;
    let cy = w.user("Cy", &["cy-phone", "unregistered-cy-old-phone"]).await;
    let dee = w.user("Dee", &[]).await;
    let recipients = [bob, cy, dee];
    let live_tokens: Vec<String> = ["bob-phone", "bob-tablet", "cy-phone"].iter().map(|s| s.to_string()).collect();
    let chats: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut job = notification(&w.db, &w.broker.brokers(), &w.fakes.url, &[("PUSH_MAX_ATTEMPTS", "20")]);

    let mut sent = Vec::new();
    const PER_CHAT: i64 = 50;
    for seq in 1..=PER_CHAT {
        for chat in &chats {
            sent.push((w.send(*chat, seq, sender, &recipients).await, live_tokens.clone()));
        }
        match seq {
            // the job dies without a word mid-stream and comes back
            12 => {
                job.kill9();
                job = notification(&w.db, &w.broker.brokers(), &w.fakes.url, &[("PUSH_MAX_ATTEMPTS", "20")]);
            }
            // the broker restarts as an operator restarts it (SIGINT), once the group has settled
            // on the new instance. (Restarted within the dead member's session timeout, tansu 0.6
            // sometimes never expires that member: the group stays assigned to it and the live
            // one holds nothing, for good. A Kafka coordinator expires it; docs/events.md "The
            // broker".)
            25 => {
                let settled = within(Duration::from_secs(60), || async { held(&w, &job).await == Some(4.0) }).await;
                assert!(settled, "timed out waiting for the new instance to hold message.sent; {}", state(&w, &job).await);
                w.broker.restart().await
            }
            // FCM answers 500 for a while: from here until it has refused 10 requests
            38 => w.outage(serde_json::json!({ "status": 500 })).await,
            45 => {
                // (the job may still be catching up after the crash and the broker restart)
                let refusing = within(Duration::from_secs(120), || async {
                    let v: Value = w.http.get(format!("{}/_fake/fcm/outage", w.fakes.url)).send().await.unwrap().json().await.unwrap();
                    v["outage"]["refused"].as_u64().unwrap_or(0) >= 10
                })
                .await;
                assert!(refusing, "timed out waiting for FCM refusing requests; {}", state(&w, &job).await);
                w.http.delete(format!("{}/_fake/fcm/outage", w.fakes.url)).send().await.unwrap();
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expected = sent.len() * live_tokens.len();
    let done = || async {
        let finished: i64 = sqlx::query_scalar("SELECT count(*) FROM notification.pushes WHERE status IN ('sent', 'dead')")
            .fetch_one(&w.pool)
            .await
            .unwrap();
        finished as usize >= expected
    };
    assert!(within(Duration::from_secs(120), done).await, "timed out waiting for every push recorded; {}", state(&w, &job).await);
    let received = w.received().await;
    let doubled = check(&received, &sent);
    let explained = resent_unknown(&w.pool).await as usize;
    eprintln!(
        "{} events, {expected} pushes expected, {} received, {doubled} twice ({explained} resent after the crash)",
        sent.len(),
        received.len()
    );
    assert!(doubled <= explained, "every push that arrived twice is one whose sender died mid-request ({doubled} > {explained})");
    // a lane is on one event at a time and sends its devices' pushes side by side (4 devices here,
    // the dead token included): at most 8 lanes x 4 requests were in flight at the crash
    assert!(explained <= 8 * 4, "at most one event's pushes in flight per lane at the crash, got {explained}");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM notification.pushes WHERE status = 'dead'").fetch_one(&w.pool).await.unwrap();
    assert_eq!(dead, 0, "the outage was retried through");
    // the dead token: FCM said UNREGISTERED once, the device is gone, never pushed again
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy.devices WHERE token = 'unregistered-cy-old-phone'")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(gone, 0);
    // (events already in flight when it was deleted had read it too: as in the monolith, each
    // gets the same answer; none after the deletion)
    let unregistered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notification.pushes WHERE status = 'unregistered'").fetch_one(&w.pool).await.unwrap();
    assert!((1..=8).contains(&unregistered), "{unregistered}");
    job.stop();
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_that_keeps_failing_and_an_unreadable_event_go_to_the_dead_letter_topic() {
    let w = World::new(Owner::Notification).await;
    let sender = w.user("Ann", &[]).await;
    let bob = w.user("Bob", &["bob-phone"]).await;
    let mut job = notification(&w.db, &w.broker.brokers(), &w.fakes.url, &[("PUSH_MAX_ATTEMPTS", "3"), ("PUSH_RETRY_BASE_MS", "20")]);
    let dlq = kafka(&w.broker.brokers()).consumer(&format!("dlq-test-{}", Uuid::new_v4())).unwrap();
    dlq.subscribe(&[PUSH_DEAD_LETTER_TOPIC]).unwrap();

    // FCM fails until told otherwise: three attempts, then the dead-letter topic
    w.outage(serde_json::json!({ "status": 503 })).await;
    let chat = Uuid::new_v4();
    let e = w.send(chat, 1, sender, &[bob]).await;
    let m = tokio::time::timeout(Duration::from_secs(60), dlq.recv()).await.expect("a dead letter").unwrap();
    let headers: HashMap<String, String> = m
        .headers()
        .unwrap()
        .iter()
        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
        .collect();
    assert_eq!(MessageSent::parse(m.payload().unwrap()).unwrap().id, e.id, "the event itself");
    assert_eq!(headers["event-id"], e.id.to_string());
    assert_eq!(headers["dead-letter-user"], bob.to_string());
    assert_eq!(headers["dead-letter-attempts"], "3");
    assert!(headers["dead-letter-reason"].contains("503"), "{headers:?}");
    // (the job publishes the dead letter, then records the outcome)
    until("the push recorded dead", Duration::from_secs(30), || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM notification.pushes WHERE event_id = $1").bind(e.id).fetch_one(&w.pool).await.unwrap();
        assert!(status == "sending" || status == "dead", "{status}");
        status == "dead"
    })
    .await;
    let r = w.http.delete(format!("{}/_fake/fcm/outage", w.fakes.url)).send().await.unwrap();
    assert!(r.status().is_success());

    // a record that is not a message.sent v1: straight to the dead-letter topic, the job goes on
    let producer = kafka(&w.broker.brokers()).producer().unwrap();
    producer
        .send(
            FutureRecord::to(MESSAGE_SENT_TOPIC).key(&chat.to_string()).payload("{\"type\":\"message.sent\",\"version\":9}"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), dlq.recv()).await.expect("a dead letter").unwrap();
    let reason = m.headers().unwrap().iter().find(|h| h.key == "dead-letter-reason").and_then(|h| h.value).unwrap();
    assert!(String::from_utf8_lossy(reason).contains("message.sent v1"), "{}", String::from_utf8_lossy(reason));
    let next = w.send(chat, 2, sender, &[bob]).await;
    until("the next event pushed", Duration::from_secs(30), || async {
        w.received().await.iter().any(|(m, _, _)| *m == next.message_id.to_string())
    })
    .await;
    job.stop();
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_joins_and_leaves_under_load_and_nothing_is_lost_or_doubled() {
    let w = World::new(Owner::Notification).await;
    let sender = w.user("Ann", &[]).await;
    let bob = w.user("Bob", &["bob-phone"]).await;
    let cy = w.user("Cy", &["cy-phone"]).await;
    let tokens: Vec<String> = vec!["bob-phone".into(), "cy-phone".into()];
    let mut a = notification(&w.db, &w.broker.brokers(), &w.fakes.url, &[]);

    // the load: rounds of one message in each of 8 chats, until told to stop
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (rounds_tx, mut rounds) = tokio::sync::watch::channel(0i64);
    let pool = w.pool.clone();
    let writer = tokio::spawn(async move {
        let chats: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        let mut sent = Vec::new();
        let mut seq = 0;
        while !*stopped.borrow() {
            seq += 1;
            for chat in &chats {
                sent.push(send(&pool, *chat, seq, sender, &[bob, cy]).await);
            }
            let _ = rounds_tx.send(seq);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });
    let metrics = |url: String| async move { reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap() };
    let handled = |m: &str| m.lines().any(|l| l.starts_with("notification_events_total{result=\"pushed\"}"));

    rounds.wait_for(|r| *r >= 10).await.unwrap();
    let mut b = notification(&w.db, &w.broker.brokers(), &w.fakes.url, &[]);
    // b takes a share of the partitions and handles events, then leaves (SIGTERM: drains)
    let start = Instant::now();
    loop {
        let m = metrics(b.url.clone()).await;
        if handled(&m) {
            // it says how many partitions it holds (of message.sent's four, some and not all:
            // a holds the rest)
            let held =
                m.lines().find_map(|l| l.strip_prefix("notification_assigned_partitions ")).map(|v| v.trim().parse::<f64>().unwrap());
            assert!(held.is_some_and(|n| (1.0..4.0).contains(&n)), "assigned partitions of the second instance: {held:?}\n{m}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the second instance handled no event:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = *rounds.borrow();
    rounds.wait_for(|r| *r >= at + 10).await.unwrap();
    b.stop();
    // a takes everything back
    let at = *rounds.borrow();
    rounds.wait_for(|r| *r >= at + 10).await.unwrap();
    let _ = stop.send(true);
    let sent: Vec<(MessageSent, Vec<String>)> = writer.await.unwrap().into_iter().map(|e| (e, tokens.clone())).collect();

    let expected = sent.len() * tokens.len();
    until("every push recorded", Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notification.pushes WHERE status = 'sent'").fetch_one(&w.pool).await.unwrap();
        n as usize >= expected
    })
    .await;
    let received = w.received().await;
    let doubled = check(&received, &sent);
    eprintln!("{} events through a join and a leave, {} pushes, {doubled} twice", sent.len(), received.len());
    assert_eq!(resent_unknown(&w.pool).await, 0, "nobody died mid-request");
    assert_eq!(doubled, 0, "a rebalance hands events over without pushing any twice");
    assert_eq!(received.len(), expected);
    a.stop();
    w.finish().await;
}

/// The notification rows of events from chat shards: many events written at once share
/// statements, every existing recipient gets exactly one row per message with the message's
/// payload, a recipient whose account is gone gets none, and writing the events again (a
/// redelivery) adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_rows_of_many_events_go_together_once_each() {
    let (pool, db) = testkit::fresh_database().await;
    let mut users = Vec::new();
    for i in 0..4 {
        let id: Uuid = sqlx::query_scalar("INSERT INTO legacy.users (email, display_name) VALUES ($1, $2) RETURNING id")
            .bind(format!("{}@rows.test", Uuid::new_v4()))
            .bind(format!("user {i}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        users.push(id);
    }
    let gone = Uuid::new_v4();
    let (chat, sender) = (Uuid::new_v4(), users[0]);
    let events: Vec<MessageSent> = (0..200)
        .map(|seq| {
            MessageSent::new(
                "chat",
                chat,
                Uuid::new_v4(),
                seq,
                sender,
                "user 0",
                Some("Ops"),
                &format!("message {seq}"),
                vec![users[1], users[2], users[3], gone],
                false,
                chrono::Utc::now(),
            )
        })
        .collect();
    let writer = bm_notification::job::NotificationWriter::start(pool.clone());
    futures_util::future::join_all(events.iter().map(|e| writer.write(e))).await;
    let batches = writer.batches();
    assert!((1..50).contains(&batches), "200 events handed over at once took {batches} statements");

    let rows: Vec<(Uuid, String, Value)> =
        sqlx::query_as("SELECT user_id, kind, payload FROM legacy.notifications WHERE payload->>'chatId' = $1")
            .bind(chat.to_string())
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 200 * 3, "one row per existing recipient and message");
    let mut per: HashMap<(Uuid, String), usize> = HashMap::new();
    for (user, kind, payload) in &rows {
        assert_eq!(kind, "message.new");
        assert_ne!(*user, gone);
        *per.entry((*user, payload["messageId"].as_str().unwrap().to_string())).or_default() += 1;
    }
    assert_eq!(per.len(), 600);
    assert!(per.values().all(|n| *n == 1));
    for e in &events {
        let want = e.notification_payload();
        let got = &rows.iter().find(|(_, _, p)| p["messageId"] == want["messageId"]).unwrap().2;
        assert_eq!(*got, want, "the payload the message's transaction would have written");
    }

    // a redelivery of every event writes nothing more
    futures_util::future::join_all(events.iter().map(|e| writer.write(e))).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy.notifications WHERE payload->>'chatId' = $1")
        .bind(chat.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 600);
    drop(writer);
    testkit::drop_database(pool, &db).await;
}
