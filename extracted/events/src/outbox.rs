//! Writing events in the transaction that causes them (`legacy.outbox`,
//! migrations/legacy/0002_outbox.sql). The relay ([`crate::relay`]) publishes them after the
//! commit; a rolled-back transaction (a failed request, a dry run) leaves no event.

use sqlx::PgConnection;
use uuid::Uuid;

/// The channel the relay listens on; [`enqueue`] notifies it (delivered at commit, so the relay
/// wakes as soon as the event is visible, not at its next poll).
pub const NOTIFY_CHANNEL: &str = "legacy_outbox";

/// An outbox table and the channel its writers notify: the monolith's (`legacy.outbox`), or a
/// chat shard's (`chat.outbox`, migrations/chat/0002_outbox.sql: the events of the chats homed
/// there, written in the message's transaction on that shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub channel: &'static str,
}

/// The monolith's outbox.
pub const LEGACY: Table = Table { name: "legacy.outbox", channel: NOTIFY_CHANNEL };
/// A chat shard's outbox.
pub const CHAT_SHARD: Table = Table { name: "chat.outbox", channel: "chat_outbox" };

/// An event ready to be written.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub topic: &'static str,
    pub key: String,
    pub kind: &'static str,
    pub version: i32,
    pub payload: String,
}

/// Writes the event in the caller's transaction, in the monolith's outbox.
pub async fn enqueue(c: &mut PgConnection, e: &NewEvent) -> Result<(), sqlx::Error> {
    enqueue_into(c, LEGACY, e).await
}

/// Writes the event in the caller's transaction, in `table`.
pub async fn enqueue_into(c: &mut PgConnection, table: Table, e: &NewEvent) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "WITH ins AS (INSERT INTO {} (id, topic, key, type, version, payload) VALUES ($1, $2, $3, $4, $5, $6))
         SELECT pg_notify($7, '')",
        table.name
    ))
    .bind(e.id)
    .bind(e.topic)
    .bind(&e.key)
    .bind(e.kind)
    .bind(e.version)
    .bind(&e.payload)
    .bind(table.channel)
    .execute(&mut *c)
    .await?;
    Ok(())
}
