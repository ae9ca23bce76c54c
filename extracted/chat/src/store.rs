//! Chats, members and messages on the monolith's tables (schema `legacy`), query for query what
//! `legacy/src/chat/chat.service.ts` runs, so both sides read and write the same rows in the same
//! way while the route moves (the data moves in a later step).

use base64::Engine;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::errors::{ChatError, Result};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChatRow {
    pub id: Uuid,
    pub title: Option<String>,
    pub is_group: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A member with its user's public profile.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub role: String,
    pub joined_at: DateTime<Utc>,
    pub id: Uuid,
    pub display_name: String,
    pub avatar_url: Option<String>,
}

/// A message with its sender's public fields (on the bus: `bus::WireMessage`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    /// messages.seq: not exposed, it is the cursor
    pub seq: i64,
    pub chat_id: Uuid,
    pub sender_id: Uuid,
    pub body: String,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub sender_display_name: String,
    pub sender_avatar_url: Option<String>,
}

/// Selects a message with its sender's public fields (alias `m` for messages).
const MESSAGE_SELECT: &str = "SELECT m.id, m.seq, m.chat_id, m.sender_id, m.body, m.client_message_id, m.created_at, m.edited_at, \
     m.deleted_at, u.display_name AS sender_display_name, u.avatar_url AS sender_avatar_url \
     FROM legacy.messages m JOIN legacy.users u ON u.id = m.sender_id";

/// Opaque cursor: base64 (standard, padded) of the message's seq.
pub fn encode_cursor(seq: i64) -> String {
    base64::engine::general_purpose::STANDARD.encode(seq.to_string())
}

/// The seq a cursor stands for; anything that is not the canonical encoding of a positive
/// integer is `BAD_USER_INPUT` (as `Buffer.from(c, 'base64')` and the re-encoding check do).
pub fn decode_cursor(cursor: &str) -> Result<i64> {
    let bad = || ChatError::BadRequest("after is not a valid cursor".into());
    let bytes = base64::engine::general_purpose::STANDARD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let canonical = !text.is_empty() && text.len() <= 19 && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit());
    if !canonical || encode_cursor(text.parse().map_err(|_| bad())?) != cursor {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// The monolith's UUID check (`/^[0-9a-f]{8}-…$/i`); `name` is the argument's name.
pub fn parse_uuid(value: &str, name: &str) -> Result<Uuid> {
    let bad = || ChatError::BadRequest(format!("{name} must be a UUID"));
    if !bm_common::validate::is_uuid(value) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// `assertBody` of `editMessage`: JavaScript's `.length` (UTF-16 units) and `/\S/`.
pub fn assert_body(body: &str) -> Result<()> {
    let len = body.encode_utf16().count();
    if !(1..=4000).contains(&len) {
        return Err(ChatError::BadRequest("body must be longer than or equal to 1 and shorter than or equal to 4000 characters".into()));
    }
    if !bm_common::validate::has_non_space(body) {
        return Err(ChatError::BadRequest("body must not be blank".into()));
    }
    Ok(())
}

/// 404 when the chat does not exist, 403 when `user` is not a member.
pub async fn require_member<'e>(db: impl PgExecutor<'e>, chat: Uuid, user: Uuid) -> Result<ChatRow> {
    require_member_in(db, "legacy", chat, user).await
}

/// [`require_member`] on the chat tables of `schema` (`legacy`, or `chat` on a shard).
async fn require_member_in<'e>(db: impl PgExecutor<'e>, schema: &str, chat: Uuid, user: Uuid) -> Result<ChatRow> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        chat: ChatRow,
        is_member: bool,
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT c.id, c.title, c.is_group, c.created_at, c.updated_at,
                EXISTS (SELECT 1 FROM {schema}.chat_members cm WHERE cm.chat_id = c.id AND cm.user_id = $2) AS is_member
         FROM {schema}.chats c WHERE c.id = $1"
    ))
    .bind(chat)
    .bind(user)
    .fetch_optional(db)
    .await?;
    let row = row.ok_or_else(ChatError::not_found_chat)?;
    if !row.is_member {
        return Err(ChatError::not_a_member());
    }
    Ok(row.chat)
}

pub async fn chats<'e>(db: impl PgExecutor<'e>, user: Uuid) -> Result<Vec<ChatRow>> {
    Ok(sqlx::query_as(
        "SELECT c.id, c.title, c.is_group, c.created_at, c.updated_at
         FROM legacy.chats c JOIN legacy.chat_members cm ON cm.chat_id = c.id AND cm.user_id = $1
         ORDER BY c.updated_at DESC, c.id DESC",
    )
    .bind(user)
    .fetch_all(db)
    .await?)
}

