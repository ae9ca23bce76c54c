//! The push job: a consumer group on `message.sent` that sends each recipient's devices one FCM
//! request, as the monolith did in-process (docs/events.md "The push job").
//!
//! - **Order**: one chat's events go to one lane (by key) and a lane handles one event at a time,
//!   so a chat's pushes leave in order; lanes run side by side.
//! - **Offsets** are stored only once an event is finished ([`Offsets`]) and committed from
//!   there: a crash or a rebalance redelivers unfinished events, never skips one.
//! - **Once per device**: each (event, device) is claimed in `notification.pushes` before the
//!   request; a redelivery finds it done and skips it. A claim is a lease, so a push claimed by
//!   an instance that died is taken over once the lease expires. The one case where a device
//!   can get a push twice: its sender died (kill -9) after sending the request and before
//!   recording the answer; FCM has no idempotency key, so it is sent again and counted
//!   (`resent_unknown`), never silently.
//! - **Retries**: 5xx, 429, timeouts and network errors are retried with doubling backoff, up
//!   to `PUSH_MAX_ATTEMPTS`; then (or at once for a refusal such as `INVALID_ARGUMENT`) the event
//!   goes to the dead-letter topic with the reason and the device's user. An event that does not
//!   parse, or of a version this job does not read, goes there too.
//! - **Shadow**: an event whose producer pushed in-process (`pushedInProcess`) is not pushed; the
//!   job plans its pushes and compares them with what the producer logged ([`crate::shadow`]),
//!   off the lane (the wait for the log must not delay the events behind it). A comparison lost
//!   in a crash is a lost comparison, never a lost push.
//! - **Drain**: on SIGTERM it stops reading, commits what is done, leaves the group, finishes
//!   the event each lane is on and leaves the queued ones to the next owner.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bm_events::event::{MessageSent, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION, MESSAGE_SENT_TOPIC, PUSH_DEAD_LETTER_TOPIC};
use bm_events::push::{fcm_request, for_event, PushContent};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::config::Config;
use crate::fcm::{self, Outcome};
use crate::offsets::Offsets;
use crate::store::{self, retry_db, Device};

/// One record handed to a lane.
pub struct Work {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

enum TakeOver {
    /// finished by someone: nothing to send
    Done,
    /// another instance holds a live lease on it
    Held,
    /// ours now, with this many attempts started
    Ours(u32),
}

pub struct Job {
    pub cfg: Config,
    pub pool: PgPool,
    pub fcm: fcm::Client,
    pub producer: FutureProducer,
    /// comparisons under way ([`SHADOW_SLOTS`] at most)
    pub shadow_slots: Arc<tokio::sync::Semaphore>,
    /// Writes the lanes' notification rows, several events' in one statement.
    notifications: NotificationWriter,
}

/// One event's `message.new` rows (a row per recipient, all with the event's payload and time)
/// and who waits for them to be written.
struct Notifications {
    ids: Vec<Uuid>,
    recipients: Vec<Uuid>,
    /// the payload as JSON text
    payload: String,
    at: Option<chrono::DateTime<chrono::Utc>>,
    written: tokio::sync::oneshot::Sender<()>,
}

/// Events whose notification rows go in one statement at most (their lanes wait together).
pub const NOTIFICATION_BATCH: usize = 256;

/// FCM requests under way for one event at once.
pub const PUSHES_PER_EVENT: usize = 16;

/// Shadow comparisons waiting for the producer's log at once.
pub const SHADOW_SLOTS: usize = 1024;

impl Job {
    /// Starts the notification writer on the current runtime: it ends when the job is dropped.
    pub fn new(cfg: Config, pool: PgPool, fcm: fcm::Client, producer: FutureProducer) -> Job {
        let notifications = NotificationWriter::start(pool.clone());
        Job { cfg, pool, fcm, producer, shadow_slots: Arc::new(tokio::sync::Semaphore::new(SHADOW_SLOTS)), notifications }
    }
}

/// The consumer's context: rebalances logged and counted, consumer lag from librdkafka's
/// statistics exported per partition.
pub struct Ctx;

const LAG_GAUGE: &str = "notification_consumer_lag";

impl ClientContext for Ctx {
    fn stats(&self, stats: Statistics) {
        bm_events::kafka::export_lag(LAG_GAUGE, &stats);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        let what = match r {
            Rebalance::Assign(_) => "assign",
            Rebalance::Revoke(_) => "revoke",
            Rebalance::Error(_) => "error",
        };
        metrics::counter!("notification_rebalances_total", "phase" => what).increment(1);
        tracing::info!(phase = what, "consumer group rebalance");
        if let Rebalance::Revoke(tpl) = r {
            bm_events::kafka::forget_lag(LAG_GAUGE, tpl);
        }
    }

