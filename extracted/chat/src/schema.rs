//! The GraphQL schema of the chat API, type for type, field for field and description for
//! description what the monolith's code-first NestJS schema generates (`sortSchema: true`:
//! fields and arguments in alphabetical order), so an introspection of either side reads the
//! same (docs/api/chat.graphql). Resolvers follow `legacy/src/chat/chat.resolver.ts` and
//! `chat.service.ts`: authentication first, then input validation, then the chat's existence,
//! then membership.

use async_graphql::{
    Context, ErrorExtensions, InputObject, InputValueError, InputValueResult, Object, Scalar, ScalarType, SimpleObject, Subscription,
    Value, ID,
};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::Stream;
use uuid::Uuid;

use crate::errors::{ChatError, Result};
use crate::store::{self, ChatRow, MemberRow, MessageRow};
use crate::AppState;

/// The caller of an operation: set from the bearer token (HTTP) or at `connection_init`
/// (WebSocket); `None` when there was no valid token.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Option<Uuid>);

fn caller(ctx: &Context<'_>) -> Result<Uuid> {
    ctx.data_opt::<Caller>().and_then(|c| c.0).ok_or(ChatError::Unauthorized)
}

fn state<'a>(ctx: &'a Context<'_>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

/// The request's transaction (HTTP mutations: rolled back on a dry run or a 5xx).
fn tx<'a>(ctx: &'a Context<'_>) -> Result<&'a bm_common::dryrun::RequestTx> {
    ctx.data_opt::<bm_common::dryrun::RequestTx>().ok_or(ChatError::Internal)
}

/// A `DateTime` value: a UTC instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeUtc(pub DateTime<Utc>);

/// A date-time string at UTC, such as 2019-12-03T09:54:33Z, compliant with the date-time format.
#[Scalar(name = "DateTime")]
impl ScalarType for DateTimeUtc {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => {
                DateTime::parse_from_rfc3339(s).map(|d| DateTimeUtc(d.with_timezone(&Utc))).map_err(InputValueError::custom)
            }
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    /// `Date.prototype.toISOString`: milliseconds, `Z` (node-postgres keeps milliseconds only).
    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// Truncates to milliseconds, as node-postgres does when it reads a `timestamptz`.
fn millis(t: DateTime<Utc>) -> DateTimeUtc {
    DateTimeUtc(DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t))
}

#[derive(SimpleObject, Clone)]
pub struct User {
    avatar_url: Option<String>,
    display_name: String,
    id: ID,
}

#[derive(SimpleObject, Clone)]
pub struct ChatMember {
    joined_at: DateTimeUtc,
    /// owner | member
    role: String,
    user: User,
}

impl From<MemberRow> for ChatMember {
    fn from(m: MemberRow) -> Self {
        ChatMember {
            joined_at: millis(m.joined_at),
            role: m.role,
            user: User { avatar_url: m.avatar_url, display_name: m.display_name, id: ID(m.id.to_string()) },
        }
    }
}

#[derive(SimpleObject, Clone)]
pub struct Message {
    /// Empty string once the message is deleted (deletedAt is then set).
    body: String,
    chat_id: ID,
    client_message_id: Option<String>,
    created_at: DateTimeUtc,
    deleted_at: Option<DateTimeUtc>,
    edited_at: Option<DateTimeUtc>,
    id: ID,
    sender: User,
    sender_id: ID,
    #[graphql(skip)]
    pub seq: i64,
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
        Message {
            // a deleted message keeps its id and timestamps; its text is gone
            body: if r.deleted_at.is_some() { String::new() } else { r.body },
            chat_id: ID(r.chat_id.to_string()),
            client_message_id: r.client_message_id,
            created_at: millis(r.created_at),
            deleted_at: r.deleted_at.map(millis),
            edited_at: r.edited_at.map(millis),
            id: ID(r.id.to_string()),
            sender: User { avatar_url: r.sender_avatar_url, display_name: r.sender_display_name, id: ID(r.sender_id.to_string()) },
            sender_id: ID(r.sender_id.to_string()),
            seq: r.seq,
        }
    }
}

#[derive(SimpleObject)]
pub struct MessageEdge {
    cursor: String,
    node: Message,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    end_cursor: Option<String>,
    has_next_page: bool,
}

#[derive(SimpleObject)]
pub struct MessageConnection {
    edges: Vec<MessageEdge>,
    page_info: PageInfo,
}

/// A chat. Fields in alphabetical order, resolved ones among them, as `sortSchema` lists them.
#[derive(Clone)]
pub struct Chat {
    row: ChatRow,
}

impl From<ChatRow> for Chat {
    fn from(row: ChatRow) -> Self {
        Chat { row }
    }
}