pub async fn members<'e>(db: impl PgExecutor<'e>, chat: Uuid) -> Result<Vec<MemberRow>> {
    Ok(sqlx::query_as(
        "SELECT cm.role, cm.joined_at, u.id, u.display_name, u.avatar_url
         FROM legacy.chat_members cm JOIN legacy.users u ON u.id = cm.user_id
         WHERE cm.chat_id = $1 ORDER BY cm.joined_at, u.id",
    )
    .bind(chat)
    .fetch_all(db)
    .await?)
}

pub async fn last_message<'e>(db: impl PgExecutor<'e>, chat: Uuid) -> Result<Option<MessageRow>> {
    Ok(sqlx::query_as(&format!("{MESSAGE_SELECT} WHERE m.chat_id = $1 ORDER BY m.seq DESC LIMIT 1")).bind(chat).fetch_optional(db).await?)
}

pub async fn unread_count<'e>(db: impl PgExecutor<'e>, chat: Uuid, user: Uuid) -> Result<i32> {
    unread_count_in(db, "legacy", chat, user).await
}

async fn unread_count_in<'e>(db: impl PgExecutor<'e>, schema: &str, chat: Uuid, user: Uuid) -> Result<i32> {
    let n: i32 = sqlx::query_scalar(&format!(
        "SELECT count(*)::int FROM {schema}.messages m
         JOIN {schema}.chat_members cm ON cm.chat_id = m.chat_id AND cm.user_id = $2
         WHERE m.chat_id = $1 AND m.seq > cm.last_read_seq AND m.sender_id <> $2 AND m.deleted_at IS NULL"
    ))
    .bind(chat)
    .bind(user)
    .fetch_one(db)
    .await?;
    Ok(n)
}

/// Messages of a chat, newest first, `first` of them plus one to tell whether more exist.
pub async fn messages<'e>(db: impl PgExecutor<'e>, chat: Uuid, before: Option<i64>, first: i64) -> Result<Vec<MessageRow>> {
    Ok(sqlx::query_as(&format!(
        "{MESSAGE_SELECT} WHERE m.chat_id = $1 AND ($2::bigint IS NULL OR m.seq < $2::bigint) ORDER BY m.seq DESC LIMIT $3"
    ))
    .bind(chat)
    .bind(before)
    .bind(first + 1)
    .fetch_all(db)
    .await?)
}

pub async fn message<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<MessageRow>> {
    Ok(sqlx::query_as(&format!("{MESSAGE_SELECT} WHERE m.id = $1")).bind(id).fetch_optional(db).await?)
}

/// The users among `ids` that exist.
pub async fn known_users<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar("SELECT id FROM legacy.users WHERE id = ANY($1::uuid[])").bind(ids).fetch_all(db).await?)
}

/// A direct chat between the two users if one exists, after taking the same advisory lock as
/// the monolith (`direct-chat:<sorted pair>`), so concurrent creations on either side make one.
pub async fn lock_and_find_direct(c: &mut PgConnection, a: Uuid, b: Uuid) -> Result<Option<ChatRow>> {
    lock_direct(&mut *c, a, b).await?;
    find_direct(&mut *c, a, b).await
}

/// The monolith's advisory lock on a pair's direct chat, until the transaction ends.
pub async fn lock_direct(c: &mut PgConnection, a: Uuid, b: Uuid) -> Result<()> {
    let mut pair = [a.to_string(), b.to_string()];
    pair.sort();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(format!("direct-chat:{}", pair.join(":"))).execute(&mut *c).await?;
    Ok(())
}

/// The oldest direct chat of the two users on the monolith's tables.
pub async fn find_direct(c: &mut PgConnection, a: Uuid, b: Uuid) -> Result<Option<ChatRow>> {
    find_direct_in(c, "legacy", a, b).await
}

/// [`find_direct`] on the chat tables of `schema`.
async fn find_direct_in<'e>(db: impl PgExecutor<'e>, schema: &str, a: Uuid, b: Uuid) -> Result<Option<ChatRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT c.id, c.title, c.is_group, c.created_at, c.updated_at FROM {schema}.chats c
         WHERE NOT c.is_group
           AND EXISTS (SELECT 1 FROM {schema}.chat_members WHERE chat_id = c.id AND user_id = $1)
           AND EXISTS (SELECT 1 FROM {schema}.chat_members WHERE chat_id = c.id AND user_id = $2)
         ORDER BY c.created_at LIMIT 1"
    ))
    .bind(a)
    .bind(b)
    .fetch_optional(db)
    .await?)
}

/// `id`: minted in the creator's bucket ([`bm_shards::mint_chat_id`]): once chat data lives on
/// shards by user id, a new chat is homed on its creator's shard (docs/chat-sharding.md, "Where a
/// chat lives").
pub async fn insert_chat(
    c: &mut PgConnection,
    id: Uuid,
    creator: Uuid,
    title: Option<&str>,
    is_group: bool,
    others: &[Uuid],
) -> Result<ChatRow> {
    insert_chat_in(c, "legacy", id, creator, title, is_group, others).await
}

