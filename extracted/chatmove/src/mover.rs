//! The mover's I/O: one move at a time (an advisory lock on the control database), its state in
//! `chat_move.*` there, so a `kill -9` at any point and a second `run` continue where it stopped.
//!
//! * **prepare**: `wal_level` checked; `messages` gets a unique `(id, chat_id)` index as its
//!   replica identity on every database of the move (a row filter on `chat_id` needs it); the
//!   write fence ([`plan::fence_install_sql`]); on each source the publication (row filter: the
//!   moving buckets), then the slot — in that order, since decoding reads the publication as of
//!   each change's position.
//! * **copy**: chunks by the table's key, rows of the moving buckets inserted on their new shard
//!   (already there: left alone; their chat not there: skipped — the follow stage brings both),
//!   progress recorded after each chunk.
//! * **follow**: the slot's changes since before the copy, streamed over a replication
//!   connection and applied in order (whole rows upserted, deletes by key), the applied position
//!   reported back after the targets commit: re-applying after a crash replays the same
//!   sequence, so it ends in the same state.
//! * **verify**: chunk by chunk, source against targets, a checksum of every column of every row;
//!   rows that differ are read again after the follow stage has passed the source's position,
//!   up to [`VERIFY_ATTEMPTS`] times, before they are reported by key.
//! * **switch reads**: the routing ([`crate::routing`]) sends the moving buckets' reads to the
//!   targets; writes stay on the source, followed.
//! * **switch writes**: caught up; the routing pauses the moving buckets' writes; the fence
//!   closes on the sources (waiting for writes in flight); the follow stage drains; on each
//!   target a reverse publication and slot are created (before its first write) and its message
//!   sequence is set above every `seq` so far; the routing sends writes to the targets. From then
//!   on **reverse sync** applies the targets' changes to the sources, so a rollback loses nothing.
//! * **rollback**: the other way — the fence closes on the targets, reverse sync drains, the
//!   source's sequence moves past every `seq`, the source's fence opens, the routing returns, and
//!   the copies are removed from the targets.
//! * **finish** (when the monolith is switched off, or for a shard source at once): reverse sync
//!   ends; a shard source's moved rows are removed. The new map becomes the routing's map.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use bm_shards::verify::{diff, RowSum};
use bm_shards::{ShardMap, BUCKETS};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use thiserror::Error;
use uuid::Uuid;

use crate::pgoutput::{self, Message, Relation, Value};
use crate::plan::{self, Origin, Plan, TableSpec, LEGACY, TABLES};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

/// The advisory lock key every mover takes on the control database ("chatmo" in ASCII).
pub const LOCK_KEY: i64 = 0x6368_6174_6d6f;
/// `pg_locks l` rows of the move lock held on this database (advisory locks are per database;
/// other databases on the server have movers of their own). `$1`: [`LOCK_KEY`].
pub(crate) const MOVE_LOCK: &str = "l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND (l.classid::bigint << 32 | l.objid::bigint) = $1";
/// How often verify reads differing rows again (after the follow stage caught up) before it
/// reports them.
pub const VERIFY_ATTEMPTS: usize = 5;
/// The channel the mover notifies on the control database when the routing changes.
pub const ROUTING_CHANNEL: &str = "chat_routing";

#[derive(Debug, Error)]
pub enum MoveError {
    #[error("another mover is running: {0}. Wait for it, or stop that process; one move runs at a time")]
    Locked(String),
    #[error("{context}: {source}")]
    Db { context: String, source: sqlx::Error },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("the follow stream of `{source_name}`: {error}")]
    Decode { source_name: String, error: pgoutput::DecodeError },
}

pub type Result<T, E = MoveError> = std::result::Result<T, E>;

pub(crate) trait Ctx<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}
impl<T> Ctx<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| MoveError::Db { context: context(), source })
    }
}

/// Connects to one database with the session settings the move relies on: UTC (timestamps are
/// compared and re-parsed as text), `session_replication_role = replica` (the mover's writes
/// pass the write fence and are not checked again by foreign keys: it applies changes in their
/// commit order) and an application name an operator can find in `pg_stat_activity`.
pub async fn connect(what: &str, url: &str, max: u32) -> Result<PgPool> {
    let opts: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .map_err(|e| MoveError::Refused(format!("{what}: the database URL does not parse: {e}")))?
        .options([("TimeZone", "UTC"), ("session_replication_role", "replica")])
        .application_name("bm-chat move");
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .ctx(|| format!("{what} is unreachable ({})", redact(url)))
}

pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "an unparsable URL".into(),
    }
}

pub(crate) const CONTROL_SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS chat_move;
CREATE TABLE IF NOT EXISTS chat_move.moves (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_map      text,                -- NULL: from the monolith's tables
    to_map        text NOT NULL,
    to_version    bigint NOT NULL,
    -- names the move's slots and publications: slot names are unique in a whole PostgreSQL
    -- cluster, which may hold other databases with moves of their own (dev, tests)
    tag           text NOT NULL DEFAULT substr(md5(random()::text), 1, 10),
    stage         text NOT NULL,
    -- a command for the running mover (switch-reads, switch-writes, rollback, finish) and how it went
    request       text,
    request_error text,
    -- the longest time writes to the moving buckets waited at the switch, in ms
    write_pause_ms bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS moves_one_open ON chat_move.moves ((true)) WHERE ended_at IS NULL;
-- when the moving users' inboxes were last derived (the next derivation reads what changed since)
ALTER TABLE chat_move.moves ADD COLUMN IF NOT EXISTS inbox_since timestamptz;

CREATE TABLE IF NOT EXISTS chat_move.copy_progress (
    move_id      bigint NOT NULL REFERENCES chat_move.moves (id),
    source       text NOT NULL,
    tbl          text NOT NULL,
    last_key     uuid,
    done         boolean NOT NULL DEFAULT false,
    rows_copied  bigint NOT NULL DEFAULT 0,
    rows_total   bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (move_id, source, tbl)
);
CREATE TABLE IF NOT EXISTS chat_move.verify_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    move_id       bigint NOT NULL REFERENCES chat_move.moves (id),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    rows_compared bigint NOT NULL DEFAULT 0,
    differences   jsonb NOT NULL DEFAULT '[]'
);
"#;

/// Stages, in order; a move ends `done`, `rolled-back` or `aborted`.
pub const STAGES: [&str; 10] = [
    "prepare",
    "copy",
    "verify",
    "following",
    "reads-switched",
    "switching-writes",
    "writes-switched",
    "rolling-back",
    "done",
    "rolled-back",
];

/// One stream of changes: a database's slot, applied to the databases the routing names.
struct Follow {
    /// the database it reads (a name in `Mover::pools`)
    db: String,
    schema: &'static str,
    slot: String,
    publication: String,
    buckets: Vec<RangeInclusive<u16>>,
    /// forward (source → targets) or reverse (a target → the sources)
    reverse: bool,
    relations: HashMap<u32, Relation>,
    /// the replication connection reading the slot, once opened
    stream: Option<Stream>,
}

/// One decoding session on a slot (`START_REPLICATION … LOGICAL`), kept open while the move
/// follows: the server decodes each change once, as it is written. (The SQL interface,
/// `pg_logical_slot_peek_binary_changes`, sets a decoding session up per call and decodes from
/// the slot's restart point again — on PostgreSQL 15 up to 15 s of the database's WAL per call.)
struct Stream {
    client: pgwire_replication::ReplicationClient,
    /// the changes of the transaction being received, applied once its commit arrives
    open: Vec<(String, String, String)>,
    /// markers (`pg_logical_emit_message`) seen since the last catch-up asked for one
    markers: Vec<String>,
}

/// The prefix of the mover's catch-up markers in the WAL.
const MARKER_PREFIX: &str = "bm-chat-move";

pub struct Mover {
    pub plan: Plan,
    pub move_id: i64,
    tag: String,
    control: PgPool,
    /// every database of the move by name: `legacy` and shard names
    pools: BTreeMap<String, PgPool>,
    /// and their URLs (the follow stage opens replication connections with them)
    urls: BTreeMap<String, String>,
    /// each bucket's database before and after the move
    before: Vec<String>,
    after: Vec<String>,
    forward: Vec<Follow>,
    reverse: Vec<Follow>,
    /// the old map (None: from the monolith's tables)
    from_map: Option<ShardMap>,
    /// held for the mover's life: the lock is the session's
    _lock: PgConnection,
    pub chunk: i64,
    pub pause: Duration,
}

