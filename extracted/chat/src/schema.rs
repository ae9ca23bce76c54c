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
use crate::placement::Target;
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

/// Where a read of `chat` goes.
enum ReadAt {
    /// the monolith's tables: the request's transaction if it has begun, else the pool ([`read!`])
    Legacy,
    /// the chat's shard, as the routing reads it
    Shard(sqlx::PgPool),
    /// the request's own transaction on the chat's shard: this request wrote there, and its reads
    /// must see that
    Mine(bm_common::dryrun::OtherConn),
}

/// Where to read `chat` (the chat data move's routing): where this request wrote it, if it did
/// (its transaction on the chat's shard, or on the monolith's tables while the chat's writes are
/// there), else where the routing reads it.
async fn read_at(ctx: &Context<'_>, chat: Uuid) -> Result<ReadAt> {
    if let Some(tx) = ctx.data_opt::<bm_common::dryrun::RequestTx>() {
        match state(ctx).placement.write_shard_name(&chat) {
            Some(name) => {
                if let Some(c) = tx.conn_on_if_begun(&name).await {
                    return Ok(ReadAt::Mine(c));
                }
            }
            None => {
                if tx.conn_if_begun().await.is_some() {
                    return Ok(ReadAt::Legacy);
                }
            }
        }
    }
    Ok(match state(ctx).placement.read_shard(&chat)? {
        Some(pool) => ReadAt::Shard(pool),
        None => ReadAt::Legacy,
    })
}