/// [`insert_chat`] on the chat tables of `schema` (times given: a shard's tables have no defaults).
async fn insert_chat_in(
    c: &mut PgConnection,
    schema: &str,
    id: Uuid,
    creator: Uuid,
    title: Option<&str>,
    is_group: bool,
    others: &[Uuid],
) -> Result<ChatRow> {
    let chat: ChatRow = sqlx::query_as(&format!(
        "INSERT INTO {schema}.chats (id, title, is_group, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, now(), now())
         RETURNING id, title, is_group, created_at, updated_at"
    ))
    .bind(id)
    .bind(title)
    .bind(is_group)
    .bind(creator)
    .fetch_one(&mut *c)
    .await?;
    let mut all = vec![creator];
    all.extend_from_slice(others);
    sqlx::query(&format!(
        "INSERT INTO {schema}.chat_members (chat_id, user_id, role, joined_at)
         SELECT $1, u, CASE WHEN u = $2 THEN 'owner' ELSE 'member' END, now() FROM unnest($3::uuid[]) AS u"
    ))
    .bind(chat.id)
    .bind(creator)
    .bind(&all)
    .execute(&mut *c)
    .await?;
    Ok(chat)
}

/// What a new message needs of its chat for notifications and pushes.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message: MessageRow,
    /// group title, `None` for a direct chat (and an untitled group)
    pub chat_title: Option<String>,
    /// the other members: one `message.new` notification each
    pub recipients: Vec<Uuid>,
    /// their devices (FCM token, user), read in the message's transaction: the push after the
    /// commit needs no connection of its own. Empty when the notification push job pushes
    /// (`legacy.push_owner`): then nothing is pushed in-process.
    pub devices: Vec<Device>,
    /// The devices are to be read after the commit (a message on a shard, pushed in-process:
    /// its transaction does not reach the monolith's database).
    pub devices_later: bool,
}

/// A device to push to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Device {
    pub token: String,
    pub user_id: Uuid,
}

/// `sendMessage` in the request's transaction: idempotent per (chat, sender, clientMessageId).
/// `Ok((message, None))` for a repeat (nothing written, nothing to notify or publish).
pub async fn send_message(
    c: &mut PgConnection,
    sender: Uuid,
    chat: &ChatRow,
    body: &str,
    client_message_id: &str,
) -> Result<(MessageRow, Option<NewMessage>)> {
    // one sender at a time per chat, from before the message takes its seq to the commit: a
    // chat's messages commit (and their events reach the outbox, and the bus) in seq order
    // (the monolith takes the same lock)
    sqlx::query("SELECT 1 FROM legacy.chats WHERE id = $1 FOR NO KEY UPDATE").bind(chat.id).execute(&mut *c).await?;
    let inserted: Option<(Uuid, i64)> = sqlx::query_as(
        "INSERT INTO legacy.messages (id, chat_id, sender_id, body, client_message_id) VALUES ($5, $1, $2, $3, $4)
         ON CONFLICT (chat_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING
         RETURNING id, seq",
    )
    .bind(chat.id)
    .bind(sender)
    .bind(body)
    .bind(client_message_id)
    // in its chat's bucket: its id alone names the chat's shard (an edit or a delete names only
    // the message)
    .bind(bm_shards::mint_chat_id(&chat.id))
    .fetch_optional(&mut *c)
    .await?;
    let Some((id, seq)) = inserted else {
        let prev: MessageRow =
            sqlx::query_as(&format!("{MESSAGE_SELECT} WHERE m.chat_id = $1 AND m.sender_id = $2 AND m.client_message_id = $3"))
                .bind(chat.id)
                .bind(sender)
                .bind(client_message_id)
                .fetch_one(&mut *c)
                .await?;
        return Ok((prev, None));
    };
    sqlx::query("UPDATE legacy.chats SET updated_at = now() WHERE id = $1").bind(chat.id).execute(&mut *c).await?;
    // the sender has read everything up to their own message
    sqlx::query("UPDATE legacy.chat_members SET last_read_seq = GREATEST(last_read_seq, $3) WHERE chat_id = $1 AND user_id = $2")
        .bind(chat.id)
        .bind(sender)
        .bind(seq)
        .execute(&mut *c)
        .await?;
    let message: MessageRow = sqlx::query_as(&format!("{MESSAGE_SELECT} WHERE m.id = $1")).bind(id).fetch_one(&mut *c).await?;
    let chat_title = if chat.is_group { chat.title.clone() } else { None };
    // one `message.new` notification per other member, in the message's transaction
    let payload = serde_json::json!({
        "chatId": chat.id,
        "messageId": message.id,
        "senderId": sender,
        "senderName": message.sender_display_name,
        "chatTitle": chat_title,
        "preview": preview(&message.body),
    });
    let recipients: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO legacy.notifications (user_id, kind, payload)
         SELECT user_id, 'message.new', $3::jsonb FROM legacy.chat_members WHERE chat_id = $1 AND user_id <> $2
         RETURNING user_id",
    )
    .bind(chat.id)
    .bind(sender)
    .bind(payload)
    .fetch_all(&mut *c)
    .await?;
    // who pushes this message (legacy.push_owner, read in its transaction): this process, after
    // the commit, or the notification push job from the event
    let owner: String = sqlx::query_scalar("SELECT owner FROM legacy.push_owner").fetch_one(&mut *c).await?;
    let push_in_process = owner == "monolith";
    let devices: Vec<Device> = if recipients.is_empty() || !push_in_process {
        Vec::new()
    } else {
        sqlx::query_as("SELECT token, user_id FROM legacy.devices WHERE user_id = ANY($1::uuid[])")
            .bind(&recipients)
            .fetch_all(&mut *c)
            .await?
    };
    // `message.sent` in the same transaction (docs/events.md): the relay publishes it after the
    // commit, and a rollback (a failed request, a dry run) leaves none
    let event = message_sent(&message, chat_title.as_deref(), recipients.clone(), push_in_process);
    bm_events::outbox::enqueue(&mut *c, &event.to_outbox()).await?;
    let new = NewMessage { message: message.clone(), chat_title, recipients, devices, devices_later: false };
    Ok((message, Some(new)))
}

