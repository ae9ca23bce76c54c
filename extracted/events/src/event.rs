//! The events, as they travel: JSON documents described by JSON Schemas in `docs/events/`
//! (`message.sent.v1.json`), one topic per event type, keyed so that one chat's events stay in
//! one partition and so in order. docs/events.md says why JSON Schema and how versions evolve.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Topic of [`MessageSent`].
pub const MESSAGE_SENT_TOPIC: &str = "message.sent";
/// Where the push job puts an event it gave up on (docs/events.md "Dead letters").
pub const PUSH_DEAD_LETTER_TOPIC: &str = "notification.push.dead-letter";

/// Every topic the stack needs, with its partition count (created by `bm-events ensure-topics`;
/// brokers here do not auto-create topics, and production ones should not).
pub const TOPICS: &[(&str, i32)] = &[(MESSAGE_SENT_TOPIC, 4), (PUSH_DEAD_LETTER_TOPIC, 1), (CHAT_CREATED_TOPIC, 4)];

/// Topic of [`ChatCreated`].
pub const CHAT_CREATED_TOPIC: &str = "chat.created";

/// `chat.created` v1: a chat was created on a chat shard (docs/events/chat.created.v1.json). The
/// inbox projection gives the members whose inboxes are on other shards their row. Key: `chatId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatCreated {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: String,
    pub producer: String,
    pub chat_id: Uuid,
    /// every member, the creator first
    pub member_ids: Vec<Uuid>,
}

impl ChatCreated {
    pub const TYPE: &'static str = "chat.created";
    pub const VERSION: u32 = 1;

    pub fn new(chat_id: Uuid, member_ids: Vec<Uuid>, at: DateTime<Utc>) -> Self {
        ChatCreated {
            id: Uuid::new_v4(),
            kind: Self::TYPE.into(),
            version: Self::VERSION,
            occurred_at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            producer: "chat".into(),
            chat_id,
            member_ids,
        }
    }

    pub fn to_outbox(&self) -> crate::outbox::NewEvent {
        crate::outbox::NewEvent {
            id: self.id,
            topic: CHAT_CREATED_TOPIC,
            key: self.chat_id.to_string(),
            kind: Self::TYPE,
            version: Self::VERSION as i32,
            payload: serde_json::to_string(self).expect("an event serialises"),
        }
    }
}

/// The chat an event of either chat topic is about (`chatId`), for consumers that only need that.
pub fn chat_of(payload: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Any {
        chat_id: Uuid,
    }
    serde_json::from_slice::<Any>(payload).ok().map(|a| a.chat_id)
}

/// The namespace of [`MessageSent::notification_id`] (a v4 drawn once for this purpose).
const NOTIFICATION_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c2e_9a4d_4e8b_b7c1_52d0_e3f4_a9c6);

/// Kafka record headers every event carries, so a consumer can route and deduplicate without
/// parsing the payload.
pub const HEADER_EVENT_ID: &str = "event-id";
pub const HEADER_EVENT_TYPE: &str = "event-type";
pub const HEADER_EVENT_VERSION: &str = "event-version";

/// `message.sent` v1: a message was committed (never for an idempotent repeat, a dry run or a
/// rolled-back transaction). Written by whichever side handled `sendMessage` (the monolith or
/// extracted/chat), in the message's transaction. Key: `chatId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageSent {
    /// The event's own id: consumers deduplicate by it (delivery is at least once).
    pub id: Uuid,
    /// Always `"message.sent"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 1 for this struct.
    pub version: u32,
    /// When the message's transaction wrote the event (RFC 3339, UTC, milliseconds).
    pub occurred_at: String,
    /// `"monolith"` or `"chat"`: who wrote it (for tracing a migration, never for logic).
    pub producer: String,
    pub chat_id: Uuid,
    pub message_id: Uuid,
    /// The message's position (`messages.seq`, a decimal string: it is a 64-bit integer).
    pub seq: String,
    pub sender_id: Uuid,
    pub sender_name: String,
    /// The group's title; `null` for a direct chat or an untitled group.
    pub chat_title: Option<String>,
    /// The whole body (consumers make their own previews).
    pub body: String,
    /// The other members when the message was sent: who is notified. Fixed in the transaction,
    /// so a member who leaves or joins later does not change who this message notifies.
    pub recipients: Vec<Uuid>,
    /// Whether the producer pushed this message in-process itself (`legacy.push_owner` was
    /// `monolith` in its transaction): the push job then only compares, it does not push.
    /// A field of the migration: gone in v2 once the monolith is off.
    pub pushed_in_process: bool,
    /// Whether the recipients' `message.new` notifications were written in the message's
    /// transaction (always, on the monolith's tables). `false` for a message written on a chat
    /// shard: its transaction cannot reach `legacy.notifications`, so the push job writes them
    /// from this event ([`MessageSent::notification_id`]). Absent in the JSON when true, so the
    /// events of the monolith's tables read as before.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub notifications_written: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