/// 404/403 as [`store::require_member`], wherever the routing reads the chat.
async fn require_member_routed(ctx: &Context<'_>, chat: Uuid, me: Uuid) -> Result<ChatRow> {
    match read_at(ctx, chat).await? {
        ReadAt::Shard(shard) => store::on_shard::require_member(&shard, chat, me).await,
        ReadAt::Mine(mut c) => store::on_shard::require_member(&mut *c, chat, me).await,
        ReadAt::Legacy => read!(ctx, store::require_member, chat, me),
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
        let main = &state(ctx).pool;
        let row = match read_at(ctx, self.row.id).await? {
            ReadAt::Shard(shard) => store::on_shard::last_message(&shard, main, self.row.id).await?,
            ReadAt::Mine(mut c) => store::on_shard::last_message(&mut *c, main, self.row.id).await?,
            ReadAt::Legacy => read!(ctx, store::last_message, self.row.id)?,
        };
        Ok(row.map(Message::from))
    }

    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ChatMember>> {
        let main = &state(ctx).pool;
        let rows = match read_at(ctx, self.row.id).await? {
            ReadAt::Shard(shard) => store::on_shard::members(&shard, main, self.row.id).await?,
            ReadAt::Mine(mut c) => store::on_shard::members(&mut *c, main, self.row.id).await?,
            ReadAt::Legacy => read!(ctx, store::members, self.row.id)?,
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
        Ok(match read_at(ctx, self.row.id).await? {
            ReadAt::Shard(shard) => store::on_shard::unread_count(&shard, self.row.id, me).await?,
            ReadAt::Mine(mut c) => store::on_shard::unread_count(&mut *c, self.row.id, me).await?,
            ReadAt::Legacy => read!(ctx, store::unread_count, self.row.id, me)?,
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

    /// The caller's chats, newest activity first.
    async fn chats(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Chat>> {
        let me = caller(ctx)?;
        let rows = match state(ctx).placement.inbox_shard(&me) {
            // the caller's inbox, on their shard (docs/chat-sharding.md); through this request's
            // transaction there if it wrote there
            Some((name, pool)) => {
                let mine = match ctx.data_opt::<bm_common::dryrun::RequestTx>() {
                    Some(tx) => tx.conn_on_if_begun(&name).await,
                    None => None,
                };
                match mine {
                    Some(mut c) => store::on_shard::chats_from_inbox(&mut *c, me).await?,
                    None => store::on_shard::chats_from_inbox(&pool, me).await?,
                }
            }
            None => store::chats(&state(ctx).pool, me).await?,
        };
        Ok(rows.into_iter().map(Chat::from).collect())
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
        let mut rows = match read_at(ctx, chat).await? {
            ReadAt::Shard(shard) => {
                let mut c = shard.acquire().await.map_err(ChatError::from)?;
                store::on_shard::messages_of_member(&mut c, pool, chat, me, before, i64::from(first)).await?
            }
            ReadAt::Mine(mut c) => store::on_shard::messages_of_member(&mut c, pool, chat, me, before, i64::from(first)).await?,
            ReadAt::Legacy => {
                read!(ctx, store::require_member, chat, me)?;
                read!(ctx, store::messages, chat, before, i64::from(first))?
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

/// A mutation's writes on a shard: the request's transaction there itself when the mutation just
/// began it (nothing else of the request in it: a failure discards it whole, see
/// [`in_unit`]), else a savepoint in it. Two round trips fewer for the usual request of one
/// mutation — on a busy host each costs a wake-up of the service and of PostgreSQL
/// (docs/benchmarks.md).
enum Unit<'c> {
    Whole(&'c mut sqlx::PgConnection),
    Part(sqlx::Transaction<'c, sqlx::Postgres>),
}

impl Unit<'_> {
    async fn keep(self) -> Result<()> {
        if let Unit::Part(sp) = self {
            sp.commit().await?;
        }
        Ok(())
    }
}

impl std::ops::Deref for Unit<'_> {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &sqlx::PgConnection {
        match self {
            Unit::Whole(c) => c,
            Unit::Part(sp) => sp,
        }
    }
}

impl std::ops::DerefMut for Unit<'_> {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        match self {
            Unit::Whole(c) => c,
            Unit::Part(sp) => sp,
        }
    }
}

async fn unit(c: &mut bm_common::dryrun::OtherConn) -> Result<Unit<'_>> {
    if c.is_fresh() {
        Ok(Unit::Whole(c))
    } else {
        Ok(Unit::Part(savepoint(c).await?))
    }
}

/// Runs `$body` (which opens its [`Unit`] on `$c` and keeps it) and, if it fails in a transaction
/// it began, discards that transaction.
macro_rules! in_unit {
    ($c:ident, $body:block) => {{
        let r: Result<_> = async { $body }.await;
        if r.is_err() && $c.is_fresh() {
            $c.discard().await;
        }
        r
    }};
}

/// Runs a mutation's body, and again (up to three times) when the chat data move's write fence
/// refused its write: the chat's writes moved since the routing was read, so it reads the routing
/// again and writes where it now says. The failed attempt's writes are rolled back with its
/// savepoint.
macro_rules! where_routed {
    ($ctx:expr, $body:block) => {{
        let mut attempts = 0;
        loop {
            let r: Result<_> = async $body.await;
            match r {
                Err(ChatError::Moved) if attempts < 3 => {
                    attempts += 1;
                    metrics::counter!("chat_writes_rerouted_total").increment(1);
                    if let Err(e) = state($ctx).placement.reload().await {
                        tracing::warn!(error = %e, "reading the chat routing");
                    }
                }
                Err(ChatError::Moved) => {
                    tracing::error!("a write kept meeting the chat data move's fence after reading the routing again");
                    break Err(ChatError::Internal);
                }
                r => break r,
            }
        }
    }};
}

/// Where the message `id` is written: its chat's write target. Without a move that has switched
/// writes, the monolith's tables. Otherwise its chat is looked up — in the monolith's tables
/// (whole while a move's reverse sync runs), else on the shard its id's bucket names (a message
/// minted after the chat service began minting ids in their chat's bucket, written there and not
/// yet synced back). Unknown: the monolith's tables (which answer 404).
async fn message_target(ctx: &Context<'_>, id: Uuid) -> Result<Target> {
    let placement = &state(ctx).placement;
    if placement.writes_all_legacy() {
        return Ok(Target::Legacy);
    }
    let mut chat: Option<Uuid> =
        sqlx::query_scalar("SELECT chat_id FROM legacy.messages WHERE id = $1").bind(id).fetch_optional(&state(ctx).pool).await?;
    if chat.is_none() {
        if let Some(shard) = placement.read_pool_of_bucket(&id) {
            chat = store::on_shard::chat_of_message(&shard, id).await?;
        }
    }
    match chat {
        Some(chat) => placement.write_target(&chat).await,
        None => Ok(Target::Legacy),
    }
}

/// The actor's own inbox row for `chat` (they read their own writes), wherever their inbox is:
/// written once the request has committed, before it answers, on that shard's pool — never
/// while this request holds its transaction on the chat's shard (requests holding one shard and
/// waiting for another's connections starved both pools under load). A failure is logged: the
/// inbox projection writes the same row from the event. Nothing to do when the actor's inbox is
/// on `written`, the shard whose transaction just wrote the chat's rows: that transaction moved
/// (or wrote) the inbox rows there, the actor's among them — an upsert per message on top of it
/// was the sharded path's most frequent extra statement (docs/benchmarks.md).
fn own_inbox(ctx: &Context<'_>, me: Uuid, chat: &ChatRow, written: &str) -> Result<()> {
    if let Some((name, pool)) = state(ctx).placement.inbox_shard(&me).filter(|(name, _)| name != written) {
        let chat = chat.clone();
        tx(ctx)?.on_commit(async move {
            if let Err(e) = store::on_shard::upsert_inbox(&pool, &[me], &chat).await {
                tracing::warn!(shard = %name, user = %me, error = ?e, "writing the actor's inbox row (the projection will)");
            }
        });
    }
    Ok(())
}

/// The oldest direct chat of the pair wherever it may be written: the monolith's tables (every
/// chat, while a move's reverse sync runs) and the shards where either user's new chats are
/// written (a chat created there may not be synced back yet). The caller holds the pair's lock
/// on the monolith's database, released after the shards' commits.
async fn find_direct_routed(ctx: &Context<'_>, main: &mut sqlx::PgConnection, a: Uuid, b: Uuid) -> Result<Option<ChatRow>> {
    let tx = tx(ctx)?;
    let mut found: Vec<ChatRow> = store::find_direct(main, a, b).await?.into_iter().collect();
    let mut seen: Vec<String> = Vec::new();
    for user in [a, b] {
        if let Target::Shard { name, pool } = state(ctx).placement.write_target(&bm_shards::mint_chat_id(&user)).await? {
            if seen.contains(&name) {
                continue;
            }
            let on = match tx.conn_on_if_begun(&name).await {
                Some(mut c) => store::on_shard::find_direct(&mut *c, a, b).await?,
                None => store::on_shard::find_direct(&pool, a, b).await?,
            };
            found.extend(on);
            seen.push(name);
        }
    }
    Ok(found.into_iter().min_by_key(|c| (c.created_at, c.id)))
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
        // in the creator's bucket: homed on the creator's shard once chats live on shards
        let id = bm_shards::mint_chat_id(&me);
        let chat = where_routed!(ctx, {
            let target = state(ctx).placement.write_target(&id).await?;
            if state(ctx).placement.writes_all_legacy() {
                let mut c = tx.conn().await?;
                let mut sp = savepoint(&mut c).await?;
                let chat = match direct {
                    true => match store::lock_and_find_direct(&mut sp, me, others[0]).await? {
                        Some(existing) => existing,
                        None => store::insert_chat(&mut sp, id, me, None, false, &others).await?,
                    },
                    false => store::insert_chat(&mut sp, id, me, title.as_deref(), true, &others).await?,
                };
                sp.commit().await?;
                return Ok(chat);
            }
            // a move has switched some chats' writes: a direct chat may be on a shard. The new
            // chat's shard transaction first, then the monolith's lock: a request holding the
            // main pool's connection never waits for a shard's (sendMessage holds a shard's and
            // reads the main database)
            if let Target::Shard { name, pool } = &target {
                drop(tx.conn_on(name, pool).await?);
            }
            let existing = match direct {
                true => {
                    let mut c = tx.conn().await?;
                    store::lock_direct(&mut c, me, others[0]).await?;
                    find_direct_routed(ctx, &mut c, me, others[0]).await?
                }
                false => None,
            };
            if let Some(existing) = existing {
                return Ok(existing);
            }
            let group_title = if direct { None } else { title.as_deref() };
            match target {
                Target::Legacy => {
                    let mut c = tx.conn().await?;
                    let mut sp = savepoint(&mut c).await?;
                    let chat = store::insert_chat(&mut sp, id, me, group_title, !direct, &others).await?;
                    sp.commit().await?;
                    Ok(chat)
                }
                Target::Shard { name, pool } => {
                    let placement = &state(ctx).placement;
                    let mut c = tx.conn_on(&name, &pool).await?;
                    let mut sp = savepoint(&mut c).await?;
                    let chat = store::on_shard::insert_chat(&mut sp, id, me, group_title, !direct, &others).await?;
                    // the inboxes on this shard in the chat's transaction; the others' from the event
                    let mut members = vec![me];
                    members.extend_from_slice(&others);
                    let here: Vec<Uuid> =
                        members.iter().copied().filter(|u| placement.inbox_shard(u).is_some_and(|(s, _)| s == name)).collect();
                    store::on_shard::upsert_inbox(&mut *sp, &here, &chat).await?;
                    let event = bm_events::event::ChatCreated::new(chat.id, members, chat.created_at);
                    bm_events::outbox::enqueue_into(&mut sp, bm_events::outbox::CHAT_SHARD, &event.to_outbox()).await?;
                    sp.commit().await?;
                    own_inbox(ctx, me, &chat, &name)?;
                    Ok(chat)
                }
            }
        })?;
        Ok(chat.into())
    }

    async fn delete_message(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Message> {
        let me = caller(ctx)?;
        let id = store::parse_uuid(&id, "id")?;
        let tx = tx(ctx)?;
        let main = &state(ctx).pool;
        let row = where_routed!(ctx, {
            match message_target(ctx, id).await? {
                Target::Legacy => {
                    let mut c = tx.conn().await?;
                    let mut sp = savepoint(&mut c).await?;
                    let row = sent_by(visible_message(&mut sp, id, me).await?, me, "delete")?;
                    if row.deleted_at.is_some() {
                        return Ok(row);
                    }
                    let row = store::delete_message(&mut sp, row.id).await?;
                    sp.commit().await?;
                    Ok(row)
                }
                Target::Shard { name, pool } => {
                    let mut c = tx.conn_on(&name, &pool).await?;
                    in_unit!(c, {
                        let mut sp = unit(&mut c).await?;
                        let row = sent_by(visible_message_on_shard(&mut sp, main, id, me).await?, me, "delete")?;
                        if row.deleted_at.is_some() {
                            return Ok(row);
                        }
                        let row = store::on_shard::delete_message(&mut sp, main, row.id).await?;
                        sp.keep().await?;
                        Ok(row)
                    })
                }
            }
        })?;
        Ok(row.into())
    }

    async fn edit_message(&self, ctx: &Context<'_>, body: String, id: ID) -> async_graphql::Result<Message> {
        let me = caller(ctx)?;
        store::assert_body(&body)?;
        let id = store::parse_uuid(&id, "id")?;
        let tx = tx(ctx)?;
        let main = &state(ctx).pool;
        let row = where_routed!(ctx, {
            match message_target(ctx, id).await? {
                Target::Legacy => {
                    let mut c = tx.conn().await?;
                    let mut sp = savepoint(&mut c).await?;
                    let row = sent_by(visible_message(&mut sp, id, me).await?, me, "edit")?;
                    if row.deleted_at.is_some() {
                        return Err(ChatError::not_found_message());
                    }
                    // deleted meanwhile: not found
                    let row = store::edit_message(&mut sp, row.id, &body).await?.ok_or_else(ChatError::not_found_message)?;
                    sp.commit().await?;
                    Ok(row)
                }
                Target::Shard { name, pool } => {
                    let mut c = tx.conn_on(&name, &pool).await?;
                    in_unit!(c, {
                        let mut sp = unit(&mut c).await?;
                        let row = sent_by(visible_message_on_shard(&mut sp, main, id, me).await?, me, "edit")?;
                        if row.deleted_at.is_some() {
                            return Err(ChatError::not_found_message());
                        }
                        let row =
                            store::on_shard::edit_message(&mut sp, main, row.id, &body).await?.ok_or_else(ChatError::not_found_message)?;
                        sp.keep().await?;
                        Ok(row)
                    })
                }
            }
        })?;
        Ok(row.into())
    }

    async fn mark_read(&self, ctx: &Context<'_>, chat_id: ID, message_id: ID) -> async_graphql::Result<Chat> {
        let me = caller(ctx)?;
        let message = store::parse_uuid(&message_id, "messageId")?;
        let chat_uuid = store::parse_uuid(&chat_id, "chatId")?;
        let tx = tx(ctx)?;
        let chat = where_routed!(ctx, {
            match state(ctx).placement.write_target(&chat_uuid).await? {
                Target::Legacy => {
                    let mut c = tx.conn().await?;
                    let mut sp = savepoint(&mut c).await?;
                    let chat = store::require_member(&mut *sp, chat_uuid, me).await?;
                    let seq = store::message_seq(&mut *sp, message, chat_uuid).await?.ok_or_else(ChatError::not_found_message)?;
                    store::mark_read(&mut sp, chat_uuid, me, seq).await?;
                    sp.commit().await?;
                    Ok(chat)
                }
                Target::Shard { name, pool } => {
                    let mut c = tx.conn_on(&name, &pool).await?;
                    in_unit!(c, {
                        let mut sp = unit(&mut c).await?;
                        let chat = store::on_shard::require_member(&mut *sp, chat_uuid, me).await?;
                        let seq =
                            store::on_shard::message_seq(&mut *sp, message, chat_uuid).await?.ok_or_else(ChatError::not_found_message)?;
                        store::on_shard::mark_read(&mut sp, chat_uuid, me, seq).await?;
                        sp.keep().await?;
                        Ok(chat)
                    })
                }
            }
        })?;
        Ok(chat.into())
    }

    async fn send_message(&self, ctx: &Context<'_>, input: SendMessageInput) -> async_graphql::Result<Message> {
        let me = caller(ctx)?;
        crate::validate::send_message(&input.chat_id, &input.body, &input.client_message_id)?;
        let chat_id = store::parse_uuid(&input.chat_id, "chatId")?;
        let tx = tx(ctx)?;
        let (message, new) = where_routed!(ctx, {
            match state(ctx).placement.write_target(&chat_id).await? {
                Target::Legacy => {
                    let mut c = tx.conn().await?;
                    let mut sp = savepoint(&mut c).await?;
                    let chat = store::require_member(&mut *sp, chat_id, me).await?;
                    let sent = store::send_message(&mut sp, me, &chat, &input.body, &input.client_message_id).await?;
                    sp.commit().await?;
                    Ok(sent)
                }
                Target::Shard { name, pool } => {
                    // what the monolith's database has to say, read while the shard's transaction
                    // begins: two round trips at once (each one waits for a core on a busy host:
                    // docs/benchmarks.md). On the side-reads pool, never the main one: nothing
                    // waits for the main pool while holding a shard's connection
                    let (from, c) = tokio::join!(store::on_shard::SenderFacts::read(&state(ctx).side_reads, me), tx.conn_on(&name, &pool));
                    let (from, mut c) = (from?, c?);
                    in_unit!(c, {
                        let mut sp = unit(&mut c).await?;
                        // (the chat's activity on the inboxes here is in the message's transaction;
                        // the sender's own row wherever it is, below; the other members' from the event)
                        let (chat, message, new) =
                            store::on_shard::send_message(&mut sp, &from, me, chat_id, &input.body, &input.client_message_id).await?;
                        let active = new.as_ref().map(|new| ChatRow { updated_at: new.message.created_at, ..chat });
                        let sent = (message, new);
                        sp.keep().await?;
                        if let Some(row) = active {
                            own_inbox(ctx, me, &row, &name)?;
                        }
                        Ok(sent)
                    })
                }
            }
        })?;
        if let Some(new) = new {
            // on messageAdded (both sides' bus) as the request commits, while it still holds its
            // chat's lock: the chat's messages reach subscribers in the order they commit (after
            // the commit, two senders' publications raced: seen out of order under load). Pushes
            // after the commit, off the request path. Never for a repeat, a dry run or a rollback.
            let s = state(ctx).clone();
            let message = new.message.clone();
            tx.before_commit(async move { s.bus.publish(&message).await });
            let s = state(ctx).clone();
            tx.after_commit(async move {
                let mut new = new;
                if new.devices_later {
                    match store::on_shard::devices(&s.pool, &new.recipients).await {
                        Ok(d) => new.devices = d,
                        Err(e) => tracing::error!(error = ?e, "reading the recipients' devices: no push for this message"),
                    }
                }
                crate::push::new_message(&s, &new).await
            });
        }
        Ok(message.into())
    }
}

/// `row`, if `me` sent it (only the sender edits or deletes a message): 403 otherwise.
fn sent_by(row: MessageRow, me: Uuid, verb: &str) -> Result<MessageRow> {
    if row.sender_id != me {
        return Err(ChatError::Forbidden(format!("Only the sender can {verb} a message")));
    }
    Ok(row)
}

/// [`visible_message`] on the chat's shard.
async fn visible_message_on_shard(c: &mut sqlx::PgConnection, main: &sqlx::PgPool, id: Uuid, me: Uuid) -> Result<MessageRow> {
    let row = store::on_shard::message(&mut *c, main, id).await?.ok_or_else(ChatError::not_found_message)?;
    store::on_shard::require_member(&mut *c, row.chat_id, me).await?;
    Ok(row)
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
