//! `messageAdded` across processes: Redis pub/sub, shared with the monolith.
//!
//! While the chat route moves, some members send through the monolith and some through this
//! service, and a subscriber's socket may be on either side: both must see every new message. So
//! both publish each new message, after its commit, on the Redis channel `messageAdded:<chatId>`
//! as `{"messageAdded": <Message>}` — the message as GraphQL returns it (ISO dates, `sender`
//! object) plus its `seq` — and both deliver what arrives there to their own subscribers
//! (the monolith through graphql-redis-subscriptions, `legacy/src/chat/chat.bus.ts`).
//!
//! Here one connection pattern-subscribes to `messageAdded:*` and hands each message to the
//! local subscribers of that chat through a bounded broadcast channel. It reconnects with backoff
//! after losing Redis; what is published meanwhile is not replayed (as before: clients re-fetch
//! `messages` after a reconnect, docs/api/chat.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{Stream, StreamExt};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::errors::{ChatError, Result};
use crate::schema::Message;
use crate::store::MessageRow;

const PATTERN: &str = "messageAdded:*";
/// Messages a slow subscriber may fall behind by before it misses some (counted).
const SUBSCRIBER_BUFFER: usize = 256;

pub fn channel(chat: Uuid) -> String {
    format!("messageAdded:{chat}")
}

/// The message as it travels on the bus (the monolith's `Message` object, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireMessage {
    pub id: Uuid,
    pub seq: String,
    pub chat_id: Uuid,
    pub sender_id: Uuid,
    pub sender: WireUser,
    pub body: String,
    pub client_message_id: Option<String>,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub deleted_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireUser {
    pub id: Uuid,
    pub display_name: String,
    pub avatar_url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    message_added: WireMessage,
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|d| d.with_timezone(&Utc))
}

impl From<&MessageRow> for WireMessage {
    fn from(r: &MessageRow) -> Self {
        WireMessage {
            id: r.id,
            seq: r.seq.to_string(),
            chat_id: r.chat_id,
            sender_id: r.sender_id,
            sender: WireUser { id: r.sender_id, display_name: r.sender_display_name.clone(), avatar_url: r.sender_avatar_url.clone() },
            body: if r.deleted_at.is_some() { String::new() } else { r.body.clone() },
            client_message_id: r.client_message_id.clone(),
            created_at: iso(r.created_at),
            edited_at: r.edited_at.map(iso),
            deleted_at: r.deleted_at.map(iso),
        }
    }
}

impl WireMessage {
    fn into_row(self) -> Option<MessageRow> {
        Some(MessageRow {
            id: self.id,
            seq: self.seq.parse().ok()?,
            chat_id: self.chat_id,
            sender_id: self.sender_id,
            body: self.body,
            client_message_id: self.client_message_id,
            created_at: parse(&self.created_at)?,
            edited_at: self.edited_at.as_deref().and_then(parse),
            deleted_at: self.deleted_at.as_deref().and_then(parse),
            sender_display_name: self.sender.display_name,
            sender_avatar_url: self.sender.avatar_url,
        })
    }
}

/// The encoded bus message for a new message.
pub fn encode(r: &MessageRow) -> String {
    serde_json::to_string(&Envelope { message_added: WireMessage::from(r) }).expect("a message serialises")
}

/// The message in a bus payload, if it is one.
pub fn decode(payload: &str) -> Option<MessageRow> {
    serde_json::from_str::<Envelope>(payload).ok()?.message_added.into_row()
}

type Subscribers = Arc<Mutex<HashMap<Uuid, broadcast::Sender<Arc<MessageRow>>>>>;

/// Publishes to Redis; delivers from Redis to this process's subscribers.
#[derive(Clone)]
pub struct Bus {
    redis: redis::aio::ConnectionManager,
    // A std mutex: held for map updates only, never across an `.await`.
    subscribers: Subscribers,
    connected: Arc<AtomicBool>,
}