    fn post_rebalance(&self, base: &rdkafka::consumer::BaseConsumer<Self>, _: &Rebalance<'_>) {
        // 0 on every instance (sum over instances) means nobody consumes message.sent: the
        // pushes wait in the topic. An alert on it catches a group the broker stopped serving
        // (seen on the dev broker after a member timed out under load: docs/benchmarks.md)
        let assigned = base.assignment().map(|a| a.count()).unwrap_or(0);
        metrics::gauge!("notification_assigned_partitions").set(assigned as f64);
        if assigned == 0 {
            tracing::warn!("no partitions of message.sent assigned to this instance after a rebalance");
        }
    }
}

pub type PushConsumer = StreamConsumer<Ctx>;

impl Job {
    pub fn consumer(&self) -> anyhow::Result<PushConsumer> {
        let mut c = self.cfg.kafka.consumer_config(&self.cfg.job.group);
        bm_events::kafka::with_lag_statistics(&mut c);
        Ok(c.create_with_context(Ctx)?)
    }

    /// Consumes until `stop`, then drains: the lanes finish what they hold, offsets are
    /// committed, the consumer leaves the group.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let consumer = Arc::new(self.consumer()?);
        consumer.subscribe(&[MESSAGE_SENT_TOPIC])?;
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let mut lanes = Vec::with_capacity(self.cfg.job.lanes);
        let mut workers = Vec::with_capacity(self.cfg.job.lanes);
        for _ in 0..self.cfg.job.lanes {
            // bounded: a slow lane holds the reader back instead of piling up events in memory
            let (tx, rx) = mpsc::channel::<Work>(16);
            lanes.push(tx);
            workers.push(tokio::spawn(lane(self.clone(), consumer.clone(), offsets.clone(), rx, stop.clone())));
        }
        tracing::info!(group = %self.cfg.job.group, lanes = lanes.len(), "push job consuming {MESSAGE_SENT_TOPIC}");
        let pruner = tokio::spawn(store::prune_forever(self.pool.clone(), stop.clone()));
        loop {
            let m = tokio::select! {
                m = consumer.recv() => m,
                _ = stop.changed() => break,
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    metrics::counter!("notification_consumer_errors_total").increment(1);
                    tracing::warn!(error = %e, "consuming message.sent");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let headers = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default();
            let work = Work {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            };
            drop(m);
            offsets.lock().unwrap().start(work.partition, work.offset);
            let lane = lane_of(&work.key, lanes.len());
            if lanes[lane].send(work).await.is_err() {
                anyhow::bail!("lane {lane} stopped");
            }
        }
        // leave the group first, committing what is done: the other instances take the partitions
        // over now instead of waiting for this drain (the events still in the lanes are redelivered
        // to them, and their claims are found done, or held until this instance finishes them)
        tracing::info!(in_flight = offsets.lock().unwrap().in_flight(), "push job draining");
        // (a synchronous commit: off the runtime's cooperative threads)
        tokio::task::block_in_place(|| {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "committing offsets before leaving");
            }
            consumer.unsubscribe();
        });
        drop(lanes);
        for w in workers {
            let _ = w.await;
        }
        // the comparisons under way finish (each waits at most the shadow wait)
        let _ = tokio::time::timeout(self.cfg.job.shadow_wait * 2, self.shadow_slots.acquire_many(SHADOW_SLOTS as u32)).await;
        let _ = pruner.await;
        tracing::info!("push job stopped");
        Ok(())
    }

    /// One event, to the end: pushed (or shadowed), or on the dead-letter topic. Never gives up
    /// on the database or the broker (it waits for them); gives up on FCM after the attempts.
    pub async fn handle(&self, w: &Work) {
        let event = match MessageSent::parse(&w.payload) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!("notification_events_total", "result" => "poison").increment(1);
                tracing::warn!(partition = w.partition, offset = w.offset, error = %e, "an event the push job cannot read");
                self.dead_letter(w, &e.to_string(), None, 0).await;
                return;
            }
        };
        if !event.notifications_written {
            self.write_notifications(&event).await;
        }
        if event.pushed_in_process {
            // compared off the lane: the wait for the producer's log must not hold back the
            // events behind it (under load the in-process pushes lag seconds). Bounded: a full
            // set of comparisons holds the lane until one finishes.
            let permit = self.shadow_slots.clone().acquire_owned().await.expect("the shadow slots are never closed");
            let (pool, wait, at) = (self.pool.clone(), self.cfg.job.shadow_wait, (w.partition, w.offset));
            tokio::spawn(async move {
                let devices = store::devices(&pool, &event.recipients).await;
                crate::shadow::compare(&pool, wait, &event, &devices, at).await;
                metrics::counter!("notification_events_total", "result" => "shadowed").increment(1);
                drop(permit);
            });
            return;
        }
        let devices = self.devices(&event.recipients).await;
        let content = for_event(&event);
        // a few requests at a time per event: a group of thousands must not hold every pooled
        // connection (and so outlive its leases) at once
        let slots = tokio::sync::Semaphore::new(PUSHES_PER_EVENT);
        futures_util::future::join_all(devices.iter().map(|d| async {
            let _slot = slots.acquire().await.expect("never closed");
            self.push(w, &event, d, &content).await
        }))
        .await;
        metrics::counter!("notification_events_total", "result" => "pushed").increment(1);
    }

    /// The recipients' `message.new` notifications of a message written on a chat shard
    /// ([`NotificationWriter::write`]).
    pub async fn write_notifications(&self, e: &MessageSent) {
        self.notifications.write(e).await;
    }

    /// The recipients' devices now (as the monolith read them at push time).
    pub async fn devices(&self, recipients: &[Uuid]) -> Vec<Device> {
        store::devices(&self.pool, recipients).await
    }

    async fn push(&self, w: &Work, e: &MessageSent, d: &Device, content: &PushContent) {
        let Some((mut attempts, mine)) = self.claim(e, d).await else {
            metrics::counter!("notification_pushes_total", "outcome" => "duplicate").increment(1);
            return;
        };
        let body = fcm_request(&d.token, content);
        loop {
            // `attempts` counts the attempts started, this one included (marked in flight)
            let outcome = self.fcm.send(&body).await;
            metrics::counter!("notification_push_attempts_total").increment(1);
            let (status, error) = match &outcome {
                Outcome::Sent => ("sent", None),
                Outcome::Unregistered => ("unregistered", None),
                Outcome::Retry(why) if attempts < self.cfg.job.max_attempts => ("sending", Some(why.clone())),
                Outcome::Retry(why) | Outcome::Refused(why) => ("dead", Some(why.clone())),
            };
            if status == "dead" {
                let why = error.clone().unwrap_or_default();
                tracing::warn!(user = %d.user_id, attempts, error = %why, "giving up on a push: dead-letter topic");
                self.dead_letter(w, &why, Some(d.user_id), attempts).await;
            }
            // the outcome; the lease is renewed with every attempt. Fenced by the claim: if another
            // instance took the push over (this one stalled past its lease), it is theirs now
            let lease = self.cfg.job.lease.as_secs_f64();
            let recorded = retry_db("recording a push", || {
                sqlx::query(
                    "UPDATE notification.pushes SET status = $3, attempts = $4, last_error = $5, in_flight = false, updated_at = now(),
                            lease_until = now() + make_interval(secs => $6)
                     WHERE event_id = $1 AND token = $2 AND claim = $7",
                )
                .bind(e.id)
                .bind(&d.token)
                .bind(status)
                .bind(attempts as i32)
                .bind(error.as_deref())
                .bind(lease)
                .bind(mine)
                .execute(&self.pool)
            })
            .await;
            if recorded.rows_affected() == 0 {
                metrics::counter!("notification_pushes_total", "outcome" => "lease_lost").increment(1);
                tracing::warn!(user = %d.user_id, "a push's lease was taken over by another instance: leaving it to them");
                return;
            }
            if status == "unregistered" {
                // the app was uninstalled or the token expired: stop pushing to it (unless it
                // moved). After the outcome is recorded: a crash in between leaves the device, and
                // the next event is told UNREGISTERED again, instead of a push row left in flight
                // for a device that is gone (a redelivery no longer finds it)
                retry_db("deleting an unregistered device", || {
                    sqlx::query("DELETE FROM legacy.devices WHERE token = $1 AND user_id = $2")
                        .bind(&d.token)
                        .bind(d.user_id)
                        .execute(&self.pool)
                })
                .await;
                tracing::info!(user = %d.user_id, "device token is unregistered: removed");
            }
            match status {
                "sending" => {
                    metrics::counter!("notification_pushes_total", "outcome" => "retried").increment(1);
                    let backoff = self.cfg.job.retry_base.saturating_mul(1 << (attempts - 1).min(16)).min(Duration::from_secs(10));
                    tokio::time::sleep(backoff).await;
                    attempts += 1;
                    let started = retry_db("starting an attempt", || {
                        sqlx::query(
                            "UPDATE notification.pushes SET attempts = $3, in_flight = true, updated_at = now(),
                                    lease_until = now() + make_interval(secs => $4)
                             WHERE event_id = $1 AND token = $2 AND claim = $5 AND status = 'sending'",
                        )
                        .bind(e.id)
                        .bind(&d.token)
                        .bind(attempts as i32)
                        .bind(lease)
                        .bind(mine)
                        .execute(&self.pool)
                    })
                    .await;
                    if started.rows_affected() == 0 {
                        metrics::counter!("notification_pushes_total", "outcome" => "lease_lost").increment(1);
                        return;
                    }
                }
                _ => {
                    metrics::counter!("notification_pushes_total", "outcome" => status).increment(1);
                    if status == "sent" {
                        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(&e.occurred_at) {
                            let delay = (chrono::Utc::now() - at.to_utc()).to_std().unwrap_or_default();
                            metrics::histogram!("notification_push_delay_seconds").record(delay.as_secs_f64());
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Claims (event, device) for this instance, marking an attempt under way: `Some(attempts
    /// started so far)` when it is ours to send, `None` when it is already finished. Waits while
    /// another live instance holds it; takes it over once that one's lease has expired.
    async fn claim(&self, e: &MessageSent, d: &Device) -> Option<(u32, Uuid)> {
        let lease = self.cfg.job.lease.as_secs_f64();
        loop {
            let mine = Uuid::new_v4();
            let fresh: Option<i32> = retry_db("claiming a push", || {
                sqlx::query_scalar(
                    "INSERT INTO notification.pushes (event_id, token, message_id, user_id, status, attempts, in_flight, lease_until, claim)
                     VALUES ($1, $2, $3, $4, 'sending', 1, true, now() + make_interval(secs => $5), $6)
                     ON CONFLICT (event_id, token) DO NOTHING RETURNING attempts",
                )
                .bind(e.id)
                .bind(&d.token)
                .bind(e.message_id)
                .bind(d.user_id)
                .bind(lease)
                .bind(mine)
                .fetch_optional(&self.pool)
            })
            .await;
            if fresh.is_some() {
                return Some((1, mine));
            }
            match self.take_over(e, d, mine).await {
                TakeOver::Done => return None,
                TakeOver::Ours(attempts) => return Some((attempts, mine)),
                // another instance is sending it (a rebalance handed us its event): wait for it
                TakeOver::Held => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn take_over(&self, e: &MessageSent, d: &Device, mine: Uuid) -> TakeOver {
        let lease = self.cfg.job.lease.as_secs_f64();
        let attempt = async {
            let mut tx = self.pool.begin().await?;
            let row: Option<(String, bool, bool, i32)> = sqlx::query_as(
                "SELECT status, lease_until < now(), in_flight, attempts FROM notification.pushes WHERE event_id = $1 AND token = $2 FOR UPDATE",
            )
            .bind(e.id)
            .bind(&d.token)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((status, expired, in_flight, attempts)) = row else { return Ok(TakeOver::Held) };
            if status != "sending" {
                return Ok(TakeOver::Done);
            }
            if !expired {
                return Ok(TakeOver::Held);
            }
            if in_flight {
                // its sender died mid-request: FCM may have it. Sent again (a lost push is worse
                // than a double), and counted: the one way a device gets a push twice
                metrics::counter!("notification_pushes_total", "outcome" => "resent_unknown").increment(1);
                tracing::warn!(user = %d.user_id, "a push's sender died mid-request: sending it again");
            }
            sqlx::query(
                "UPDATE notification.pushes SET attempts = attempts + 1, in_flight = true, resent_unknown = resent_unknown + $3::int,
                        lease_until = now() + make_interval(secs => $4), updated_at = now(), claim = $5
                 WHERE event_id = $1 AND token = $2",
            )
            .bind(e.id)
            .bind(&d.token)
            .bind(i32::from(in_flight))
            .bind(lease)
            .bind(mine)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(TakeOver::Ours(attempts as u32 + 1))
        };
        match attempt.await {
            Ok(t) => t,
            Err(err) => {
                metrics::counter!("notification_db_errors_total").increment(1);
                tracing::warn!(error = %err, "taking over a push; retrying");
                TakeOver::Held
            }
        }
    }

    /// Puts the record on the dead-letter topic with why; retried until the broker takes it (a
    /// poison message is never dropped).
    async fn dead_letter(&self, w: &Work, reason: &str, user: Option<Uuid>, attempts: u32) {
        let user = user.map(|u| u.to_string()).unwrap_or_default();
        let attempts = attempts.to_string();
        let partition = w.partition.to_string();
        let offset = w.offset.to_string();
        loop {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &w.headers {
                if [HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION].contains(&k.as_str()) {
                    headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
                }
            }
            let headers = headers
                .insert(Header { key: "dead-letter-reason", value: Some(reason) })
                .insert(Header { key: "dead-letter-user", value: Some(user.as_str()) })
                .insert(Header { key: "dead-letter-attempts", value: Some(attempts.as_str()) })
                .insert(Header { key: "dead-letter-from", value: Some(format!("{MESSAGE_SENT_TOPIC}/{partition}@{offset}").as_str()) });
            let record = FutureRecord::to(PUSH_DEAD_LETTER_TOPIC).key(&w.key).payload(&w.payload).headers(headers);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => {
                    metrics::counter!("notification_dead_letters_total").increment(1);
                    return;
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, "publishing to the dead-letter topic; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Writes the `message.new` rows of events whose message was written on a chat shard, several
/// events' in one statement: the lanes hand their rows to one task, which writes the first that
/// arrives with every other already waiting (up to [`NOTIFICATION_BATCH`] events), then lets
/// each lane go on. Nothing waits to gather a batch: while one statement runs the next batch
/// queues (as a group commit does), so under load the lanes share statements (one transaction
/// on the main database per batch, not one per message) and when idle an event's rows go at
/// once. The task retries the database until it answers and ends with the writer.
pub struct NotificationWriter {
    tx: mpsc::Sender<Notifications>,
    batches: Arc<std::sync::atomic::AtomicU64>,
}

impl NotificationWriter {
    /// Starts the writer's task on the current runtime.
    pub fn start(pool: PgPool) -> NotificationWriter {
        let (tx, rx) = mpsc::channel(NOTIFICATION_BATCH);
        let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(write_notifications_forever(pool, rx, batches.clone()));
        NotificationWriter { tx, batches }
    }

    /// The recipients' `message.new` notifications of a message written on a chat shard (whose
    /// transaction cannot reach `legacy.notifications`): one row each, with an id derived from
    /// the event, so a second delivery writes nothing; a recipient whose account is gone is
    /// skipped (the message's transaction would have written nothing for them either). Returns
    /// once the rows are written, however long the database takes: the event is not done
    /// before its rows are.
    pub async fn write(&self, e: &MessageSent) {
        let at = chrono::DateTime::parse_from_rfc3339(&e.occurred_at).map(|t| t.with_timezone(&chrono::Utc)).ok();
        let ids = e.recipients.iter().map(|r| e.notification_id(*r)).collect();
        let payload = e.notification_payload().to_string();
        let (written, done) = tokio::sync::oneshot::channel();
        // the task lives as long as this writer; if it died (a bug), the lane stops with its event
        // unfinished and its offset never stored: the job exits and the event is delivered again
        let rows = Notifications { ids, recipients: e.recipients.clone(), payload, at, written };
        if self.tx.send(rows).await.is_err() || done.await.is_err() {
            panic!("the notification writer is gone: leaving the event for redelivery");
        }
    }

    /// Statements written so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn write_notifications_forever(pool: PgPool, mut rx: mpsc::Receiver<Notifications>, batches: Arc<std::sync::atomic::AtomicU64>) {
    let mut batch = Vec::with_capacity(NOTIFICATION_BATCH);
    while rx.recv_many(&mut batch, NOTIFICATION_BATCH).await > 0 {
        let n: usize = batch.iter().map(|b| b.ids.len()).sum();
        let (mut ids, mut users, mut payloads, mut ats) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for b in &batch {
            ids.extend_from_slice(&b.ids);
            users.extend_from_slice(&b.recipients);
            payloads.extend(std::iter::repeat_n(b.payload.as_str(), b.ids.len()));
            ats.extend(std::iter::repeat_n(b.at, b.ids.len()));
        }
        let written: u64 = retry_db("writing messages' notifications", || async {
            sqlx::query(
                "INSERT INTO legacy.notifications (id, user_id, kind, payload, created_at)
                 SELECT n.id, n.user_id, 'message.new', n.payload::jsonb, COALESCE(n.at, now())
                 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]) AS n (id, user_id, payload, at)
                 WHERE EXISTS (SELECT 1 FROM legacy.users u WHERE u.id = n.user_id)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&ids)
            .bind(&users)
            .bind(&payloads)
            .bind(&ats)
            .execute(&pool)
            .await
            .map(|r| r.rows_affected())
        })
        .await;
        batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("notification_rows_written_total").increment(written);
        metrics::counter!("notification_row_batches_total").increment(1);
        for b in batch.drain(..) {
            // a lane gone meanwhile (its task aborted) needs no answer
            let _ = b.written.send(());
        }
    }
}

async fn lane(
    job: Arc<Job>,
    consumer: Arc<PushConsumer>,
    offsets: Arc<Mutex<Offsets>>,
    mut rx: mpsc::Receiver<Work>,
    stop: watch::Receiver<bool>,
) {
    while let Some(w) = rx.recv().await {
        if *stop.borrow() {
            // draining: what is queued is left for the next owner (its offset was never stored),
            // so the drain fits in the grace period and no push is cut off mid-request
            continue;
        }
        job.handle(&w).await;
        let next = offsets.lock().unwrap().done(w.partition, w.offset);
        if let Some(next) = next {
            // `next` is the next offset to read, stored as is (`rd_kafka_offsets_store`;
            // `store_offset` would add one and skip an event at every hand-over). Fails for a
            // partition this instance no longer owns (a rebalance): its new owner starts from
            // the last commit and finds these pushes done.
            let mut tpl = TopicPartitionList::new();
            if tpl.add_partition_offset(MESSAGE_SENT_TOPIC, w.partition, Offset::Offset(next)).is_ok() {
                let _ = consumer.store_offsets(&tpl);
            }
        }
    }
}

/// The lane of a key (a chat id): stable, so a chat's events stay in one lane.
pub fn lane_of(key: &[u8], lanes: usize) -> usize {
    // FNV-1a: small and stable across processes and versions
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_keeps_its_lane() {
        let key = b"0e5b3c7a-0000-4000-8000-000000000001";
        assert_eq!(lane_of(key, 16), lane_of(key, 16));
        let spread: std::collections::HashSet<usize> = (0..200).map(|i| lane_of(format!("chat-{i}").as_bytes(), 16)).collect();
        assert!(spread.len() > 12, "keys spread over the lanes: {spread:?}");
    }
}