/// Runs a store read on the request's transaction when a mutation of this request has written
/// (the monolith has committed by then, so its reads see the write), else on the pool.
macro_rules! read {
    ($ctx:expr, $f:path $(, $arg:expr)*) => {{
        let written = match $ctx.data_opt::<bm_common::dryrun::RequestTx>() {
            Some(tx) => tx.conn_if_begun().await,
            None => None,
        };
        match written {
            Some(mut c) => $f(&mut *c $(, $arg)*).await,
            None => $f(&state($ctx).pool $(, $arg)*).await,
        }
    }};
}

/// The shard to read `chat` from (the chat data move's routing), or None for the monolith's
/// tables — always when a mutation of this request has written: its writes are there, and a
/// shard has them only after the move's follow lag.
async fn read_shard(ctx: &Context<'_>, chat: Uuid) -> Result<Option<sqlx::PgPool>> {
    if let Some(tx) = ctx.data_opt::<bm_common::dryrun::RequestTx>() {
        if tx.conn_if_begun().await.is_some() {
            return Ok(None);
        }
    }
    state(ctx).placement.read_shard(&chat)
}

/// 404/403 as [`store::require_member`], wherever the routing reads the chat.
async fn require_member_routed(ctx: &Context<'_>, chat: Uuid, me: Uuid) -> Result<ChatRow> {
    match read_shard(ctx, chat).await? {
        Some(shard) => store::on_shard::require_member(&shard, chat, me).await,
        None => store::require_member(&state(ctx).pool, chat, me).await,
    }
}

#[Object]
impl Chat {
    async fn created_at(&self) -> DateTimeUtc {
        millis(self.row.created_at)
    }

    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }

    async fn is_group(&self) -> bool {
        self.row.is_group
    }

    async fn last_message(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Message>> {
        let row = match read_shard(ctx, self.row.id).await? {
            Some(shard) => store::on_shard::last_message(&shard, &state(ctx).pool, self.row.id).await?,
            None => read!(ctx, store::last_message, self.row.id)?,
        };
        Ok(row.map(Message::from))
    }

    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ChatMember>> {
        let rows = match read_shard(ctx, self.row.id).await? {
            Some(shard) => store::on_shard::members(&shard, &state(ctx).pool, self.row.id).await?,
            None => read!(ctx, store::members, self.row.id)?,
        };
        Ok(rows.into_iter().map(ChatMember::from).collect())
    }

    /// null for direct chats
    async fn title(&self) -> Option<&str> {
        self.row.title.as_deref()
    }

    /// Messages from others after the caller's read marker, not deleted.
    async fn unread_count(&self, ctx: &Context<'_>) -> async_graphql::Result<i32> {
        let me = caller(ctx)?;
        Ok(match read_shard(ctx, self.row.id).await? {
            Some(shard) => store::on_shard::unread_count(&shard, self.row.id, me).await?,
            None => read!(ctx, store::unread_count, self.row.id, me)?,
        })
    }

    /// Last activity: creation or newest message.
    async fn updated_at(&self) -> DateTimeUtc {
        millis(self.row.updated_at)
    }
}

#[derive(InputObject)]
pub struct CreateChatInput {
    member_ids: Vec<ID>,
    title: Option<String>,
}

#[derive(InputObject)]
pub struct SendMessageInput {
    body: String,
    chat_id: ID,
    /// Client-chosen id; a repeat with the same id returns the first message.
    client_message_id: String,
}

pub struct Query;