/// One difference verify found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub table: String,
    /// `missing` on the target, `extra` on the target, or `changed`
    pub kind: &'static str,
    pub key: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub rows_compared: u64,
    pub chunks: u64,
    /// chunks whose differing rows agreed when read again (writes in flight)
    pub rechecked: u64,
    pub differences: Vec<Difference>,
    pub seconds: f64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Progress of the copy, as reported after each chunk.
#[derive(Debug, Clone, Serialize)]
pub struct CopyProgress {
    pub source: String,
    pub table: String,
    pub rows_copied: i64,
    pub rows_total: i64,
}

/// What the switch of writes took.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchReport {
    /// from the routing pausing the moving buckets' writes to sending them to the targets
    pub write_pause_ms: u64,
    /// changes applied while writes were paused
    pub drained: usize,
}

pub(crate) fn slot_name(tag: &str, db: &str, reverse: bool) -> String {
    format!("chat_move_{tag}_{}{db}", if reverse { "rev_" } else { "" })
}

/// The settings of a move.
pub struct MoveSpec {
    pub from: Origin,
    /// the old map's text (None: from the monolith's tables)
    pub from_text: Option<String>,
    pub to: ShardMap,
    pub to_text: String,
}

impl MoveSpec {
    /// From the texts stored with a move.
    pub fn parse(from_text: Option<String>, to_text: String) -> Result<MoveSpec> {
        let to = ShardMap::parse("the move's new map", &to_text).map_err(|e| MoveError::Refused(e.to_string()))?;
        let from = match &from_text {
            None => Origin::Legacy,
            Some(t) => Origin::Map(ShardMap::parse("the move's old map", t).map_err(|e| MoveError::Refused(e.to_string()))?),
        };
        Ok(MoveSpec { from, from_text, to, to_text })
    }

    /// Each bucket's database before the move.
    pub fn before(&self) -> Vec<String> {
        (0..BUCKETS)
            .map(|b| match &self.from {
                Origin::Legacy => LEGACY.to_string(),
                Origin::Map(m) => m.shard_for_bucket(b).name.clone(),
            })
            .collect()
    }
}

/// Whether the move lock is free, without taking it.
pub async fn lock_is_free(control: &mut PgConnection) -> Result<bool> {
    let held: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE {MOVE_LOCK})"))
        .bind(LOCK_KEY)
        .fetch_one(control)
        .await
        .ctx(|| "reading the move lock".into())?;
    Ok(!held)
}

impl Mover {
    /// Takes the lock, creates or resumes the move, connects to every database it touches.
    /// `url_of` reads a URL from the environment by name.
    pub async fn open(control_url: &str, spec: MoveSpec, url_of: &dyn Fn(&str) -> Option<String>) -> Result<Mover> {
        let plan = plan::plan(&spec.from, &spec.to)?;
        let mut lock = PgConnection::connect_with(
            &control_url
                .parse::<PgConnectOptions>()
                .map_err(|e| MoveError::Refused(format!("DATABASE_URL does not parse: {e}")))?
                .application_name(&format!("bm-chat move (pid {} on {})", std::process::id(), hostname())),
        )
        .await
        .ctx(|| format!("the control database (DATABASE_URL, {}) is unreachable", redact(control_url)))?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut lock)
            .await
            .ctx(|| "taking the move lock".into())?;
        if !got {
            return Err(MoveError::Locked(lock_holder(&mut lock).await));
        }
        let control = connect("the control database (DATABASE_URL)", control_url, 2).await?;
        sqlx::raw_sql(CONTROL_SCHEMA).execute(&control).await.ctx(|| "creating the chat_move tables".into())?;

        // every database, reachable, or every problem at once — before anything is recorded
        let mut problems = Vec::new();
        let mut urls: BTreeMap<String, String> = BTreeMap::new();
        let old_shards = match &spec.from {
            Origin::Legacy => vec![],
            Origin::Map(m) => m.shards.clone(),
        };
        for s in spec.to.shards.iter().chain(&old_shards) {
            if urls.contains_key(&s.name) || problems.iter().any(|p: &String| p.contains(&format!("`{}`", s.name))) {
                continue;
            }
            match url_of(&s.url_env).filter(|u| !u.is_empty()) {
                Some(u) => {
                    urls.insert(s.name.clone(), u);
                }
                None => problems.push(format!("{} is not set (the database URL of shard `{}`)", s.url_env, s.name)),
            }
        }
        if !problems.is_empty() {
            return Err(MoveError::Refused(problems.join("; ")));
        }
        let mut pools = BTreeMap::new();
        if plan.sources.iter().any(|s| s.name == LEGACY) {
            urls.insert(LEGACY.into(), control_url.to_string());
        }
        for (name, url) in &urls {
            let what = if name == LEGACY { "the monolith's database (DATABASE_URL)".to_string() } else { format!("shard `{name}`") };
            match connect(&what, url, 4).await {
                Ok(p) => {
                    pools.insert(name.clone(), p);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(MoveError::Refused(problems.join("; ")));
        }

        // the open move, if any, must be this one
        let open: Option<(i64, Option<String>, String, i64, String)> =
            sqlx::query_as("SELECT id, from_map, to_map, to_version, tag FROM chat_move.moves WHERE ended_at IS NULL")
                .fetch_optional(&control)
                .await
                .ctx(|| "reading the open move".into())?;
        let (move_id, tag) = match open {
            Some((id, from_map, to_map, version, tag)) => {
                if to_map != spec.to_text || from_map != spec.from_text {
                    return Err(MoveError::Refused(format!(
                        "move {id} (to shard map version {version}) is open with other maps than these: finish it, or `bm-chat move abort` it, before starting another"
                    )));
                }
                (id, tag)
            }
            None => {
                // the data must be where the move says it is: the map in effect
                let current: Option<Option<String>> =
                    sqlx::query_scalar("SELECT to_map FROM chat_move.moves WHERE stage = 'done' ORDER BY id DESC LIMIT 1")
                        .fetch_optional(&control)
                        .await
                        .ctx(|| "reading the map in effect".into())?;
                let current = current.flatten();
                if current != spec.from_text {
                    return Err(MoveError::Refused(match current {
                        None => "the chat data is in the monolith's tables: start the move without --from".into(),
                        Some(_) => "--from is not the map in effect (the last finished move's map): pass that map as --from".into(),
                    }));
                }
                sqlx::query_as(
                    "INSERT INTO chat_move.moves (from_map, to_map, to_version, stage) VALUES ($1, $2, $3, 'prepare') RETURNING id, tag",
                )
                .bind(&spec.from_text)
                .bind(&spec.to_text)
                .bind(spec.to.version as i64)
                .fetch_one(&control)
                .await
                .ctx(|| "recording the move".into())?
            }
        };
        let forward = plan
            .sources
            .iter()
            .map(|s| Follow {
                db: s.name.clone(),
                schema: s.schema,
                slot: slot_name(&tag, &s.name, false),
                publication: slot_name(&tag, &s.name, false),
                buckets: s.buckets.clone(),
                reverse: false,
                relations: HashMap::new(),
                stream: None,
            })
            .collect();
        let mut received: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for s in &plan.sources {
            for (t, ranges) in &s.targets {
                received.entry(t.clone()).or_default().extend(ranges.iter().flat_map(|r| r.clone()));
            }
        }
        let reverse = received
            .into_iter()
            .map(|(name, mut b)| {
                b.sort_unstable();
                Follow {
                    slot: slot_name(&tag, &name, true),
                    publication: slot_name(&tag, &name, true),
                    db: name,
                    schema: "chat",
                    buckets: plan::ranges(b),
                    reverse: true,
                    relations: HashMap::new(),
                    stream: None,
                }
            })
            .collect();
        let before = spec.before();
        let after = (0..BUCKETS).map(|b| spec.to.shard_for_bucket(b).name.clone()).collect();
        let from_map = match spec.from {
            Origin::Legacy => None,
            Origin::Map(m) => Some(m),
        };
        let mover = Mover {
            plan,
            move_id,
            tag,
            control,
            pools,
            urls,
            before,
            after,
            forward,
            reverse,
            from_map,
            _lock: lock,
            chunk: 2000,
            pause: Duration::ZERO,
        };
        mover.check_schemas().await?;
        let stage = mover.stage().await?;
        for s in STAGES {
            metrics::gauge!("chat_move_stage", "stage" => s).set(if s == stage { 1.0 } else { 0.0 });
        }
        Ok(mover)
    }

    /// Every database has the tables with the columns the move copies.
    async fn check_schemas(&self) -> Result<()> {
        let mut problems = Vec::new();
        for (name, pool) in &self.pools {
            let schema = plan::schema_of(name);
            let what = if name == LEGACY { "the monolith's database".to_string() } else { format!("shard `{name}`") };
            for t in &TABLES {
                let cols: Vec<String> = sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                )
                .bind(schema)
                .bind(t.name)
                .fetch_all(pool)
                .await
                .ctx(|| format!("reading {what}'s tables"))?;
                let mut have = cols.clone();
                have.sort();
                let mut want: Vec<String> = t.columns.iter().map(|c| c.to_string()).collect();
                want.sort();
                if cols.is_empty() {
                    problems.push(format!("{what} has no table {schema}.{} (run scripts/migrate with CHAT_SHARD_URLS naming it)", t.name));
                } else if have != want {
                    problems.push(format!("{what}: {schema}.{} has columns {cols:?}, the move copies {:?}", t.name, t.columns));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MoveError::Refused(problems.join("; ")))
        }
    }

    pub async fn stage(&self) -> Result<String> {
        sqlx::query_scalar("SELECT stage FROM chat_move.moves WHERE id = $1")
            .bind(self.move_id)
            .fetch_one(&self.control)
            .await
            .ctx(|| "reading the stage".into())
    }

    async fn set_stage(&self, stage: &str) -> Result<()> {
        tracing::info!(move_id = self.move_id, stage, "chat move stage");
        for s in STAGES {
            metrics::gauge!("chat_move_stage", "stage" => s).set(if s == stage { 1.0 } else { 0.0 });
        }
        let end = matches!(stage, "done" | "rolled-back" | "aborted");
        sqlx::query("UPDATE chat_move.moves SET stage = $2, updated_at = now(), ended_at = CASE WHEN $3 THEN now() END WHERE id = $1;")
            .bind(self.move_id)
            .bind(stage)
            .bind(end)
            .execute(&self.control)
            .await
            .ctx(|| "recording the stage".into())?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ROUTING_CHANNEL)
            .bind(stage)
            .execute(&self.control)
            .await
            .ctx(|| "notifying the routing".into())?;
        Ok(())
    }