pub use bm_events::push::preview;

/// `message.sent` for a new message (docs/events.md), as this service writes it.
fn message_sent(message: &MessageRow, chat_title: Option<&str>, recipients: Vec<Uuid>, push_in_process: bool) -> bm_events::MessageSent {
    bm_events::MessageSent::new(
        "chat",
        message.chat_id,
        message.id,
        message.seq,
        message.sender_id,
        &message.sender_display_name,
        chat_title,
        &message.body,
        recipients,
        push_in_process,
        message.created_at,
    )
}

pub async fn edit_message(c: &mut PgConnection, id: Uuid, body: &str) -> Result<Option<MessageRow>> {
    Ok(sqlx::query_as(
        "WITH upd AS (UPDATE legacy.messages SET body = $2, edited_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING *)
         SELECT upd.id, upd.seq, upd.chat_id, upd.sender_id, upd.body, upd.client_message_id, upd.created_at, upd.edited_at,
                upd.deleted_at, u.display_name AS sender_display_name, u.avatar_url AS sender_avatar_url
         FROM upd JOIN legacy.users u ON u.id = upd.sender_id",
    )
    .bind(id)
    .bind(body)
    .fetch_optional(&mut *c)
    .await?)
}

pub async fn delete_message(c: &mut PgConnection, id: Uuid) -> Result<MessageRow> {
    Ok(sqlx::query_as(
        "WITH upd AS (UPDATE legacy.messages SET deleted_at = COALESCE(deleted_at, now()) WHERE id = $1 RETURNING *)
         SELECT upd.id, upd.seq, upd.chat_id, upd.sender_id, upd.body, upd.client_message_id, upd.created_at, upd.edited_at,
                upd.deleted_at, u.display_name AS sender_display_name, u.avatar_url AS sender_avatar_url
         FROM upd JOIN legacy.users u ON u.id = upd.sender_id",
    )
    .bind(id)
    .fetch_one(&mut *c)
    .await?)
}

/// The seq of `message` if it belongs to `chat`.
pub async fn message_seq<'e>(db: impl PgExecutor<'e>, message: Uuid, chat: Uuid) -> Result<Option<i64>> {
    message_seq_in(db, "legacy", message, chat).await
}

/// [`message_seq`] on the chat tables of `schema` (`legacy`, or `chat` on a shard).
async fn message_seq_in<'e>(db: impl PgExecutor<'e>, schema: &str, message: Uuid, chat: Uuid) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(&format!("SELECT seq FROM {schema}.messages WHERE id = $1 AND chat_id = $2"))
        .bind(message)
        .bind(chat)
        .fetch_optional(db)
        .await?)
}

pub async fn mark_read(c: &mut PgConnection, chat: Uuid, user: Uuid, seq: i64) -> Result<()> {
    mark_read_in(c, "legacy", chat, user, seq).await
}

async fn mark_read_in(c: &mut PgConnection, schema: &str, chat: Uuid, user: Uuid, seq: i64) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE {schema}.chat_members SET last_read_seq = GREATEST(last_read_seq, $3) WHERE chat_id = $1 AND user_id = $2"
    ))
    .bind(chat)
    .bind(user)
    .bind(seq)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The reads of a chat on its shard (`chat.*`, `migrations/chat/`), when the routing reads it
/// there: the same rows and order as the monolith's queries above. A shard has no users: the
/// public profiles come from the monolith's database (`main`), one query per read.
pub mod on_shard {
    use std::collections::HashMap;

    use chrono::{DateTime, Utc};
    use sqlx::{PgConnection, PgExecutor, PgPool};
    use uuid::Uuid;

    use super::{ChatRow, Device, MemberRow, MessageRow, NewMessage};
    use crate::errors::{ChatError, Result};

