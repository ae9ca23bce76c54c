//! The outbox relay: publishes `legacy.outbox` rows to Kafka in `seq` order and marks them
//! published (docs/events.md "The outbox").
//!
//! - **One relay at a time.** Every process that can relay (the monolith, extracted/chat) runs
//!   one; the one holding a session advisory lock ([`LOCK_KEY`], the same key in the monolith's
//!   kafkajs relay) publishes, the others wait to take over. One publisher in `seq` order keeps a
//!   chat's events in order.
//! - **At least once.** A row is marked only after the broker acknowledged it (`acks=all`); a
//!   crash or a broker restart in between publishes it again. Within a batch one key's rows go
//!   one after another, each acknowledged before the next: a failed row stops its key, so a
//!   chat's later event never lands before an earlier one.
//! - **Wakes on commit.** The writer's `pg_notify` wakes the relay at commit; a poll every
//!   `poll` catches anything a lost notification missed.
//! - Published rows are kept for `retention` (to inspect, or to replay by clearing
//!   `published_at`), then deleted.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::event::{HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION};
use crate::kafka::KafkaConfig;

/// `pg_try_advisory_lock` key of the relay (the bytes of "outbox"); the monolith's relay
/// (legacy/src/infra/outbox.ts) names the same number.
pub const LOCK_KEY: i64 = 0x6f75_7462_6f78;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per round trip to the broker.
    pub batch: i64,
    /// Longest wait for new rows without a notification (also how often a waiting relay tries
    /// to take the lead).
    pub poll: Duration,
    /// How long published rows are kept.
    pub retention: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig { batch: 500, poll: Duration::from_secs(1), retention: Duration::from_secs(24 * 3600) }
    }
}

pub struct Relay {
    pub pool: PgPool,
    pub kafka: KafkaConfig,
    pub cfg: RelayConfig,
    /// which outbox: the monolith's ([`crate::outbox::LEGACY`]) or a chat shard's (one relay per
    /// shard database; the lock is per database)
    pub table: crate::outbox::Table,
    /// the `outbox` label of its metrics: `legacy`, or the shard's name
    pub source: String,
}

/// The leader's producer. When it stops leading (an error, the lock lost, the task dropped), what
/// it still queues is purged, not delivered: the next leader publishes those rows again, and a
/// late delivery from the old one would land after the new one's, out of order.
struct Purging(FutureProducer);

impl Drop for Purging {
    fn drop(&mut self) {
        self.0.purge(PurgeConfig::default().queue().inflight());
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    topic: String,
    key: String,
    #[sqlx(rename = "type")]
    kind: String,
    version: i32,
    payload: String,
    created_at: DateTime<Utc>,
}

impl Relay {
    /// Relays until `stop` turns true; errors (the database or the broker away) are logged,
    /// counted and retried after a pause, with a fresh producer.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.lead(&mut stop).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::gauge!("outbox_relay_leader", "outbox" => self.source.clone()).set(0.0);
                    metrics::counter!("outbox_relay_errors_total", "outbox" => self.source.clone()).increment(1);
                    tracing::warn!(error = %format!("{e:#}"), "outbox relay: retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        metrics::gauge!("outbox_relay_leader", "outbox" => self.source.clone()).set(0.0);
    }

