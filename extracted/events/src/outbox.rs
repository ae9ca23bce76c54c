//! Writing events in the transaction that causes them (`legacy.outbox`,
//! migrations/legacy/0002_outbox.sql). The relay ([`crate::relay`]) publishes them after the
//! commit; a rolled-back transaction (a failed request, a dry run) leaves no event.

use sqlx::PgConnection;
use uuid::Uuid;

/// The channel the relay listens on; [`enqueue`] notifies it (delivered at commit, so the relay
/// wakes as soon as the event is visible, not at its next poll).
pub const NOTIFY_CHANNEL: &str = "legacy_outbox";

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

/// Writes the event in the caller's transaction.
pub async fn enqueue(c: &mut PgConnection, e: &NewEvent) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH ins AS (INSERT INTO legacy.outbox (id, topic, key, type, version, payload) VALUES ($1, $2, $3, $4, $5, $6))
         SELECT pg_notify($7, '')",
    )
    .bind(e.id)
    .bind(e.topic)
    .bind(&e.key)
    .bind(e.kind)
    .bind(e.version)
    .bind(&e.payload)
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *c)
    .await?;
    Ok(())
}