    fn pool(&self, db: &str) -> &PgPool {
        &self.pools[db]
    }

    /// The prepare stage: idempotent, so a resumed move runs it again.
    pub async fn prepare(&self) -> Result<()> {
        let new_move = self.stage().await? == "prepare";
        for (name, pool) in &self.pools {
            let schema = plan::schema_of(name);
            let wal: String = sqlx::query_scalar("SHOW wal_level").fetch_one(pool).await.ctx(|| format!("database `{name}`"))?;
            if wal != "logical" {
                return Err(MoveError::Refused(format!(
                    "database `{name}` runs with wal_level = {wal}: the follow stage needs logical (ALTER SYSTEM SET wal_level = logical, then restart that PostgreSQL; scripts/stack does it in dev)"
                )));
            }
            replica_identity(pool, name, schema).await?;
            for stmt in plan::fence_install_sql(schema) {
                sqlx::raw_sql(&stmt).execute(pool).await.ctx(|| format!("database `{name}`: installing the write fence"))?;
            }
        }
        for f in &self.forward {
            let pool = self.pool(&f.db);
            create_publication(pool, &f.db, &f.publication, f.schema, &f.buckets).await?;
            let has_slot = slot_exists(pool, &f.slot).await?;
            if !has_slot {
                if !new_move {
                    // the copy may already have read rows whose later changes only this slot had
                    return Err(MoveError::Refused(format!(
                        "source `{}`: the move's replication slot {} is gone (dropped by hand?): changes made since the copy began are lost to this move — `bm-chat move abort` it and start again",
                        f.db, f.slot
                    )));
                }
                create_slot(pool, &f.db, &f.slot).await?;
            }
        }
        if new_move {
            // nothing of the moving buckets may be on a target yet: rows left by an earlier move
            // would be trusted by the copy (it leaves rows that are there alone)
            for s in &self.plan.sources {
                for (target, b) in &s.targets {
                    let filter = plan::bucket_filter("id", b);
                    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM chat.chats WHERE {filter}"))
                        .fetch_one(self.pool(target))
                        .await
                        .ctx(|| format!("shard `{target}`"))?;
                    if n > 0 {
                        return Err(MoveError::Refused(format!(
                            "shard `{target}` already holds {n} chats in buckets {} that this move would copy to it (left by an aborted move?): empty them first (DELETE FROM chat.chats WHERE {filter})",
                            plan::show_ranges(b)
                        )));
                    }
                }
            }
            self.set_stage("copy").await?;
        }
        Ok(())
    }

    /// The copy stage: every table of every source, chunk by chunk, from where it stopped.
    pub async fn copy(&self, mut progress: impl FnMut(&CopyProgress)) -> Result<()> {
        for s in &self.plan.sources {
            for t in &TABLES {
                self.copy_table(&s.name, s.schema, &s.buckets, t, &mut progress).await?;
            }
        }
        if self.stage().await? == "copy" {
            if self.inbox_since().await?.is_none() {
                self.derive_inboxes(None).await?;
            }
            self.vacuum_targets().await?;
            self.set_stage("verify").await?;
        }
        Ok(())
    }

    /// The tables a copy filled, vacuumed and analyzed on every database that received buckets,
    /// before any client reads them: the planner gets their statistics, and the visibility map
    /// and hint bits are set by the mover rather than by the first minute of traffic on the
    /// shards (which otherwise shares its host with autovacuum doing the same: docs/benchmarks.md).
    /// Run again by a resumed copy; a repeat is cheap.
    async fn vacuum_targets(&self) -> Result<()> {
        // the plan's targets are shards (schema `chat`), with the users' inboxes the copy derived
        let targets: BTreeSet<&str> = self.plan.sources.iter().flat_map(|s| s.targets.keys()).map(String::as_str).collect();
        let tables: Vec<String> = TABLES.iter().map(|t| t.name).chain(["inbox"]).map(|t| format!("chat.{t}")).collect();
        for db in targets {
            let started = Instant::now();
            // VACUUM refuses a transaction block: the simple protocol, one statement
            sqlx::raw_sql(&format!("VACUUM (ANALYZE) {}", tables.join(", ")))
                .execute(self.pool(db))
                .await
                .ctx(|| format!("database `{db}`: vacuuming and analyzing the copied tables"))?;
            tracing::info!(database = db, seconds = started.elapsed().as_secs_f64(), "vacuumed and analyzed the copied tables");
        }
        Ok(())
    }