    /// Waits for the lead, then publishes until stopped (`Ok`) or something fails (`Err`).
    async fn lead(&self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        // the lock lives as long as this connection, which is never returned to the pool
        let mut lock = self.pool.acquire().await?.detach();
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut lock).await?;
            if got {
                break;
            }
            metrics::gauge!("outbox_relay_leader", "outbox" => self.source.clone()).set(0.0);
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll * 2) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
        tracing::info!("outbox relay: leading");
        metrics::gauge!("outbox_relay_leader", "outbox" => self.source.clone()).set(1.0);
        let producer = Purging(self.kafka.producer()?);
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(self.table.channel).await?;
        let mut pruned = Instant::now();
        let mut counted: Option<Instant> = None;
        self.prune().await?;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            // still the leader? (a lost lock connection means another relay may lead now)
            sqlx::query("SELECT 1").execute(&mut lock).await?;
            let n = self.publish_batch(&producer.0).await?;
            if pruned.elapsed() > Duration::from_secs(60) {
                self.prune().await?;
                pruned = Instant::now();
            }
            if n < self.cfg.batch as usize {
                // the gauge at most once a poll: under load a relay wakes at every commit, and a
                // count per wake was a third of its queries
                if counted.is_none_or(|t| t.elapsed() >= self.cfg.poll) {
                    self.count_pending().await;
                    counted = Some(Instant::now());
                }
                tokio::select! {
                    r = listener.recv() => { r?; }
                    _ = tokio::time::sleep(self.cfg.poll) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }

    /// Publishes the oldest unpublished rows and marks the acknowledged prefix; how many rows
    /// were read. An error leaves the unacknowledged rows for the next leader.
    async fn publish_batch(&self, producer: &FutureProducer) -> anyhow::Result<usize> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT id, topic, key, type, version, payload, created_at FROM {}
             WHERE published_at IS NULL ORDER BY seq LIMIT $1",
            self.table.name
        ))
        .bind(self.cfg.batch)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // one key (a chat) at a time, each record acknowledged before the next of its key is
        // sent; keys side by side. A record the broker fails (a restart answers some requests
        // with errors librdkafka does not retry) then stops its key: nothing later of that chat
        // can land before it. (Enqueuing the whole batch at once let a later request succeed
        // after an earlier one failed: out of order once the failed one was sent again.)
        let mut keys: Vec<(&str, Vec<&Row>)> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for r in &rows {
            let at = *index.entry(r.key.as_str()).or_insert_with(|| {
                keys.push((r.key.as_str(), Vec::new()));
                keys.len() - 1
            });
            keys[at].1.push(r);
        }
        let outcomes = futures_util::future::join_all(keys.iter().map(|(_, rows)| async move {
            let mut acked: Vec<&Row> = Vec::with_capacity(rows.len());
            for r in rows {
                let id = r.id.to_string();
                let version = r.version.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: HEADER_EVENT_ID, value: Some(id.as_str()) })
                    .insert(Header { key: HEADER_EVENT_TYPE, value: Some(r.kind.as_str()) })
                    .insert(Header { key: HEADER_EVENT_VERSION, value: Some(version.as_str()) });
                let record = FutureRecord::to(&r.topic).key(&r.key).payload(&r.payload).headers(headers);
                if let Err((e, _)) = producer.send(record, Duration::from_secs(30)).await {
                    return (acked, Some(anyhow::Error::from(e)));
                }
                acked.push(*r);
            }
            (acked, None)
        }))
        .await;
        let mut failure: Option<anyhow::Error> = None;
        let mut acked: Vec<&Row> = Vec::with_capacity(rows.len());
        for (a, e) in outcomes {
            acked.extend(a);
            if let Some(e) = e {
                failure.get_or_insert(e);
            }
        }
        if !acked.is_empty() {
            let ids: Vec<Uuid> = acked.iter().map(|r| r.id).collect();
            sqlx::query(&format!("UPDATE {} SET published_at = now() WHERE id = ANY($1)", self.table.name))
                .bind(&ids)
                .execute(&self.pool)
                .await?;
            let now = Utc::now();
            metrics::counter!("outbox_events_published_total", "outbox" => self.source.clone()).increment(acked.len() as u64);
            for r in &acked {
                let age = (now - r.created_at).to_std().unwrap_or_default();
                metrics::histogram!("outbox_publish_delay_seconds", "outbox" => self.source.clone()).record(age.as_secs_f64());
            }
        }
        match failure {
            Some(e) => {
                metrics::counter!("outbox_publish_failures_total", "outbox" => self.source.clone())
                    .increment((rows.len() - acked.len()) as u64);
                Err(e.context(format!("publishing: {} of {} acknowledged", acked.len(), rows.len())))
            }
            None => Ok(rows.len()),
        }
    }

    async fn prune(&self) -> anyhow::Result<()> {
        let gone = sqlx::query(&format!("DELETE FROM {} WHERE published_at < now() - make_interval(secs => $1)", self.table.name))
            .bind(self.cfg.retention.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if gone > 0 {
            tracing::debug!(gone, "outbox: pruned published rows");
        }
        Ok(())
    }

    async fn count_pending(&self) {
        if let Ok(n) = sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {} WHERE published_at IS NULL", self.table.name))
            .fetch_one(&self.pool)
            .await
        {
            metrics::gauge!("outbox_pending_events", "outbox" => self.source.clone()).set(n as f64);
        }
    }
}