impl Bus {
    /// Starts the pattern subscription (reconnecting until `shutdown` fires).
    pub fn start(
        client: redis::Client,
        redis: redis::aio::ConnectionManager,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (Bus, tokio::task::JoinHandle<()>) {
        let subscribers: Subscribers = Arc::default();
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(listen(client, subscribers.clone(), connected.clone(), shutdown));
        (Bus { redis, subscribers, connected }, task)
    }

    /// Whether the subscription to `messageAdded:*` is up (readiness).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Announces a new message to every subscriber of its chat, on both sides.
    pub async fn publish(&self, message: &MessageRow) {
        let mut r = self.redis.clone();
        match r.publish::<_, _, i64>(channel(message.chat_id), encode(message)).await {
            Ok(_) => metrics::counter!("chat_bus_published_total").increment(1),
            Err(e) => {
                metrics::counter!("chat_bus_errors_total", "op" => "publish").increment(1);
                tracing::error!(error = %e, chat = %message.chat_id, "publishing messageAdded failed: live subscribers miss this message");
            }
        }
    }

    /// New messages of `chat` from now on.
    pub async fn subscribe(&self, chat: Uuid) -> Result<impl Stream<Item = Message>> {
        let rx = {
            let mut subs = self.subscribers.lock().map_err(|_| ChatError::Internal)?;
            subs.entry(chat).or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0).subscribe()
        };
        Ok(tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|m| async move {
            match m {
                Ok(row) => Some(Message::from((*row).clone())),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    metrics::counter!("chat_bus_subscriber_lagged_total").increment(n);
                    None
                }
            }
        }))
    }
}

async fn listen(
    client: redis::Client,
    subscribers: Subscribers,
    connected: Arc<AtomicBool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribing = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(PATTERN).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            r = subscribing => r,
            _ = shutdown.changed() => return,
        };
        match pubsub {
            Err(e) => {
                metrics::counter!("chat_bus_errors_total", "op" => "subscribe").increment(1);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot subscribe to messageAdded on Redis");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                tracing::info!("subscribed to messageAdded on Redis");
                metrics::gauge!("chat_bus_connected").set(1.0);
                connected.store(true, Ordering::Relaxed);
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        m = messages.next() => m,
                        _ = shutdown.changed() => return,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<String>() else { continue };
                    let Some(row) = decode(&payload) else {
                        metrics::counter!("chat_bus_errors_total", "op" => "decode").increment(1);
                        continue;
                    };
                    deliver(&subscribers, row);
                }
                metrics::gauge!("chat_bus_connected").set(0.0);
                connected.store(false, Ordering::Relaxed);
                tracing::warn!("lost the messageAdded subscription on Redis; reconnecting");
            }
        }
    }
}

fn deliver(subscribers: &Subscribers, row: MessageRow) {
    let mut subs = subscribers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = subs.get(&row.chat_id) {
        if tx.send(Arc::new(row.clone())).is_err() {
            // nobody listens any more
            subs.remove(&row.chat_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_messages_are_the_monoliths_message_objects_and_round_trip() {
        let row = MessageRow {
            id: Uuid::nil(),
            seq: 100211,
            chat_id: Uuid::from_u128(1),
            sender_id: Uuid::from_u128(2),
            body: "hi".into(),
            client_message_id: Some("c-1".into()),
            created_at: parse("2026-12-01T09:33:12.024Z").unwrap(),
            edited_at: None,
            deleted_at: None,
            sender_display_name: "Ann".into(),
            sender_avatar_url: None,
        };
        let text = encode(&row);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["messageAdded"]["createdAt"], "2026-12-01T09:33:12.024Z");
        assert_eq!(v["messageAdded"]["seq"], "100211");
        assert_eq!(v["messageAdded"]["sender"]["displayName"], "Ann");
        assert_eq!(v["messageAdded"]["chatId"], "00000000-0000-0000-0000-000000000001");
        assert_eq!(decode(&text), Some(row));
        assert_eq!(decode("{\"other\":1}"), None);
    }
}