    async fn inbox_since(&self) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar("SELECT inbox_since FROM chat_move.moves WHERE id = $1")
            .bind(self.move_id)
            .fetch_one(&self.control)
            .await
            .ctx(|| "reading the move".into())
    }

    /// The moving users' inboxes on their new shards (`chat.inbox`: one row per chat a user is
    /// in, what `chats` reads), derived from the chats' truth — the monolith's tables, or every
    /// shard of the old map (a user's chats are homed anywhere) — for the chats changed since the
    /// last derivation (all of them the first time). Upserts that only move `updated_at` forward:
    /// a repeat after a crash, or the service writing the same rows meanwhile, changes nothing.
    /// Run after the copy, and around the switch of writes (before the pause, and after it for
    /// what the sources took until the fence closed). Returns the rows written.
    pub async fn derive_inboxes(&self, since: Option<DateTime<Utc>>) -> Result<u64> {
        // (a margin for writes in flight and clocks: a row derived twice is the same row)
        let started: DateTime<Utc> =
            sqlx::query_scalar("SELECT now()").fetch_one(&self.control).await.ctx(|| "the control database".into())?;
        let moving: Vec<RangeInclusive<u16>> =
            plan::ranges((0..bm_shards::BUCKETS).filter(|b| self.before[*b as usize] != self.after[*b as usize]));
        let truths: Vec<(String, &'static str)> = match &self.from_map {
            None => vec![(LEGACY.to_string(), "legacy")],
            Some(m) => m.shards.iter().map(|s| (s.name.clone(), "chat")).collect(),
        };
        let since = since.map(|t| t - chrono::Duration::seconds(5));
        let mut written = 0u64;
        for (db, schema) in truths {
            let sql = format!(
                "SELECT cm.user_id, c.id, c.title, c.is_group, c.created_at, c.updated_at
                 FROM {schema}.chat_members cm JOIN {schema}.chats c ON c.id = cm.chat_id
                 WHERE {} AND ($1::timestamptz IS NULL OR c.updated_at >= $1 OR cm.joined_at >= $1)",
                plan::bucket_filter("cm.user_id", &moving)
            );
            type InboxRow = (Uuid, Uuid, Option<String>, bool, DateTime<Utc>, DateTime<Utc>);
            let mut rows = sqlx::query_as::<_, InboxRow>(&sql).bind(since).fetch(self.pool(&db));
            let mut batches: BTreeMap<String, Vec<InboxRow>> = BTreeMap::new();
            loop {
                let next = futures_util::TryStreamExt::try_next(&mut rows).await.ctx(|| format!("database `{db}`: reading memberships"))?;
                let done = next.is_none();
                if let Some(r) = next {
                    let to = self.after[bm_shards::bucket(&r.0) as usize].clone();
                    batches.entry(to).or_default().push(r);
                }
                for (to, batch) in batches.iter_mut() {
                    if batch.len() >= 1000 || (done && !batch.is_empty()) {
                        let b = std::mem::take(batch);
                        written += b.len() as u64;
                        sqlx::query(bm_shards::INBOX_UPSERT_SQL)
                            .bind(b.iter().map(|r| r.0).collect::<Vec<_>>())
                            .bind(b.iter().map(|r| r.1).collect::<Vec<_>>())
                            .bind(b.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
                            .bind(b.iter().map(|r| r.3).collect::<Vec<_>>())
                            .bind(b.iter().map(|r| r.4).collect::<Vec<_>>())
                            .bind(b.iter().map(|r| r.5).collect::<Vec<_>>())
                            .execute(self.pool(to))
                            .await
                            .ctx(|| format!("shard `{to}`: writing inboxes"))?;
                    }
                }
                if done {
                    break;
                }
            }
        }
        sqlx::query("UPDATE chat_move.moves SET inbox_since = $2 WHERE id = $1")
            .bind(self.move_id)
            .bind(started)
            .execute(&self.control)
            .await
            .ctx(|| "recording the inbox derivation".into())?;
        metrics::counter!("chat_move_inbox_rows_total").increment(written);
        tracing::info!(rows = written, since = ?since, "derived the moving users' inboxes");
        Ok(written)
    }

    async fn copy_table(
        &self,
        name: &str,
        schema: &str,
        buckets: &[RangeInclusive<u16>],
        t: &TableSpec,
        progress: &mut impl FnMut(&CopyProgress),
    ) -> Result<()> {
        let src = self.pool(name);
        let row: Option<(Option<Uuid>, bool, i64, i64)> = sqlx::query_as(
            "SELECT last_key, done, rows_copied, rows_total FROM chat_move.copy_progress WHERE move_id = $1 AND source = $2 AND tbl = $3",
        )
        .bind(self.move_id)
        .bind(name)
        .bind(t.name)
        .fetch_optional(&self.control)
        .await
        .ctx(|| "reading the copy's progress".into())?;
        let (mut last, done, mut copied, total) = match row {
            Some(r) => r,
            None => {
                let total: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM {schema}.{} WHERE {}",
                    t.name,
                    plan::bucket_filter(t.bucket_col, buckets)
                ))
                .fetch_one(src)
                .await
                .ctx(|| format!("source `{name}`: counting {}", t.name))?;
                sqlx::query("INSERT INTO chat_move.copy_progress (move_id, source, tbl, rows_total) VALUES ($1, $2, $3, $4)")
                    .bind(self.move_id)
                    .bind(name)
                    .bind(t.name)
                    .bind(total)
                    .execute(&self.control)
                    .await
                    .ctx(|| "recording the copy's progress".into())?;
                (None, false, 0, total)
            }
        };
        if done {
            return Ok(());
        }
        let end_sql = plan::chunk_end_sql(schema, t);
        let select_sql = plan::copy_select_sql(schema, t, buckets);
        let insert_sql = plan::copy_insert_sql(t);
        loop {
            let hi: Option<Uuid> = sqlx::query_scalar(&end_sql)
                .bind(last)
                .bind(self.chunk)
                .fetch_optional(src)
                .await
                .ctx(|| format!("source `{name}`: reading {}", t.name))?;
            let rows: Vec<(i16, String)> = sqlx::query_as(&select_sql)
                .bind(last)
                .bind(hi.unwrap_or(Uuid::max()))
                .fetch_all(src)
                .await
                .ctx(|| format!("source `{name}`: reading {}", t.name))?;
            let mut by_target: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (b, json) in &rows {
                by_target.entry(self.after[(*b as u16 % BUCKETS) as usize].as_str()).or_default().push(json);
            }
            for (target, rows) in by_target {
                let array = format!("[{}]", rows.join(","));
                sqlx::query(&insert_sql)
                    .bind(array)
                    .execute(self.pool(target))
                    .await
                    .ctx(|| format!("shard `{target}`: inserting {}", t.name))?;
            }
            copied += rows.len() as i64;
            sqlx::query(
                "UPDATE chat_move.copy_progress SET last_key = $4, done = $5, rows_copied = $6, updated_at = now()
                  WHERE move_id = $1 AND source = $2 AND tbl = $3",
            )
            .bind(self.move_id)
            .bind(name)
            .bind(t.name)
            .bind(hi)
            .bind(hi.is_none())
            .bind(copied)
            .execute(&self.control)
            .await
            .ctx(|| "recording the copy's progress".into())?;
            metrics::counter!("chat_move_rows_copied_total", "source" => name.to_string(), "table" => t.name).increment(rows.len() as u64);
            progress(&CopyProgress { source: name.to_string(), table: t.name.into(), rows_copied: copied, rows_total: total });
            match hi {
                None => return Ok(()),
                Some(h) => last = Some(h),
            }
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
        }
    }

    /// Whether the stage follows forward (source → targets) or backward (reverse sync).
    pub(crate) fn following_reverse(stage: &str) -> bool {
        matches!(stage, "writes-switched" | "rolling-back")
    }

    /// Applies what the stage's slots hold, up to `max` changes each; returns how many.
    pub async fn follow_once(&mut self, max: i32) -> Result<usize> {
        let reverse = Self::following_reverse(&self.stage().await?);
        let n = if reverse { self.reverse.len() } else { self.forward.len() };
        let mut applied = 0;
        for i in 0..n {
            applied += self.follow_stream(reverse, i, max, Duration::from_millis(20)).await?;
        }
        Ok(applied)
    }

    /// Receives what the slot's stream has (waiting up to `wait` for the first event, then while
    /// events keep coming, up to `max` changes), applies the complete transactions, and reports
    /// them applied to the server. Returns how many changes were applied.
    async fn follow_stream(&mut self, reverse: bool, i: usize, max: i32, wait: Duration) -> Result<usize> {
        let url = {
            let f = if reverse { &self.reverse[i] } else { &self.forward[i] };
            self.urls[&f.db].clone()
        };
        let f = if reverse { &mut self.reverse[i] } else { &mut self.forward[i] };
        let name = f.db.clone();
        if f.stream.is_none() {
            f.stream = Some(open_stream(&url, &name, &f.slot, &f.publication).await?);
        }
        let route = if f.reverse { &self.before } else { &self.after };
        let stream = f.stream.as_mut().expect("opened above");
        // complete transactions: target → statements in commit order (a chat's rows all go to one database)
        let mut ops: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let mut changes = 0usize;
        let mut last_commit = None;
        let mut timeout = wait;
        let mut first_event: Option<Instant> = None;
        loop {
            let ev = match tokio::time::timeout(timeout, stream.client.recv()).await {
                Err(_) => break, // quiet: apply what came
                Ok(Ok(Some(ev))) => ev,
                Ok(Ok(None)) => {
                    f.stream = None;
                    return Err(MoveError::Refused(format!("database `{name}`: the replication stream of slot {} ended", f.slot)));
                }
                Ok(Err(e)) => {
                    f.stream = None;
                    return Err(MoveError::Refused(format!("database `{name}`: the replication stream of slot {}: {e}", f.slot)));
                }
            };
            // after the first event, only what follows close behind it, and not for long: under
            // a steady stream there is never a quiet moment, and a catch-up waits for this pass
            let since = *first_event.get_or_insert_with(Instant::now);
            timeout = Duration::from_millis(5);
            if since.elapsed() > Duration::from_millis(50) {
                timeout = Duration::ZERO;
            }
            match ev {
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = pgoutput::decode(&data).map_err(|error| MoveError::Decode { source_name: name.clone(), error })?;
                    let kind = match &msg {
                        Message::Insert { .. } => Kind::Insert,
                        Message::Update { .. } => Kind::Update,
                        _ => Kind::Delete,
                    };
                    match msg {
                        Message::Relation(r) => {
                            f.relations.insert(r.oid, r);
                        }
                        Message::Insert { rel, new: row } | Message::Update { rel, new: row, .. } | Message::Delete { rel, old: row } => {
                            if let Some(op) = change(&name, f.schema, &f.buckets, route, &f.relations, rel, &row, kind)? {
                                stream.open.push(op);
                            }
                        }
                        Message::Truncate { .. } => {
                            return Err(MoveError::Refused(format!(
                                "database `{name}`: a TRUNCATE of a chat table was replicated; a move cannot follow it — `bm-chat move abort`, then start again"
                            )))
                        }
                        Message::Begin { .. } | Message::Commit { .. } | Message::Other(_) => {}
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    for (target, sql, json) in stream.open.drain(..) {
                        ops.entry(target).or_default().push((sql, json));
                        changes += 1;
                    }
                    last_commit = Some(end_lsn);
                    if changes >= max as usize {
                        break;
                    }
                }
                ReplicationEvent::Message { prefix, content, .. } if prefix == MARKER_PREFIX => {
                    // a catch-up waits for it: everything committed before it is in `ops`
                    stream.markers.push(String::from_utf8_lossy(&content).into_owned());
                    break;
                }
                ReplicationEvent::Begin { .. }
                | ReplicationEvent::KeepAlive { .. }
                | ReplicationEvent::Message { .. }
                | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
        for (target, stmts) in &ops {
            let mut tx = self.pools[target].begin().await.ctx(|| format!("database `{target}`"))?;
            for (sql, json) in stmts {
                sqlx::query(sql).bind(json).execute(&mut *tx).await.ctx(|| format!("database `{target}`: applying a change"))?;
            }
            tx.commit().await.ctx(|| format!("database `{target}`: applying changes"))?;
        }
        if let Some(lsn) = last_commit {
            // the server may now release what came before: a crash replays from here
            stream.client.update_applied_lsn(lsn);
        }
        let direction = if f.reverse { "reverse" } else { "forward" };
        metrics::counter!("chat_move_changes_applied_total", "database" => name, "direction" => direction).increment(changes as u64);
        Ok(changes)
    }

    /// Ends the move's streams in both directions: connections closed, then slots and
    /// publications dropped (a slot left behind keeps WAL on its database for ever).
    async fn end_streams(&mut self) -> Result<()> {
        self.close_streams(false).await;
        self.close_streams(true).await;
        for f in self.forward.iter().chain(&self.reverse) {
            drop_stream(self.pool(&f.db), &f.db, &f.slot, &f.publication).await?;
        }
        Ok(())
    }

    /// Closes a direction's replication connections (before its slots are dropped: a slot in
    /// use cannot be).
    async fn close_streams(&mut self, reverse: bool) {
        let follows = if reverse { &mut self.reverse } else { &mut self.forward };
        for f in follows {
            if let Some(mut s) = f.stream.take() {
                let _ = s.client.shutdown().await;
            }
        }
    }

    /// Follows until every change committed on the direction's databases before this call is
    /// applied: a marker written into each database's WAL (a logical decoding message in a
    /// transaction of its own, so its commit flushes the WAL at once) comes through its stream
    /// after every transaction committed before it. Returns the changes applied.
    pub async fn catch_up(&mut self, reverse: bool) -> Result<usize> {
        let n = if reverse { self.reverse.len() } else { self.forward.len() };
        // every database's marker first: the round trips overlap
        let mut tokens = Vec::with_capacity(n);
        for i in 0..n {
            let (db, slot) = {
                let f = if reverse { &self.reverse[i] } else { &self.forward[i] };
                (f.db.clone(), f.slot.clone())
            };
            if !slot_exists(&self.pools[&db], &slot).await? {
                return Err(MoveError::Refused(format!("database `{db}`: the move's replication slot {slot} is gone")));
            }
            let token = Uuid::new_v4().to_string();
            sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)")
                .bind(MARKER_PREFIX)
                .bind(&token)
                .execute(&self.pools[&db])
                .await
                .ctx(|| format!("database `{db}`: writing a catch-up marker"))?;
            tokens.push(token);
        }
        let mut applied = 0;
        for (i, token) in tokens.into_iter().enumerate() {
            loop {
                applied += self.follow_stream(reverse, i, 5000, Duration::from_secs(1)).await?;
                let f = if reverse { &mut self.reverse[i] } else { &mut self.forward[i] };
                let markers = &mut f.stream.as_mut().expect("follow_stream opened it").markers;
                if markers.contains(&token) {
                    markers.clear();
                    break;
                }
            }
        }
        Ok(applied)
    }

    /// The follow lag of the stage's direction: bytes of WAL each slot has not confirmed.
    pub async fn lag(&self) -> Result<Vec<(String, i64)>> {
        let reverse = Self::following_reverse(&self.stage().await?);
        let mut out = Vec::new();
        for f in if reverse { &self.reverse } else { &self.forward } {
            let lag = slot_lag(self.pool(&f.db), &f.slot).await?.unwrap_or(-1);
            metrics::gauge!("chat_move_follow_lag_bytes", "database" => f.db.clone()).set(lag as f64);
            out.push((f.db.clone(), lag));
        }
        Ok(out)
    }

    /// The verify stage: every table of every source, chunk by chunk, against the targets.
    /// After the switch of writes it compares the same rows the other way round (the targets
    /// are the truth then, and the reverse sync keeps the sources level).
    pub async fn verify(&mut self) -> Result<VerifyReport> {
        let started = Instant::now();
        let reverse = Self::following_reverse(&self.stage().await?);
        let run_id: i64 = sqlx::query_scalar("INSERT INTO chat_move.verify_runs (move_id) VALUES ($1) RETURNING id")
            .bind(self.move_id)
            .fetch_one(&self.control)
            .await
            .ctx(|| "recording the verify run".into())?;
        let mut report = VerifyReport::default();
        let sources = self.plan.sources.clone();
        for s in &sources {
            for t in &TABLES {
                // "left": the side that is the truth now; "right": the copies
                let src_pool = self.pool(&s.name).clone();
                let left_sql = plan::checksum_sql(s.schema, t, &s.buckets);
                let end_sql = plan::chunk_end_sql(s.schema, t);
                let mut last: Option<Uuid> = None;
                loop {
                    let hi: Option<Uuid> = sqlx::query_scalar(&end_sql)
                        .bind(last)
                        .bind(self.chunk)
                        .fetch_optional(&src_pool)
                        .await
                        .ctx(|| "verify: reading a chunk".into())?;
                    let upper = hi.unwrap_or(Uuid::max());
                    let read_source = |m: &Mover| {
                        let pool = src_pool.clone();
                        let sql = left_sql.clone();
                        let _ = m;
                        async move { checksums(&pool, &sql, last, upper).await }
                    };
                    let read_targets = |m: &Mover| {
                        let parts: Vec<(PgPool, String)> =
                            s.targets.iter().map(|(name, b)| (m.pool(name).clone(), plan::checksum_sql("chat", t, b))).collect();
                        async move {
                            let mut all = Vec::new();
                            for (pool, sql) in parts {
                                all.extend(checksums(&pool, &sql, last, upper).await?);
                            }
                            all.sort_by(|a: &RowSum<String>, b| a.key.cmp(&b.key));
                            Ok::<_, MoveError>(all)
                        }
                    };
                    // the truth is read first, the copies after the follow stage has passed it
                    let (source, target) = if reverse {
                        let target = read_targets(self).await?;
                        self.catch_up(true).await?;
                        (read_source(self).await?, target)
                    } else {
                        let source = read_source(self).await?;
                        self.catch_up(false).await?;
                        (source, read_targets(self).await?)
                    };
                    let mut d = diff(&source, &target);
                    // a row written between the two reads differs for now: read the rows that
                    // differ again, truth first, until they agree or the attempts run out
                    let mut attempt = 1;
                    while !d.is_clean() && attempt < VERIFY_ATTEMPTS {
                        attempt += 1;
                        let keys: Vec<String> = d.missing.iter().chain(&d.extra).chain(&d.changed).cloned().collect();
                        let src_keys = plan::checksum_keys_sql(s.schema, t);
                        let tgt_keys = plan::checksum_keys_sql("chat", t);
                        let read_tgt = |m: &Mover| {
                            let pools: Vec<PgPool> = s.targets.keys().map(|n| m.pool(n).clone()).collect();
                            let keys = keys.clone();
                            let sql = tgt_keys.clone();
                            async move {
                                let mut all = Vec::new();
                                for p in pools {
                                    all.extend(keyed_checksums(&p, &sql, &keys).await?);
                                }
                                all.sort_by(|a: &RowSum<String>, b| a.key.cmp(&b.key));
                                Ok::<_, MoveError>(all)
                            }
                        };
                        let (src, tgt) = if reverse {
                            let tgt = read_tgt(self).await?;
                            self.catch_up(true).await?;
                            (keyed_checksums(&src_pool, &src_keys, &keys).await?, tgt)
                        } else {
                            let src = keyed_checksums(&src_pool, &src_keys, &keys).await?;
                            self.catch_up(false).await?;
                            (src, read_tgt(self).await?)
                        };
                        d = diff(&src, &tgt);
                        if d.is_clean() {
                            report.rechecked += 1;
                        }
                    }
                    report.rows_compared += source.len() as u64;
                    report.chunks += 1;
                    for (kind, keys) in [("missing", d.missing), ("extra", d.extra), ("changed", d.changed)] {
                        for key in keys {
                            report.differences.push(Difference { table: t.name.into(), kind, key });
                        }
                    }
                    metrics::counter!("chat_move_verify_rows_compared_total").increment(source.len() as u64);
                    match hi {
                        None => break,
                        Some(h) => last = Some(h),
                    }
                }
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        metrics::gauge!("chat_move_verify_differences").set(report.differences.len() as f64);
        sqlx::query("UPDATE chat_move.verify_runs SET finished_at = now(), rows_compared = $2, differences = $3 WHERE id = $1")
            .bind(run_id)
            .bind(report.rows_compared as i64)
            .bind(sqlx::types::Json(&report.differences))
            .execute(&self.control)
            .await
            .ctx(|| "recording the verify run".into())?;
        if report.is_clean() && self.stage().await? == "verify" {
            self.set_stage("following").await?;
        }
        Ok(report)
    }

    /// Sends the moving buckets' reads to the targets (writes stay on the sources, followed).
    pub async fn switch_reads(&mut self) -> Result<()> {
        let stage = self.stage().await?;
        if stage != "following" {
            return Err(MoveError::Refused(format!("reads switch after a clean verify (stage `following`); this move is at `{stage}`")));
        }
        self.catch_up(false).await?;
        self.set_stage("reads-switched").await
    }

    /// Sends the moving buckets' writes to the targets; see the module's documentation.
    pub async fn switch_writes(&mut self) -> Result<SwitchReport> {
        let stage = self.stage().await?;
        if stage != "reads-switched" && stage != "switching-writes" {
            return Err(MoveError::Refused(format!("writes switch after reads (stage `reads-switched`); this move is at `{stage}`")));
        }
        // most of the lag first, while writes still flow; the inboxes of what changed meanwhile
        self.catch_up(false).await?;
        self.derive_inboxes(self.inbox_since().await?).await?;
        let paused = Instant::now();
        self.set_stage("switching-writes").await?;
        for s in &self.plan.sources {
            close_fence(self.pool(&s.name), &s.name, s.schema, &s.buckets, &self.tag).await?;
        }
        // nothing reaches the sources' moving buckets any more: what the slots hold is the rest
        let drained = self.catch_up(false).await?;
        for f in &self.reverse {
            let pool = self.pool(&f.db);
            // a target's fence from an earlier move no longer covers what it now owns
            open_fence(pool, &f.db, "chat", &f.buckets).await?;
            create_publication(pool, &f.db, &f.publication, "chat", &f.buckets).await?;
            if !slot_exists(pool, &f.slot).await? {
                create_slot(pool, &f.db, &f.slot).await?;
            }
        }
        // new sequence numbers start above every seq so far, in each target's residue
        let mut max_seq: i64 = 0;
        for s in &self.plan.sources {
            let m: Option<i64> = sqlx::query_scalar(&format!("SELECT max(seq) FROM {}.messages", s.schema))
                .fetch_one(self.pool(&s.name))
                .await
                .ctx(|| format!("database `{}`", s.name))?;
            max_seq = max_seq.max(m.unwrap_or(0));
        }
        for f in &self.reverse {
            let index = self.plan.to.shards.iter().position(|s| s.name == f.db).expect("a target is in the new map");
            set_shard_sequence(self.pool(&f.db), &f.db, index, max_seq).await?;
        }
        let pause_ms = paused.elapsed().as_millis() as u64;
        sqlx::query("UPDATE chat_move.moves SET write_pause_ms = $2 WHERE id = $1")
            .bind(self.move_id)
            .bind(pause_ms as i64)
            .execute(&self.control)
            .await
            .ctx(|| "recording the pause".into())?;
        self.set_stage("writes-switched").await?;
        // what the sources took between that derivation and the fence (the service keeps the
        // inboxes from here on)
        self.derive_inboxes(self.inbox_since().await?).await?;
        self.close_streams(false).await;
        for f in &self.forward {
            drop_stream(self.pool(&f.db), &f.db, &f.slot, &f.publication).await?;
        }
        Ok(SwitchReport { write_pause_ms: pause_ms, drained })
    }

    /// Back to the sources, losing nothing written since the switch (see the module's
    /// documentation). Before the switch of writes it is [`abort`].
    pub async fn rollback(&mut self) -> Result<()> {
        let stage = self.stage().await?;
        if !matches!(stage.as_str(), "writes-switched" | "rolling-back" | "switching-writes") {
            return abort(self).await;
        }
        if stage == "switching-writes" {
            // the sources' fence may be closed and nothing written on the targets yet: drain and reopen
            self.catch_up(false).await?;
        } else {
            self.set_stage("rolling-back").await?;
            for f in &self.reverse {
                close_fence(self.pool(&f.db), &f.db, "chat", &f.buckets, &self.tag).await?;
            }
            self.catch_up(true).await?;
        }
        // the sources number new messages above everything written on the targets
        let mut max_seq: i64 = 0;
        for f in &self.reverse {
            let m: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM chat.messages")
                .fetch_one(self.pool(&f.db))
                .await
                .ctx(|| format!("shard `{}`", f.db))?;
            max_seq = max_seq.max(m.unwrap_or(0));
        }
        for s in &self.plan.sources {
            let pool = self.pool(&s.name);
            if s.name == LEGACY {
                let m: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM legacy.messages")
                    .fetch_one(pool)
                    .await
                    .ctx(|| "the monolith's database".into())?;
                let next = max_seq.max(m.unwrap_or(0)) + 1;
                sqlx::raw_sql(&format!("ALTER TABLE legacy.messages ALTER COLUMN seq RESTART WITH {next}"))
                    .execute(pool)
                    .await
                    .ctx(|| "moving the monolith's message sequence".into())?;
            } else if let Some(old) = &self.from_map {
                let index = old.shards.iter().position(|x| x.name == s.name).expect("a source is in the old map");
                set_shard_sequence(pool, &s.name, index, max_seq).await?;
            }
            open_fence(pool, &s.name, s.schema, &s.buckets).await?;
        }
        self.set_stage("rolled-back").await?;
        self.end_streams().await?;
        for f in &self.reverse {
            remove_copies(self.pool(&f.db), &f.db, &f.buckets).await?;
            open_fence(self.pool(&f.db), &f.db, "chat", &f.buckets).await?;
        }
        self.retire_open_fences().await;
        Ok(())
    }

    /// Drops the fence's triggers wherever the fence is open (no bucket fenced): between moves a
    /// write there pays nothing for it (a trigger call per row: ~17% of the sharded service's
    /// p99 under load, docs/benchmarks.md). A database whose fence stays closed (a source whose
    /// chats moved away) keeps them: a stale writer is refused there, not lost. The next move's
    /// prepare installs them again before anything is fenced. Best effort: a database busy past
    /// the lock timeout keeps its triggers (they cost time, never correctness).
    pub async fn retire_open_fences(&self) {
        for (name, pool) in &self.pools {
            let schema = plan::schema_of(name);
            if let Err(e) = retire_fence(pool, schema).await {
                tracing::warn!(database = %name, error = %e, "the write fence's triggers stay (they only cost time)");
            }
        }
    }

    /// Ends reverse sync once nothing needs the sources any more (the monolith switched off, or
    /// a shard source at once): a last drain, the streams dropped, a shard source's moved rows
    /// removed. The new map becomes the routing's map.
    pub async fn finish(&mut self) -> Result<()> {
        let stage = self.stage().await?;
        if stage != "writes-switched" {
            return Err(MoveError::Refused(format!("a move finishes after its writes switched; this one is at `{stage}`")));
        }
        self.catch_up(true).await?;
        self.set_stage("done").await?;
        self.end_streams().await?;
        for s in &self.plan.sources {
            if s.name != LEGACY {
                // the fence stays closed on them: a stale writer is refused, not lost
                remove_copies(self.pool(&s.name), &s.name, &s.buckets).await?;
            }
        }
        self.retire_open_fences().await;
        Ok(())
    }

    /// The command a running mover was asked to run (`bm-chat move switch …` while it runs).
    pub async fn take_request(&self) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT request FROM chat_move.moves WHERE id = $1 AND request IS NOT NULL")
            .bind(self.move_id)
            .fetch_optional(&self.control)
            .await
            .ctx(|| "reading requests".into())
    }

    pub async fn answer_request(&self, error: Option<String>) -> Result<()> {
        sqlx::query("UPDATE chat_move.moves SET request = NULL, request_error = $2 WHERE id = $1")
            .bind(self.move_id)
            .bind(error)
            .execute(&self.control)
            .await
            .ctx(|| "answering a request".into())?;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Insert,
    Update,
    Delete,
}

/// One change as (target database, statement, JSON of its row), or None when it is not the move's.
#[allow(clippy::too_many_arguments)]
fn change(
    db: &str,
    schema: &str,
    buckets: &[RangeInclusive<u16>],
    route: &[String],
    relations: &HashMap<u32, Relation>,
    rel: u32,
    tuple: &[Value],
    kind: Kind,
) -> Result<Option<(String, String, String)>> {
    let r = relations
        .get(&rel)
        .ok_or_else(|| MoveError::Refused(format!("database `{db}`: a change of relation {rel} came before its description")))?;
    let Some(t) = plan::table(&r.name).filter(|_| r.schema == schema) else {
        return Ok(None);
    };
    let mut obj = serde_json::Map::new();
    let mut sent: Vec<&str> = Vec::new();
    let mut unchanged = false;
    for (c, v) in r.columns.iter().zip(tuple) {
        match v {
            Value::Null => {
                obj.insert(c.name.clone(), serde_json::Value::Null);
                sent.push(&c.name);
            }
            Value::Text(s) => {
                obj.insert(c.name.clone(), serde_json::Value::String(s.clone()));
                sent.push(&c.name);
            }
            Value::Unchanged => unchanged = true,
        }
    }
    let Some(bucket) = obj.get(t.bucket_col).and_then(|v| v.as_str()).and_then(|s| s.parse::<Uuid>().ok()).map(|id| bm_shards::bucket(&id))
    else {
        return Err(MoveError::Refused(format!("database `{db}`: a change of {}.{} without its {}", r.schema, r.name, t.bucket_col)));
    };
    if !buckets.iter().any(|b| b.contains(&bucket)) {
        return Ok(None);
    }
    let target = route[bucket as usize].clone();
    let target_schema = plan::schema_of(&target);
    let columns: Vec<&str> = t.columns.iter().copied().filter(|c| sent.contains(c)).collect();
    let sql = match kind {
        Kind::Delete => plan::delete_sql(target_schema, t),
        Kind::Update if unchanged => plan::update_sql(target_schema, t, &columns),
        Kind::Insert | Kind::Update => plan::upsert_sql(target_schema, t),
    };
    Ok(Some((target, sql, serde_json::Value::Object(obj).to_string())))
}

/// A replication connection streaming `slot` from where it was confirmed, values printed in UTC.
/// A slot still held by a killed mover's session (until its server notices the closed socket)
/// is tried again for a while.
async fn open_stream(url: &str, db: &str, slot: &str, publication: &str) -> Result<Stream> {
    let u = url::Url::parse(url).map_err(|e| MoveError::Refused(format!("database `{db}`: the URL does not parse: {e}")))?;
    let mut cfg = ReplicationConfig::new(
        u.host_str().unwrap_or("127.0.0.1"),
        if u.username().is_empty() { "postgres" } else { u.username() },
        u.password().unwrap_or(""),
        u.path().trim_start_matches('/'),
        slot,
        publication,
    );
    cfg.port = u.port().unwrap_or(5432);
    cfg.tls = TlsConfig::disabled();
    cfg.start_lsn = Lsn::ZERO;
    // applied positions reach the server (and the slot, and `status`) within a second
    cfg.status_interval = Duration::from_secs(1);
    cfg.idle_wakeup_interval = Duration::from_secs(1);
    cfg.options = Some("-c TimeZone=UTC -c DateStyle=ISO".into());
    cfg.application_name = Some("bm-chat move".into());
    let mut last = String::new();
    for _ in 0..50 {
        match ReplicationClient::connect(cfg.clone()).await {
            Ok(client) => return Ok(Stream { client, open: Vec::new(), markers: Vec::new() }),
            Err(e) => {
                last = e.to_string();
                if !last.contains("is active") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(MoveError::Refused(format!(
        "database `{db}`: opening a replication connection for slot {slot} ({}): {last} (the role needs REPLICATION, pg_hba a `replication` line, and max_wal_senders a free sender)",
        redact(url)
    )))
}

async fn replica_identity(pool: &PgPool, name: &str, schema: &str) -> Result<()> {
    // a kill during CREATE INDEX CONCURRENTLY leaves an invalid index: drop it, build again
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = 'messages_id_chat_id_key'",
    )
    .bind(schema)
    .fetch_optional(pool)
    .await
    .ctx(|| format!("database `{name}`"))?;
    if valid == Some(false) {
        sqlx::raw_sql(&format!("DROP INDEX CONCURRENTLY {schema}.messages_id_chat_id_key"))
            .execute(pool)
            .await
            .ctx(|| format!("database `{name}`"))?;
    }
    if valid != Some(true) {
        sqlx::raw_sql(&format!("CREATE UNIQUE INDEX CONCURRENTLY messages_id_chat_id_key ON {schema}.messages (id, chat_id)"))
            .execute(pool)
            .await
            .ctx(|| format!("database `{name}`: indexing messages (id, chat_id) for the replica identity"))?;
    }
    sqlx::raw_sql(&format!("ALTER TABLE {schema}.messages REPLICA IDENTITY USING INDEX messages_id_chat_id_key"))
        .execute(pool)
        .await
        .ctx(|| format!("database `{name}`: setting the replica identity of messages"))?;
    Ok(())
}

async fn create_publication(pool: &PgPool, db: &str, name: &str, schema: &str, buckets: &[RangeInclusive<u16>]) -> Result<()> {
    let has: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .ctx(|| format!("database `{db}`"))?;
    if !has {
        sqlx::raw_sql(&plan::publication_sql(name, schema, buckets))
            .execute(pool)
            .await
            .ctx(|| format!("database `{db}`: creating publication {name}"))?;
    }
    Ok(())
}

async fn slot_exists(pool: &PgPool, slot: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)")
        .bind(slot)
        .fetch_one(pool)
        .await
        .ctx(|| format!("reading slot {slot}"))
}

async fn create_slot(pool: &PgPool, db: &str, slot: &str) -> Result<()> {
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')").bind(slot).execute(pool).await.ctx(|| {
        format!(
            "database `{db}`: creating the replication slot {slot} (max_replication_slots reached? a move uses one per database it reads)"
        )
    })?;
    Ok(())
}

async fn drop_stream(pool: &PgPool, db: &str, slot: &str, publication: &str) -> Result<()> {
    // a replication connection just closed (ours) or cut (a killed mover's) keeps the slot
    // active until its server process notices: wait for it, then end that process
    let started = Instant::now();
    loop {
        let dropped = sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .execute(pool)
            .await;
        match dropped {
            Ok(_) => break,
            Err(e)
                if e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "55006")
                    && started.elapsed() < Duration::from_secs(20) =>
            {
                if started.elapsed() > Duration::from_secs(5) {
                    sqlx::query(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    )
                    .bind(slot)
                    .execute(pool)
                    .await
                    .ctx(|| format!("database `{db}`: ending the session that holds slot {slot}"))?;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).ctx(|| format!("database `{db}`: dropping slot {slot}")),
        }
    }
    sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {publication}"))
        .execute(pool)
        .await
        .ctx(|| format!("database `{db}`: dropping publication"))?;
    Ok(())
}

/// Closes the write fence for `buckets`: waits for the writes in flight (they hold the fence's
/// advisory lock shared), then no write to those chats passes.
async fn close_fence(pool: &PgPool, db: &str, schema: &str, buckets: &[RangeInclusive<u16>], tag: &str) -> Result<()> {
    let mut tx = pool.begin().await.ctx(|| format!("database `{db}`"))?;
    sqlx::query("SET LOCAL lock_timeout = '30s'").execute(&mut *tx).await.ctx(|| format!("database `{db}`"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::plan::FENCE_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .ctx(|| format!("database `{db}`: waiting for the writes in flight to close the fence"))?;
    for r in buckets {
        sqlx::query(&format!("INSERT INTO {schema}.chat_move_fence (lo, hi, move_tag) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"))
            .bind(*r.start() as i32)
            .bind(*r.end() as i32)
            .bind(tag)
            .execute(&mut *tx)
            .await
            .ctx(|| format!("database `{db}`: closing the fence"))?;
    }
    tx.commit().await.ctx(|| format!("database `{db}`: closing the fence"))?;
    Ok(())
}

/// Opens the write fence wherever it overlaps `buckets`.
async fn open_fence(pool: &PgPool, db: &str, schema: &str, buckets: &[RangeInclusive<u16>]) -> Result<()> {
    for r in buckets {
        sqlx::query(&format!("DELETE FROM {schema}.chat_move_fence WHERE lo <= $2 AND hi >= $1"))
            .bind(*r.start() as i32)
            .bind(*r.end() as i32)
            .execute(pool)
            .await
            .ctx(|| format!("database `{db}`: opening the fence"))?;
    }
    Ok(())
}

/// Sets a shard's message sequence to start above `floor` and above everything it holds, in its
/// residue.
async fn set_shard_sequence(pool: &PgPool, db: &str, index: usize, floor: i64) -> Result<()> {
    let (own, last): (Option<i64>, i64) =
        sqlx::query_as("SELECT (SELECT max(seq) FROM chat.messages), (SELECT last_value FROM chat.message_seq)")
            .fetch_one(pool)
            .await
            .ctx(|| format!("shard `{db}`: reading its sequence"))?;
    let first = plan::first_seq_above(floor.max(own.unwrap_or(0)).max(last), index);
    sqlx::query("SELECT setval('chat.message_seq', $1, false)")
        .bind(first)
        .execute(pool)
        .await
        .ctx(|| format!("shard `{db}`: setting its sequence"))?;
    Ok(())
}

/// Removes a database's rows of `buckets` (a chat and, by cascade, its members and messages;
/// on a shard, the inboxes of its users in them).
async fn remove_copies(pool: &PgPool, db: &str, buckets: &[RangeInclusive<u16>]) -> Result<()> {
    // the mover's session is a replica's: cascades are triggers, so the children go first
    let schema = plan::schema_of(db);
    if schema == "chat" {
        sqlx::raw_sql(&format!("DELETE FROM chat.inbox WHERE {}", plan::bucket_filter("user_id", buckets)))
            .execute(pool)
            .await
            .ctx(|| format!("database `{db}`: removing moved inboxes"))?;
    }
    for t in TABLES.iter().rev() {
        sqlx::raw_sql(&format!("DELETE FROM {schema}.{} WHERE {}", t.name, plan::bucket_filter(t.bucket_col, buckets)))
            .execute(pool)
            .await
            .ctx(|| format!("database `{db}`: removing moved rows"))?;
    }
    Ok(())
}

async fn checksums(pool: &PgPool, sql: &str, from: Option<Uuid>, to: Uuid) -> Result<Vec<RowSum<String>>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as(sql).bind(from).bind(to).fetch_all(pool).await.ctx(|| "verify: reading checksums".into())?;
    Ok(rows.into_iter().map(|(key, sum)| RowSum { key, sum }).collect())
}

async fn keyed_checksums(pool: &PgPool, sql: &str, keys: &[String]) -> Result<Vec<RowSum<String>>> {
    let rows: Vec<(String, String)> = if sql.contains("$1::uuid[]") {
        let ids: Vec<Uuid> = keys.iter().filter_map(|k| k.parse().ok()).collect();
        sqlx::query_as(sql).bind(ids).fetch_all(pool).await
    } else {
        sqlx::query_as(sql).bind(keys).fetch_all(pool).await
    }
    .ctx(|| "verify: reading checksums again".into())?;
    Ok(rows.into_iter().map(|(key, sum)| RowSum { key, sum }).collect())
}

pub(crate) async fn slot_lag(pool: &PgPool, slot: &str) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .ctx(|| format!("reading slot {slot}"))
}

pub(crate) async fn lock_holder(conn: &mut PgConnection) -> String {
    let holder: Option<(String, i32, String)> = sqlx::query_as(&format!(
        "SELECT a.application_name, a.pid, to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE {MOVE_LOCK}"
    ))
    .bind(LOCK_KEY)
    .fetch_optional(conn)
    .await
    .ok()
    .flatten();
    match holder {
        Some((app, pid, since)) => format!("{app} holds the move lock (database backend {pid}, connected since {since})"),
        None => "a mover holds the move lock".into(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "this host".into())
}

/// Ends the open move before its writes switched: drops its slots and publications (a slot left
/// behind keeps WAL on its database forever) and the rows it copied to the targets, opens the
/// fences, and marks it aborted.
pub async fn abort(mover: &mut Mover) -> Result<()> {
    let stage = mover.stage().await?;
    if matches!(stage.as_str(), "switching-writes" | "writes-switched" | "rolling-back") {
        return Err(MoveError::Refused(format!(
            "the move is at `{stage}`: writes may be on the targets — `bm-chat move rollback` brings them back"
        )));
    }
    mover.end_streams().await?;
    for f in &mover.reverse {
        remove_copies(mover.pool(&f.db), &f.db, &f.buckets).await?;
    }
    mover.set_stage("aborted").await?;
    mover.retire_open_fences().await;
    Ok(())
}

/// [`Mover::retire_open_fences`] on one database, if nothing is fenced there (only a mover
/// closes a fence, and this one holds the move lock). A transaction per table, like prepare's
/// install: a table's lock is never held while waiting for the next one's, which would deadlock
/// with a writer touching them in the other order.
async fn retire_fence(pool: &PgPool, schema: &str) -> std::result::Result<(), sqlx::Error> {
    let installed: bool =
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(format!("{schema}.chat_move_fence")).fetch_one(pool).await?;
    if !installed {
        return Ok(());
    }
    let fenced: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {schema}.chat_move_fence)")).fetch_one(pool).await?;
    if fenced {
        return Ok(());
    }
    for t in &plan::TABLES {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '5s'").execute(&mut *tx).await?;
        sqlx::raw_sql(&format!("DROP TRIGGER IF EXISTS chat_move_fence ON {schema}.{}", t.name)).execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Whether the control database has the mover's tables (no move was ever started if not).
pub(crate) async fn has_moves(control: &PgPool) -> Result<bool> {
    sqlx::query_scalar("SELECT to_regclass('chat_move.moves') IS NOT NULL").fetch_one(control).await.ctx(|| "reading the chat moves".into())
}

/// The open move's maps (old map text or None for the monolith's tables, new map text).
pub async fn stored_maps(control_url: &str) -> Result<Option<(Option<String>, String)>> {
    let control = connect("the control database (DATABASE_URL)", control_url, 1).await?;
    if !has_moves(&control).await? {
        return Ok(None);
    }
    sqlx::query_as("SELECT from_map, to_map FROM chat_move.moves WHERE ended_at IS NULL")
        .fetch_optional(&control)
        .await
        .ctx(|| "reading the open move".into())
}

/// Asks the running mover to run a command, and waits for its answer.
pub async fn request(control_url: &str, command: &str, wait: Duration) -> Result<()> {
    let control = connect("the control database (DATABASE_URL)", control_url, 1).await?;
    let n = sqlx::query("UPDATE chat_move.moves SET request = $1, request_error = NULL WHERE ended_at IS NULL AND request IS NULL")
        .bind(command)
        .execute(&control)
        .await
        .ctx(|| "sending the request".into())?
        .rows_affected();
    if n == 0 {
        return Err(MoveError::Refused("no move is open, or it has a request pending".into()));
    }
    let deadline = Instant::now() + wait;
    loop {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT request, request_error FROM chat_move.moves ORDER BY id DESC LIMIT 1")
                .fetch_optional(&control)
                .await
                .ctx(|| "reading the request".into())?;
        match row {
            Some((None, None)) => return Ok(()),
            Some((None, Some(e))) => return Err(MoveError::Refused(e)),
            _ if Instant::now() > deadline => {
                // withdrawn, so it does not run later when nobody is watching
                sqlx::query("UPDATE chat_move.moves SET request = NULL WHERE ended_at IS NULL AND request = $1")
                    .bind(command)
                    .execute(&control)
                    .await
                    .ctx(|| "withdrawing the request".into())?;
                return Err(MoveError::Refused(format!(
                    "the running mover did not take `{command}` within {} s (it takes requests while it follows: still copying or verifying?); withdrawn, ask again",
                    wait.as_secs()
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
