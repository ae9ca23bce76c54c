//! The inbox projection (docs/chat-sharding.md, "Why an inbox"): every member of a chat has a row
//! for it in their inbox, on their own shard (`chat.inbox`), so `chats` reads one shard. A
//! message's transaction writes the rows it can reach — those on the chat's home shard, and the
//! sender's; everyone else's come from here: a consumer group (`chat-inbox`, every instance of the
//! service) on `message.sent` and `chat.created` that reads the chat and its members where the
//! routing reads them and upserts each member's row on the member's shard.
//!
//! Rows are derived from the truth each time, and an upsert only moves `updated_at` forward, so
//! an event seen twice, late, or out of order with the mover's derivation changes nothing; a
//! member's list lags another member's message by this consumer's lag (`chat_inbox_consumer_lag`).
//! Nothing to do while every chat is written on the monolith's tables (then `chats` reads them):
//! events are consumed and their offsets committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bm_events::event::{chat_of, CHAT_CREATED_TOPIC, MESSAGE_SENT_TOPIC};
use bm_events::kafka::LagContext;
use bm_events::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::placement::Placement;
use crate::store;
use crate::store::ChatRow;

/// The longest a fetch waits at the broker for new events (`fetch.wait.max.ms`).
const FETCH_WAIT_MS: &str = "250";

/// The most events projected together, and how long a batch gathers events after its first:
/// under load a batch of a few dozen messages costs one read per database and one upsert per
/// shard instead of a read and up to three upserts each (a member's list trails another
/// member's message by this much more at most).
const BATCH: usize = 512;
const GATHER: Duration = Duration::from_millis(50);

/// Projects chats into their members' inboxes, from where the routing reads each chat now: one
/// read per database the chats are read from, one upsert per shard their members' inboxes are
/// on. A chat that is gone is nothing to project. Returns the rows written.
///
/// The rows on a chat's home shard are left alone: the transaction that wrote the event wrote
/// them (createChat's members there, a message's activity on them), so a direct chat of two
/// users on one shard costs only the read.
pub async fn project(placement: &Placement, chats: &[Uuid]) -> crate::errors::Result<usize> {
    // each chat's source from one reading of the routing (a move may switch reads meanwhile)
    let mut by_source: BTreeMap<String, (bool, PgPool, Vec<Uuid>)> = BTreeMap::new();
    for chat in chats {
        let (name, on_shard, pool) = placement.read_source(chat)?;
        by_source.entry(name).or_insert_with(|| (on_shard, pool, Vec::new())).2.push(*chat);
    }
    let mut found: Vec<ChatRow> = Vec::new();
    let mut members_of: Vec<Vec<Uuid>> = Vec::new();
    for (on_shard, pool, ids) in by_source.into_values() {
        let schema = if on_shard { "chat" } else { "legacy" };
        for (row, members) in store::on_shard::chats_and_members(&pool, schema, &ids).await? {
            found.push(row);
            members_of.push(members);
        }
    }
    // the rows to write, by the shard of each member's inbox
    type Rows<'a> = (PgPool, Vec<(Uuid, &'a ChatRow)>);
    let mut by_shard: BTreeMap<String, Rows> = BTreeMap::new();
    for (row, members) in found.iter().zip(members_of) {
        let home = placement.write_shard_name(&row.id);
        for m in members {
            if let Some((name, p)) = placement.inbox_shard(&m) {
                if home.as_deref() == Some(name.as_str()) {
                    continue;
                }
                by_shard.entry(name).or_insert_with(|| (p, Vec::new())).1.push((m, row));
            }
        }
    }
    let mut written = 0;
    for (_, (p, mut rows)) in by_shard {
        // one order for every batch: two batches never wait for each other's rows crosswise
        rows.sort_by_key(|(u, c)| (*u, c.id));
        store::on_shard::upsert_inbox_rows(&p, &rows).await?;
        written += rows.len();
    }
    Ok(written)
}

/// The projection's lag per partition of its topics (`topic`, `partition`; NaN once revoked).
const LAG_GAUGE: &str = "chat_inbox_consumer_lag";

/// Consumes until `stop`; a database error is retried (the event waits, nothing is skipped).
pub async fn run(placement: Arc<Placement>, kafka: KafkaConfig, group: String, mut stop: watch::Receiver<bool>) {
    let mut config = kafka.consumer_config(&group);
    // a list may trail a message by a few hundred milliseconds; the shared settings' 10 ms wait
    // made an idle broker answer a fetch every 10 ms for this group alone (the dev broker spent
    // 0.45 of a core on it, idle: docs/benchmarks.md)
    config.set("fetch.wait.max.ms", FETCH_WAIT_MS);
    bm_events::kafka::with_lag_statistics(&mut config);
    let consumer: StreamConsumer<LagContext> = match config.create_with_context(LagContext(LAG_GAUGE)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "inbox projection: no consumer; other members' chat lists will not follow");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[MESSAGE_SENT_TOPIC, CHAT_CREATED_TOPIC]) {
        tracing::error!(error = %e, "inbox projection: subscribing");
        return;
    }
    tracing::info!(group = %group, "inbox projection consuming {MESSAGE_SENT_TOPIC}, {CHAT_CREATED_TOPIC}");
    loop {
        // the events that arrive within GATHER of the first, up to BATCH: a busy chat's hundred
        // messages are one projection (every one derives the same rows from the truth)
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = stop.changed() => break,
        };
        let mut batch = match first {
            Ok(m) => vec![m],
            Err(e) => {
                metrics::counter!("chat_inbox_consumer_errors_total").increment(1);
                tracing::warn!(error = %e, "inbox projection: consuming");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let until = tokio::time::Instant::now() + GATHER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m),
                Ok(Err(e)) => {
                    metrics::counter!("chat_inbox_consumer_errors_total").increment(1);
                    tracing::warn!(error = %e, "inbox projection: consuming");
                    break;
                }
                Err(_) => break,
            }
        }
        let mut chats: Vec<Uuid> = Vec::with_capacity(batch.len());
        for m in &batch {
            match chat_of(m.payload().unwrap_or_default()) {
                None => {
                    metrics::counter!("chat_inbox_events_total", "result" => "unreadable").increment(1);
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        "inbox projection: an event without a chatId"
                    );
                }
                Some(_) if !placement.any_shard_writes() => {
                    metrics::counter!("chat_inbox_events_total", "result" => "skipped").increment(1);
                }
                Some(chat) => {
                    metrics::counter!("chat_inbox_events_total", "result" => "projected").increment(1);
                    if !chats.contains(&chat) {
                        chats.push(chat);
                    }
                }
            }
        }
        if !chats.is_empty() {
            let mut pause = Duration::from_millis(100);
            loop {
                match project(&placement, &chats).await {
                    Ok(n) => {
                        metrics::counter!("chat_inbox_projections_total").increment(1);
                        metrics::counter!("chat_inbox_rows_written_total").increment(n as u64);
                        break;
                    }
                    Err(e) => {
                        metrics::counter!("chat_inbox_errors_total").increment(1);
                        tracing::warn!(chats = chats.len(), error = ?e, "inbox projection: retrying in {pause:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.changed() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        // only now: a crash before this point projects the batch again (idempotent)
        for m in &batch {
            if let Err(e) = consumer.store_offset_from_message(m) {
                tracing::warn!(error = %e, "inbox projection: storing an offset");
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(error = %e, "inbox projection: committing offsets before leaving");
    }
}