    /// id → (display name, avatar)
    async fn profiles(main: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, (String, Option<String>)>> {
        let rows: Vec<(Uuid, String, Option<String>)> =
            sqlx::query_as("SELECT id, display_name, avatar_url FROM legacy.users WHERE id = ANY($1::uuid[])")
                .bind(ids)
                .fetch_all(main)
                .await?;
        Ok(rows.into_iter().map(|(id, name, avatar)| (id, (name, avatar))).collect())
    }

    /// 404 when the chat does not exist, 403 when `user` is not a member.
    pub async fn require_member<'e>(shard: impl PgExecutor<'e>, chat: Uuid, user: Uuid) -> Result<ChatRow> {
        super::require_member_in(shard, "chat", chat, user).await
    }

    pub async fn members<'e>(shard: impl PgExecutor<'e>, main: &PgPool, chat: Uuid) -> Result<Vec<MemberRow>> {
        let rows: Vec<(String, DateTime<Utc>, Uuid)> =
            sqlx::query_as("SELECT role, joined_at, user_id FROM chat.chat_members WHERE chat_id = $1 ORDER BY joined_at, user_id")
                .bind(chat)
                .fetch_all(shard)
                .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.2).collect();
        let names = profiles(main, &ids).await?;
        // (a member whose user is gone: the monolith's join would drop the row too)
        Ok(rows
            .into_iter()
            .filter_map(|(role, joined_at, id)| {
                names.get(&id).map(|(display_name, avatar_url)| MemberRow {
                    role,
                    joined_at,
                    id,
                    display_name: display_name.clone(),
                    avatar_url: avatar_url.clone(),
                })
            })
            .collect())
    }

    type Row = (Uuid, i64, Uuid, Uuid, String, Option<String>, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    const COLUMNS: &str = "id, seq, chat_id, sender_id, body, client_message_id, created_at, edited_at, deleted_at";

    async fn with_senders(main: &PgPool, rows: Vec<Row>) -> Result<Vec<MessageRow>> {
        let mut ids: Vec<Uuid> = rows.iter().map(|r| r.3).collect();
        ids.sort_unstable();
        ids.dedup();
        let names = profiles(main, &ids).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, seq, chat_id, sender_id, body, client_message_id, created_at, edited_at, deleted_at)| {
                names.get(&sender_id).map(|(name, avatar)| MessageRow {
                    id,
                    seq,
                    chat_id,
                    sender_id,
                    body,
                    client_message_id,
                    created_at,
                    edited_at,
                    deleted_at,
                    sender_display_name: name.clone(),
                    sender_avatar_url: avatar.clone(),
                })
            })
            .collect())
    }

    pub async fn last_message<'e>(shard: impl PgExecutor<'e>, main: &PgPool, chat: Uuid) -> Result<Option<MessageRow>> {
        let rows: Vec<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM chat.messages WHERE chat_id = $1 ORDER BY seq DESC LIMIT 1"))
            .bind(chat)
            .fetch_all(shard)
            .await?;
        Ok(with_senders(main, rows).await?.pop())
    }

    pub async fn unread_count<'e>(shard: impl PgExecutor<'e>, chat: Uuid, user: Uuid) -> Result<i32> {
        super::unread_count_in(shard, "chat", chat, user).await
    }

    /// Messages of a chat, newest first, `first` of them plus one to tell whether more exist.
    pub async fn messages<'e>(
        shard: impl PgExecutor<'e>,
        main: &PgPool,
        chat: Uuid,
        before: Option<i64>,
        first: i64,
    ) -> Result<Vec<MessageRow>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM chat.messages WHERE chat_id = $1 AND ($2::bigint IS NULL OR seq < $2::bigint) ORDER BY seq DESC LIMIT $3"
        ))
        .bind(chat)
        .bind(before)
        .bind(first + 1)
        .fetch_all(shard)
        .await?;
        with_senders(main, rows).await
    }

    // ---- writes, once a move has switched the chat's writes to its shard (in the request's
    // transaction on the shard: `RequestTx::conn_on`). What the monolith's transaction also wrote
    // in its own database is not reachable from here: the `message.new` notifications are
    // written from the event (`notificationsWritten: false`), the event goes to the shard's
    // outbox.

    /// A page of a chat's messages if `user` is a member — the membership in the same query.
    /// No rows: [`require_member`] tells an empty page from a 404 or a 403 (one more query only
    /// then).
    pub async fn messages_of_member(
        c: &mut PgConnection,
        main: &PgPool,
        chat: Uuid,
        user: Uuid,
        before: Option<i64>,
        first: i64,
    ) -> Result<Vec<MessageRow>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM chat.messages WHERE chat_id = $1 AND ($2::bigint IS NULL OR seq < $2::bigint)
               AND EXISTS (SELECT 1 FROM chat.chat_members cm WHERE cm.chat_id = $1 AND cm.user_id = $4)
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(chat)
        .bind(before)
        .bind(first + 1)
        .bind(user)
        .fetch_all(&mut *c)
        .await?;
        if rows.is_empty() {
            require_member(&mut *c, chat, user).await?;
            return Ok(Vec::new());
        }
        with_senders(main, rows).await
    }

    /// A message by id, with its sender's public fields.
    pub async fn message<'e>(shard: impl PgExecutor<'e>, main: &PgPool, id: Uuid) -> Result<Option<MessageRow>> {
        let rows: Vec<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM chat.messages WHERE id = $1")).bind(id).fetch_all(shard).await?;
        Ok(with_senders(main, rows).await?.pop())
    }

    /// The chat of a message held on this shard.
    pub async fn chat_of_message<'e>(shard: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar("SELECT chat_id FROM chat.messages WHERE id = $1").bind(id).fetch_optional(shard).await?)
    }

    async fn one_with_sender(main: &PgPool, row: Row) -> Result<MessageRow> {
        // a sender whose account is gone: the monolith's join would find no row either
        with_senders(main, vec![row]).await?.pop().ok_or_else(ChatError::not_found_message)
    }

    /// What `sendMessage` on a shard needs from the monolith's database, read before the shard's
    /// transaction begins: the sender's public fields, and who pushes (`legacy.push_owner`).
    pub struct SenderFacts {
        pub display_name: String,
        pub avatar_url: Option<String>,
        pub push_in_process: bool,
    }

    impl SenderFacts {
        pub async fn read(main: &PgPool, sender: Uuid) -> Result<SenderFacts> {
            let (display_name, avatar_url, owner): (String, Option<String>, String) = sqlx::query_as(
                "SELECT u.display_name, u.avatar_url, (SELECT owner FROM legacy.push_owner) FROM legacy.users u WHERE u.id = $1",
            )
            .bind(sender)
            .fetch_optional(main)
            .await?
            .ok_or(ChatError::Unauthorized)?;
            Ok(SenderFacts { display_name, avatar_url, push_in_process: owner == "monolith" })
        }

        fn message(&self, r: Row) -> MessageRow {
            let (id, seq, chat_id, sender_id, body, client_message_id, created_at, edited_at, deleted_at) = r;
            MessageRow {
                id,
                seq,
                chat_id,
                sender_id,
                body,
                client_message_id,
                created_at,
                edited_at,
                deleted_at,
                sender_display_name: self.display_name.clone(),
                sender_avatar_url: self.avatar_url.clone(),
            }
        }
    }

    /// The recipients' devices, for a push in-process after the commit.
    pub async fn devices(main: &PgPool, recipients: &[Uuid]) -> Result<Vec<Device>> {
        Ok(sqlx::query_as("SELECT token, user_id FROM legacy.devices WHERE user_id = ANY($1::uuid[])")
            .bind(recipients)
            .fetch_all(main)
            .await?)
    }

    /// `sendMessage` on the chat's shard, as [`super::send_message`] on the monolith's tables:
    /// the same lock, membership check, idempotency, `updated_at`, read marker and event — the
    /// event in the shard's outbox, saying that its notifications are still to be written.
    /// Touches only the shard (`from`: read before); the recipients' devices, for an in-process
    /// push, are read after the commit (`NewMessage::devices` is empty). Returns the chat's row
    /// as locked.
    ///
    /// Two statements. The first takes the chat's lock (one sender at a time per chat, to the
    /// commit: the chat's messages commit, reach the outbox and the bus in seq order), checks
    /// the membership, inserts the message and moves the chat's activity, the sender's read
    /// marker and the inboxes on this shard. Its parts run in that order: the insert reads the
    /// locked row, and every update names the inserted message, so `nextval` and the updates
    /// come after the lock (a row another sender updated while this one waited is updated in
    /// its newest version, as READ COMMITTED's updates are). The second writes the event, which
    /// needs the message's seq and time. One round trip fewer while the chat's lock is held
    /// than lock, insert, updates apart (the lock is what a busy chat's senders queue on).
    pub async fn send_message(
        c: &mut PgConnection,
        from: &SenderFacts,
        sender: Uuid,
        chat_id: Uuid,
        body: &str,
        client_message_id: &str,
    ) -> Result<(ChatRow, MessageRow, Option<NewMessage>)> {
        #[derive(sqlx::FromRow)]
        struct Sent {
            #[sqlx(flatten)]
            chat: ChatRow,
            is_member: bool,
            m_id: Option<Uuid>,
            m_seq: Option<i64>,
            m_created_at: Option<DateTime<Utc>>,
            recipients: Vec<Uuid>,
        }
        let sent: Option<Sent> = sqlx::query_as(
            "WITH l AS (
                SELECT c.id, c.title, c.is_group, c.created_at, c.updated_at,
                       EXISTS (SELECT 1 FROM chat.chat_members cm WHERE cm.chat_id = c.id AND cm.user_id = $2) AS is_member
                FROM chat.chats c WHERE c.id = $1 FOR NO KEY UPDATE OF c),
             ins AS (
                INSERT INTO chat.messages (id, chat_id, sender_id, body, client_message_id, created_at)
                SELECT $5, l.id, $2, $3, $4, now() FROM l WHERE l.is_member
                ON CONFLICT (chat_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING
                RETURNING id, seq, chat_id, created_at),
             a AS (UPDATE chat.chats SET updated_at = GREATEST(updated_at, now()) WHERE id IN (SELECT chat_id FROM ins)),
             r AS (UPDATE chat.chat_members cm SET last_read_seq = GREATEST(cm.last_read_seq, ins.seq)
                   FROM ins WHERE cm.chat_id = ins.chat_id AND cm.user_id = $2),
             i AS (UPDATE chat.inbox SET updated_at = now() WHERE chat_id IN (SELECT chat_id FROM ins) AND updated_at < now())
             SELECT l.*, ins.id AS m_id, ins.seq AS m_seq, ins.created_at AS m_created_at,
                    ARRAY(SELECT user_id FROM chat.chat_members WHERE chat_id = $1 AND user_id <> $2 ORDER BY user_id) AS recipients
             FROM l LEFT JOIN ins ON true",
        )
        .bind(chat_id)
        .bind(sender)
        .bind(body)
        .bind(client_message_id)
        .bind(bm_shards::mint_chat_id(&chat_id))
        .fetch_optional(&mut *c)
        .await?;
        let sent = sent.ok_or_else(ChatError::not_found_chat)?;
        if !sent.is_member {
            return Err(ChatError::not_a_member());
        }
        let chat = sent.chat;
        let (Some(id), Some(seq), Some(created_at)) = (sent.m_id, sent.m_seq, sent.m_created_at) else {
            let prev: Row = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM chat.messages WHERE chat_id = $1 AND sender_id = $2 AND client_message_id = $3"
            ))
            .bind(chat_id)
            .bind(sender)
            .bind(client_message_id)
            .fetch_one(&mut *c)
            .await?;
            return Ok((chat, from.message(prev), None));
        };
        let recipients = sent.recipients;
        let message =
            from.message((id, seq, chat_id, sender, body.to_string(), Some(client_message_id.to_string()), created_at, None, None));
        let chat_title = if chat.is_group { chat.title.clone() } else { None };
        let push_in_process = from.push_in_process;
        let mut event = super::message_sent(&message, chat_title.as_deref(), recipients.clone(), push_in_process);
        event.notifications_written = false;
        // the event (the outbox's relay is woken at the commit)
        let e = event.to_outbox();
        sqlx::query(
            "WITH o AS (INSERT INTO chat.outbox (id, topic, key, type, version, payload) VALUES ($1, $2, $3, $4, $5, $6))
             SELECT pg_notify($7, '')",
        )
        .bind(e.id)
        .bind(e.topic)
        .bind(&e.key)
        .bind(e.kind)
        .bind(e.version)
        .bind(&e.payload)
        .bind(bm_events::outbox::CHAT_SHARD.channel)
        .execute(&mut *c)
        .await?;
        let devices_later = push_in_process && !recipients.is_empty();
        let new = NewMessage { message: message.clone(), chat_title, recipients, devices: Vec::new(), devices_later };
        Ok((chat, message, Some(new)))
    }

    pub async fn edit_message(c: &mut PgConnection, main: &PgPool, id: Uuid, body: &str) -> Result<Option<MessageRow>> {
        let row: Option<Row> = sqlx::query_as(&format!(
            "UPDATE chat.messages SET body = $2, edited_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(body)
        .fetch_optional(&mut *c)
        .await?;
        match row {
            Some(r) => Ok(Some(one_with_sender(main, r).await?)),
            None => Ok(None),
        }
    }

    pub async fn delete_message(c: &mut PgConnection, main: &PgPool, id: Uuid) -> Result<MessageRow> {
        let row: Row =
            sqlx::query_as(&format!("UPDATE chat.messages SET deleted_at = COALESCE(deleted_at, now()) WHERE id = $1 RETURNING {COLUMNS}"))
                .bind(id)
                .fetch_one(&mut *c)
                .await?;
        one_with_sender(main, row).await
    }

    /// The seq of `message` if it belongs to `chat`.
    pub async fn message_seq<'e>(shard: impl PgExecutor<'e>, message: Uuid, chat: Uuid) -> Result<Option<i64>> {
        super::message_seq_in(shard, "chat", message, chat).await
    }

    pub async fn mark_read(c: &mut PgConnection, chat: Uuid, user: Uuid, seq: i64) -> Result<()> {
        super::mark_read_in(c, "chat", chat, user, seq).await
    }

    /// The oldest direct chat of the two users on this shard.
    pub async fn find_direct<'e>(shard: impl PgExecutor<'e>, a: Uuid, b: Uuid) -> Result<Option<ChatRow>> {
        super::find_direct_in(shard, "chat", a, b).await
    }

    /// `createChat`'s rows on the new chat's shard (`id` minted in the creator's bucket).
    pub async fn insert_chat(
        c: &mut PgConnection,
        id: Uuid,
        creator: Uuid,
        title: Option<&str>,
        is_group: bool,
        others: &[Uuid],
    ) -> Result<ChatRow> {
        super::insert_chat_in(c, "chat", id, creator, title, is_group, others).await
    }

    // ---- inboxes (`chat.inbox`, migrations/chat/0003_inbox.sql): what `chats` lists, one row
    // per chat a user is in, on the user's shard

    /// `chats` from the caller's inbox: the same rows and order as [`super::chats`].
    pub async fn chats_from_inbox<'e>(shard: impl PgExecutor<'e>, user: Uuid) -> Result<Vec<ChatRow>> {
        Ok(sqlx::query_as(
            "SELECT chat_id AS id, title, is_group, created_at, updated_at FROM chat.inbox
             WHERE user_id = $1 ORDER BY updated_at DESC, chat_id DESC",
        )
        .bind(user)
        .fetch_all(shard)
        .await?)
    }

    /// The inbox rows of `users` for `chat` (upserted: `updated_at` only moves forward).
    pub async fn upsert_inbox<'e>(shard: impl PgExecutor<'e>, users: &[Uuid], chat: &ChatRow) -> Result<()> {
        let rows: Vec<(Uuid, &ChatRow)> = users.iter().map(|u| (*u, chat)).collect();
        upsert_inbox_rows(shard, &rows).await
    }

    /// Users' inbox rows for chats, in one statement (each (user, chat) once).
    pub async fn upsert_inbox_rows<'e>(shard: impl PgExecutor<'e>, rows: &[(Uuid, &ChatRow)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (users, chats): (Vec<Uuid>, Vec<&ChatRow>) = rows.iter().copied().unzip();
        sqlx::query(bm_shards::INBOX_UPSERT_SQL)
            .bind(users)
            .bind(chats.iter().map(|c| c.id).collect::<Vec<_>>())
            .bind(chats.iter().map(|c| c.title.clone()).collect::<Vec<_>>())
            .bind(chats.iter().map(|c| c.is_group).collect::<Vec<_>>())
            .bind(chats.iter().map(|c| c.created_at).collect::<Vec<_>>())
            .bind(chats.iter().map(|c| c.updated_at).collect::<Vec<_>>())
            .execute(shard)
            .await?;
        Ok(())
    }

    /// Chats' rows and members, for projecting them into inboxes (one query; chats that are
    /// gone are left out).
    pub async fn chats_and_members<'e>(db: impl PgExecutor<'e>, schema: &str, chats: &[Uuid]) -> Result<Vec<(ChatRow, Vec<Uuid>)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            chat: ChatRow,
            members: Vec<Uuid>,
        }
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT c.id, c.title, c.is_group, c.created_at, c.updated_at,
                    ARRAY(SELECT cm.user_id FROM {schema}.chat_members cm WHERE cm.chat_id = c.id) AS members
             FROM {schema}.chats c WHERE c.id = ANY($1)"
        ))
        .bind(chats)
        .fetch_all(db)
        .await?;
        Ok(rows.into_iter().map(|r| (r.chat, r.members)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cursors_are_base64_of_the_seq_and_only_canonical_ones_decode() {
        // docs/api/chat.md: seq 100211 → "MTAwMjEx"
        assert_eq!(encode_cursor(100211), "MTAwMjEx");
        assert_eq!(decode_cursor("MTAwMjEx"), Ok(100211));
        for bad in ["", "MA==", "LTE=", "MDE=", "bm9wZQ==", "MTAwMjEx=", "MTAwMjEx\n", "%%%", "YQ"] {
            assert!(decode_cursor(bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn uuids_and_bodies_as_the_monolith_checks_them() {
        assert!(parse_uuid("0e5b7d38-1f1d-4b86-9c52-3b6a1b8e4f10", "id").is_ok());
        assert!(parse_uuid("0E5B7D38-1F1D-4B86-9C52-3B6A1B8E4F10", "id").is_ok());
        assert_eq!(parse_uuid("nope", "chatId"), Err(ChatError::BadRequest("chatId must be a UUID".into())));
        assert!(assert_body("x").is_ok());
        assert_eq!(assert_body(" \n\u{a0}"), Err(ChatError::BadRequest("body must not be blank".into())));
        assert!(assert_body(&"😀".repeat(2000)).is_ok(), "4000 UTF-16 units");
        assert!(assert_body(&"😀".repeat(2001)).is_err());
        assert!(bm_common::validate::has_non_space("\u{85}"), "U+0085 is not JavaScript white space");
    }

    proptest! {
        #[test]
        fn every_seq_round_trips(seq in 1i64..i64::MAX) {
            prop_assert_eq!(decode_cursor(&encode_cursor(seq)), Ok(seq));
        }
    }
}