impl MessageSent {
    pub const TYPE: &'static str = "message.sent";
    pub const VERSION: u32 = 1;

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        producer: &str,
        chat_id: Uuid,
        message_id: Uuid,
        seq: i64,
        sender_id: Uuid,
        sender_name: &str,
        chat_title: Option<&str>,
        body: &str,
        recipients: Vec<Uuid>,
        pushed_in_process: bool,
        at: DateTime<Utc>,
    ) -> Self {
        MessageSent {
            id: Uuid::new_v4(),
            kind: Self::TYPE.to_string(),
            version: Self::VERSION,
            occurred_at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            producer: producer.to_string(),
            chat_id,
            message_id,
            seq: seq.to_string(),
            sender_id,
            sender_name: sender_name.to_string(),
            chat_title: chat_title.map(str::to_string),
            body: body.to_string(),
            recipients,
            pushed_in_process,
            notifications_written: true,
        }
    }

    /// The id of `recipient`'s `message.new` notification written from this event: the same
    /// for every delivery of the event (delivery is at least once), different per recipient.
    pub fn notification_id(&self, recipient: Uuid) -> Uuid {
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(self.id.as_bytes());
        name[16..].copy_from_slice(recipient.as_bytes());
        Uuid::new_v5(&NOTIFICATION_NAMESPACE, &name)
    }

    /// The payload of the `message.new` notification (as the message's transaction writes it:
    /// legacy/src/chat/chat.service.ts, extracted/chat's store).
    pub fn notification_payload(&self) -> serde_json::Value {
        serde_json::json!({
            "chatId": self.chat_id,
            "messageId": self.message_id,
            "senderId": self.sender_id,
            "senderName": self.sender_name,
            "chatTitle": self.chat_title,
            "preview": crate::push::preview(&self.body),
        })
    }

    /// The outbox row for this event.
    pub fn to_outbox(&self) -> crate::outbox::NewEvent {
        crate::outbox::NewEvent {
            id: self.id,
            topic: MESSAGE_SENT_TOPIC,
            key: self.chat_id.to_string(),
            kind: Self::TYPE,
            version: Self::VERSION as i32,
            payload: serde_json::to_string(self).expect("an event serialises"),
        }
    }

    /// Reads a `message.sent` payload, refusing another type or version (a consumer of v1 must
    /// not guess at v2: it goes to the dead-letter topic with the reason).
    pub fn parse(payload: &[u8]) -> Result<Self, EventError> {
        let e: MessageSent = serde_json::from_slice(payload).map_err(|e| EventError::Malformed(e.to_string()))?;
        if e.kind != Self::TYPE || e.version != Self::VERSION {
            return Err(EventError::Unsupported { kind: e.kind, version: e.version });
        }
        Ok(e)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("not a message.sent v1 event: {0}")]
    Malformed(String),
    #[error("event type {kind} version {version} is not one this consumer reads (message.sent v1)")]
    Unsupported { kind: String, version: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MessageSent {
        let at = DateTime::parse_from_rfc3339("2026-02-03T04:05:06.789Z").unwrap().with_timezone(&Utc);
        MessageSent::new("chat", Uuid::nil(), Uuid::max(), 42, Uuid::nil(), "Ann", None, "hi", vec![Uuid::max()], true, at)
    }

    #[test]
    fn round_trips_and_is_keyed_by_chat() {
        let e = sample();
        let row = e.to_outbox();
        assert_eq!(row.key, Uuid::nil().to_string());
        assert_eq!(MessageSent::parse(row.payload.as_bytes()).unwrap(), e);
        assert!(row.payload.contains("\"occurredAt\":\"2026-02-03T04:05:06.789Z\""));
        assert!(row.payload.contains("\"seq\":\"42\""));
    }

    #[test]
    fn notifications_written_is_true_unless_said_and_its_notifications_have_stable_ids() {
        let e = sample();
        assert!(!e.to_outbox().payload.contains("notificationsWritten"), "absent when true: the monolith's events as before");
        let mut s = sample();
        s.notifications_written = false;
        let back = MessageSent::parse(s.to_outbox().payload.as_bytes()).unwrap();
        assert!(!back.notifications_written);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(s.notification_id(a), back.notification_id(a), "every delivery writes the same row");
        assert_ne!(s.notification_id(a), s.notification_id(b));
        assert_ne!(s.notification_id(a), sample().notification_id(a), "another event, another row");
        assert_eq!(s.notification_payload()["preview"], "hi");
    }

    #[test]
    fn another_version_or_type_is_refused() {
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v["version"] = 2.into();
        assert!(matches!(MessageSent::parse(v.to_string().as_bytes()), Err(EventError::Unsupported { version: 2, .. })));
        v["version"] = 1.into();
        v["type"] = "message.edited".into();
        assert!(matches!(MessageSent::parse(v.to_string().as_bytes()), Err(EventError::Unsupported { .. })));
        assert!(matches!(MessageSent::parse(b"{}"), Err(EventError::Malformed(_))));
    }

    #[test]
    fn chat_created_matches_its_schema_and_names_its_chat() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/events/chat.created.v1.json")).expect("the schema is JSON");
        let e = ChatCreated::new(Uuid::from_u128(7), vec![Uuid::from_u128(1), Uuid::from_u128(2)], Utc::now());
        let row = e.to_outbox();
        assert_eq!((row.topic, row.key.as_str()), (CHAT_CREATED_TOPIC, Uuid::from_u128(7).to_string().as_str()));
        let written: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for k in written.as_object().unwrap().keys() {
            assert!(props.contains_key(k) && required.contains(&k.as_str()), "{k}");
        }
        assert_eq!(required.len(), written.as_object().unwrap().len());
        assert_eq!(schema["properties"]["type"]["const"], ChatCreated::TYPE);
        assert_eq!(chat_of(row.payload.as_bytes()), Some(Uuid::from_u128(7)));
        assert_eq!(chat_of(sample().to_outbox().payload.as_bytes()), Some(Uuid::nil()));
        assert_eq!(chat_of(b"{}"), None);
    }

    /// The JSON Schema in docs/events/ and this struct say the same: every property the schema
    /// requires is written, and nothing is written that the schema does not name.
    #[test]
    fn the_published_schema_describes_what_is_written() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/events/message.sent.v1.json")).expect("the schema is JSON");
        assert_eq!(schema["additionalProperties"], false);
        let props = schema["properties"].as_object().unwrap();
        let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let written = serde_json::to_value(sample()).unwrap();
        let written = written.as_object().unwrap();
        for k in written.keys() {
            assert!(props.contains_key(k), "{k} is written but not in the schema");
        }
        for k in &required {
            assert!(written.contains_key(*k), "{k} is required by the schema but not written");
        }
        assert_eq!(required.len(), written.len(), "every field is required (null where it has no value), but notificationsWritten");
        // the one optional field: written only when false (a message on a chat shard)
        let mut on_shard = sample();
        on_shard.notifications_written = false;
        let written = serde_json::to_value(&on_shard).unwrap();
        assert_eq!(written["notificationsWritten"], false);
        assert!(props.contains_key("notificationsWritten") && !required.contains(&"notificationsWritten"));
        assert_eq!(schema["properties"]["type"]["const"], MessageSent::TYPE);
        assert_eq!(schema["properties"]["version"]["const"], MessageSent::VERSION);
    }
}