#[Object]
impl Query {
    async fn chat(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Chat> {
        let me = caller(ctx)?;
        let id = store::parse_uuid(&id, "id")?;
        Ok(require_member_routed(ctx, id, me).await?.into())
    }

    /// The caller's chats, newest activity first. (From the monolith's tables while a move is
    /// open: on the shards this list is the caller's inbox, not built yet.)
    async fn chats(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Chat>> {
        let me = caller(ctx)?;
        Ok(store::chats(&state(ctx).pool, me).await?.into_iter().map(Chat::from).collect())
    }

    /// Newest first; `after` is the endCursor of the previous page.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        chat_id: ID,
        // `Int! = 50` in the monolith's schema (and in the recorded introspection clients see);
        // nullable here so that an omitted `$first` means 50 as in graphql-js, where
        // async-graphql would pass null (see `absent_variable`)
        #[graphql(default = 50)] first: Option<i32>,
    ) -> async_graphql::Result<MessageConnection> {
        let first = match first {
            Some(n) => n,
            None if absent_variable(ctx, "first") => 50,
            None => {
                // graphql-js points at the argument's value
                let at = ctx.item.node.get_argument("first").map(|v| v.pos);
                let e = async_graphql::Error::new("Argument \"first\" of non-null type \"Int!\" must not be null.");
                return Err(e.extend_with(move |_, x| {
                    x.set("code", "INTERNAL_SERVER_ERROR");
                    if let Some(p) = at {
                        x.set(crate::answer::LOCATION_EXTENSION, Value::List(vec![Value::from(p.line), Value::from(p.column)]));
                    }
                }));
            }
        };
        let me = caller(ctx)?;
        if !(1..=100).contains(&first) {
            return Err(ChatError::BadRequest("first must be between 1 and 100".into()).into());
        }
        let before = after.as_deref().filter(|a| !a.is_empty()).map(store::decode_cursor).transpose()?;
        let chat = store::parse_uuid(&chat_id, "chatId")?;
        let pool = &state(ctx).pool;
        let mut rows = match read_shard(ctx, chat).await? {
            Some(shard) => {
                store::on_shard::require_member(&shard, chat, me).await?;
                store::on_shard::messages(&shard, pool, chat, before, i64::from(first)).await?
            }
            None => {
                store::require_member(pool, chat, me).await?;
                store::messages(pool, chat, before, i64::from(first)).await?
            }
        };
        let has_next_page = rows.len() > first as usize;
        rows.truncate(first as usize);
        let edges: Vec<MessageEdge> =
            rows.into_iter().map(|r| MessageEdge { cursor: store::encode_cursor(r.seq), node: Message::from(r) }).collect();
        let end_cursor = edges.last().map(|e| e.cursor.clone());
        Ok(MessageConnection { edges, page_info: PageInfo { end_cursor, has_next_page } })
    }
}

/// Whether argument `arg` of the current field is a variable the request did not provide and
/// that has no default: graphql-js then treats the argument as absent (its default applies);
/// async-graphql passes null.
fn absent_variable(ctx: &Context<'_>, arg: &str) -> bool {
    let Some(value) = ctx.item.node.get_argument(arg) else { return true };
    let async_graphql_value::Value::Variable(name) = &value.node else { return false };
    let defined_default =
        ctx.query_env.operation.node.variable_definitions.iter().any(|d| d.node.name.node == *name && d.node.default_value.is_some());
    !ctx.query_env.variables.contains_key(name) && !defined_default
}

pub struct Mutation;

/// A savepoint in the request's transaction for one mutation's writes: released when the
/// mutation succeeds, rolled back when it fails (dropped), so an operation with several mutations
/// keeps what succeeded, as the monolith's transaction per mutation does — and a dry run still
/// rolls the whole request back.
async fn savepoint(c: &mut sqlx::PgConnection) -> Result<sqlx::Transaction<'_, sqlx::Postgres>> {
    Ok(sqlx::Connection::begin(c).await?)
}

#[Object]
impl Mutation {
    async fn create_chat(&self, ctx: &Context<'_>, input: CreateChatInput) -> async_graphql::Result<Chat> {
        let me = caller(ctx)?;
        crate::validate::create_chat(&input.member_ids, input.title.as_deref())?;
        let title = input.title.as_deref().map(crate::validate::js_trim).map(str::to_string);
        let mut others: Vec<Uuid> = Vec::new();
        for id in &input.member_ids {
            let id: Uuid = id.to_lowercase().parse().map_err(|_| ChatError::Internal)?;
            if id != me && !others.contains(&id) {
                others.push(id);
            }
        }
        if others.is_empty() {
            return Err(ChatError::BadRequest("memberIds must name at least one other user".into()).into());
        }
        let known = store::known_users(&state(ctx).pool, &others).await?;
        let unknown: Vec<String> = others.iter().filter(|id| !known.contains(id)).map(Uuid::to_string).collect();
        if !unknown.is_empty() {
            return Err(ChatError::BadRequest(format!("Unknown user ids: {}", unknown.join(", "))).into());
        }
        let direct = others.len() == 1 && title.is_none();
        let tx = tx(ctx)?;
        let mut c = tx.conn().await.map_err(ChatError::from)?;
        let mut sp = savepoint(&mut c).await?;
        let chat = match direct {
            true => match store::lock_and_find_direct(&mut sp, me, others[0]).await? {
                Some(existing) => existing,
                None => store::insert_chat(&mut sp, me, None, false, &others).await?,
            },
            false => store::insert_chat(&mut sp, me, title.as_deref(), true, &others).await?,
        };
        sp.commit().await.map_err(ChatError::from)?;
        Ok(chat.into())
    }

    async fn delete_message(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Message> {
        let me = caller(ctx)?;
        let id = store::parse_uuid(&id, "id")?;
        let tx = tx(ctx)?;
        let mut c = tx.conn().await.map_err(ChatError::from)?;
        let mut sp = savepoint(&mut c).await?;
        let row = visible_message(&mut sp, id, me).await?;
        if row.sender_id != me {
            return Err(ChatError::Forbidden("Only the sender can delete a message".into()).into());
        }
        if row.deleted_at.is_some() {
            return Ok(row.into());
        }
        let row = store::delete_message(&mut sp, row.id).await?;
        sp.commit().await.map_err(ChatError::from)?;
        Ok(row.into())
    }

    async fn edit_message(&self, ctx: &Context<'_>, body: String, id: ID) -> async_graphql::Result<Message> {
        let me = caller(ctx)?;
        store::assert_body(&body)?;
        let id = store::parse_uuid(&id, "id")?;
        let tx = tx(ctx)?;
        let mut c = tx.conn().await.map_err(ChatError::from)?;
        let mut sp = savepoint(&mut c).await?;
        let row = visible_message(&mut sp, id, me).await?;
        if row.sender_id != me {
            return Err(ChatError::Forbidden("Only the sender can edit a message".into()).into());
        }
        if row.deleted_at.is_some() {
            return Err(ChatError::not_found_message().into());
        }
        // deleted meanwhile: not found
        let row = store::edit_message(&mut sp, row.id, &body).await?.ok_or_else(ChatError::not_found_message)?;
        sp.commit().await.map_err(ChatError::from)?;
        Ok(row.into())
    }

    async fn mark_read(&self, ctx: &Context<'_>, chat_id: ID, message_id: ID) -> async_graphql::Result<Chat> {
        let me = caller(ctx)?;
        let message = store::parse_uuid(&message_id, "messageId")?;
        let chat_uuid = store::parse_uuid(&chat_id, "chatId")?;
        let tx = tx(ctx)?;
        let mut c = tx.conn().await.map_err(ChatError::from)?;
        let mut sp = savepoint(&mut c).await?;
        let chat = store::require_member(&mut *sp, chat_uuid, me).await?;
        let seq = store::message_seq(&mut *sp, message, chat_uuid).await?.ok_or_else(ChatError::not_found_message)?;
        store::mark_read(&mut sp, chat_uuid, me, seq).await?;
        sp.commit().await.map_err(ChatError::from)?;
        Ok(chat.into())
    }

    async fn send_message(&self, ctx: &Context<'_>, input: SendMessageInput) -> async_graphql::Result<Message> {
        let me = caller(ctx)?;
        crate::validate::send_message(&input.chat_id, &input.body, &input.client_message_id)?;
        let chat_id = store::parse_uuid(&input.chat_id, "chatId")?;
        let tx = tx(ctx)?;
        let (message, new) = {
            let mut c = tx.conn().await.map_err(ChatError::from)?;
            let mut sp = savepoint(&mut c).await?;
            let chat = store::require_member(&mut *sp, chat_id, me).await?;
            let sent = store::send_message(&mut sp, me, &chat, &input.body, &input.client_message_id).await?;
            sp.commit().await.map_err(ChatError::from)?;
            sent
        };
        if let Some(new) = new {
            // after the commit, off the request path: publish on messageAdded (both sides' bus)
            // and push to the recipients' devices; never for a repeat, a dry run or a rollback
            let s = state(ctx).clone();
            tx.after_commit(async move { s.announce(new).await });
        }
        Ok(message.into())
    }
}

/// The message, if the caller may see it: 404 unknown, 403 not a member of its chat.
async fn visible_message(c: &mut sqlx::PgConnection, id: Uuid, me: Uuid) -> Result<MessageRow> {
    let row = store::message(&mut *c, id).await?.ok_or_else(ChatError::not_found_message)?;
    store::require_member(&mut *c, row.chat_id, me).await?;
    Ok(row)
}

pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    // (no description: the monolith's resolver has only a code comment) messages sent to one chat
    // after subscribing; only members may subscribe
    async fn message_added(&self, ctx: &Context<'_>, chat_id: ID) -> async_graphql::Result<impl Stream<Item = Message>> {
        let me = caller(ctx)?;
        let chat = store::parse_uuid(&chat_id, "chatId")?;
        require_member_routed(ctx, chat, me).await?;
        Ok(state(ctx).bus.subscribe(chat).await?)
    }
}

pub type ChatSchema = async_graphql::Schema<Query, Mutation, SubscriptionRoot>;

/// The schema, with the limits of the monolith's Apollo Server (none beyond graphql-js's own),
/// and graphql-js's checks before any resolver ([`crate::graphqljs::Gate`]).
///
/// Introspection stays on here: answers come from the monolith's recorded introspection
/// (`shape`), and over HTTP a production service refuses `__schema`/`__type` as Apollo does
/// (`http`); over the WebSocket the monolith answers them even in production, and so does this.
pub fn build(state: AppState) -> ChatSchema {
    async_graphql::Schema::build(Query, Mutation, SubscriptionRoot).data(state).extension(crate::graphqljs::Gate).finish()
}
