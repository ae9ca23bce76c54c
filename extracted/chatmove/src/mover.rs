//! The mover's I/O: one move at a time (an advisory lock on the control database), its state in
//! `chat_move.*` there, so a `kill -9` at any point and a second `run` continue where it stopped.
//!
//! * **prepare** (per source): `wal_level` checked; `messages` gets a unique `(id, chat_id)` index
//!   as its replica identity (a row filter on `chat_id` needs it in the identity); the
//!   publication (row filter: the moving buckets), then the slot — in that order, since decoding
//!   reads the publication as of each change's position.
//! * **copy**: chunks by the table's key, rows of the moving buckets inserted on their new shard
//!   (already there: left alone; their chat not there: skipped — the follow stage brings both),
//!   progress recorded after each chunk.
//! * **follow**: the slot's changes since before the copy, applied in order (whole rows upserted,
//!   deletes by key), then the slot advanced: re-applying after a crash replays the same
//!   sequence, so it ends in the same state.
//! * **verify**: chunk by chunk, source against targets, a checksum of every column of every row;
//!   a chunk that differs is read again after the follow stage has passed the source's position,
//!   up to [`VERIFY_ATTEMPTS`] times, before its differences are reported by key.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bm_shards::verify::{diff, RowSum};
use bm_shards::{ShardMap, BUCKETS};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use thiserror::Error;
use uuid::Uuid;

use crate::pgoutput::{self, Message, Relation, Value};
use crate::plan::{self, Origin, Plan, Source, TableSpec, TABLES};

/// The advisory lock key every mover takes on the control database ("chatmove" in ASCII, cut).
pub const LOCK_KEY: i64 = 0x6368_6174_6d6f;
/// How often verify reads a differing chunk again (after the follow stage caught up) before it
/// reports the difference.
pub const VERIFY_ATTEMPTS: usize = 5;

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

type Result<T, E = MoveError> = std::result::Result<T, E>;

trait Ctx<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}
impl<T> Ctx<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| MoveError::Db { context: context(), source })
    }
}

/// Connects to one database with the session settings the move relies on: UTC (timestamps are
/// compared and re-parsed as text) and an application name an operator can find in
/// `pg_stat_activity`.
pub async fn connect(what: &str, url: &str, max: u32) -> Result<PgPool> {
    let opts: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .map_err(|e| MoveError::Refused(format!("{what}: the database URL does not parse: {e}")))?
        .options([("TimeZone", "UTC")])
        .application_name("bm-chat move");
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await
        .ctx(|| format!("{what} is unreachable ({})", redact(url)))
}

fn redact(url: &str) -> String {
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

const CONTROL_SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS chat_move;
CREATE TABLE IF NOT EXISTS chat_move.moves (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_map   text,                -- NULL: from the monolith's tables
    to_map     text NOT NULL,
    to_version bigint NOT NULL,
    -- names the move's slots and publications: slot names are unique in a whole PostgreSQL
    -- cluster, which may hold other databases with moves of their own (dev, tests)
    tag        text NOT NULL DEFAULT substr(md5(random()::text), 1, 10),
    stage      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS moves_one_open ON chat_move.moves ((true)) WHERE ended_at IS NULL;
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

/// Stages, in order. `following` is where a move waits for the switch.
pub const STAGES: [&str; 5] = ["prepare", "copy", "verify", "following", "done"];

/// What one source's follow stage is doing.
struct Follow {
    source: Source,
    pool: PgPool,
    slot: String,
    publication: String,
    relations: HashMap<u32, Relation>,
}

pub struct Mover {
    pub plan: Plan,
    pub move_id: i64,
    control: PgPool,
    targets: BTreeMap<String, PgPool>,
    follows: Vec<Follow>,
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
    /// chunks that differed at first and were clean when read again (writes in flight)
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

fn slot_name(tag: &str, source: &str) -> String {
    format!("chat_move_{tag}_{source}")
}

/// The settings of a move.
pub struct MoveSpec {
    pub from: Origin,
    /// the old map's text (None: from the monolith's tables)
    pub from_text: Option<String>,
    pub to: ShardMap,
    pub to_text: String,
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

        // every database, reachable, or every problem at once
        let mut problems = Vec::new();
        let mut urls: BTreeMap<String, String> = BTreeMap::new();
        for s in &spec.to.shards {
            match url_of(&s.url_env).filter(|u| !u.is_empty()) {
                Some(u) => {
                    urls.insert(s.name.clone(), u);
                }
                None => problems.push(format!("{} is not set (the database URL of shard `{}`)", s.url_env, s.name)),
            }
        }
        let mut source_urls = Vec::new();
        for s in &plan.sources {
            let url = if s.name == plan::LEGACY { Some(control_url.to_string()) } else { url_of(&s.url_env).filter(|u| !u.is_empty()) };
            match url {
                Some(u) => source_urls.push(u),
                None => problems.push(format!("{} is not set (the database URL of shard `{}`, a source)", s.url_env, s.name)),
            }
        }
        if !problems.is_empty() {
            return Err(MoveError::Refused(problems.join("; ")));
        }
        let mut targets = BTreeMap::new();
        for (name, url) in &urls {
            match connect(&format!("shard `{name}`"), url, 4).await {
                Ok(p) => {
                    targets.insert(name.clone(), p);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut source_pools = Vec::new();
        for (s, url) in plan.sources.iter().zip(source_urls) {
            let pool = if s.name == plan::LEGACY {
                connect("the monolith's database (DATABASE_URL)", &url, 4).await
            } else if let Some(p) = targets.get(&s.name) {
                Ok(p.clone())
            } else {
                connect(&format!("shard `{}`", s.name), &url, 4).await
            };
            match pool {
                Ok(pool) => source_pools.push(pool),
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
            None => sqlx::query_as(
                "INSERT INTO chat_move.moves (from_map, to_map, to_version, stage) VALUES ($1, $2, $3, 'prepare') RETURNING id, tag",
            )
            .bind(&spec.from_text)
            .bind(&spec.to_text)
            .bind(spec.to.version as i64)
            .fetch_one(&control)
            .await
            .ctx(|| "recording the move".into())?,
        };

        let follows = plan
            .sources
            .iter()
            .zip(source_pools)
            .map(|(s, pool)| Follow {
                source: s.clone(),
                pool,
                slot: slot_name(&tag, &s.name),
                publication: slot_name(&tag, &s.name),
                relations: HashMap::new(),
            })
            .collect();
        let mover = Mover { plan, move_id, control, targets, follows, _lock: lock, chunk: 2000, pause: Duration::ZERO };
        mover.check_schemas().await?;
        Ok(mover)
    }

    /// Every source and target has the tables with the columns the move copies.
    async fn check_schemas(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut dbs: Vec<(String, &PgPool, &str)> = self.targets.iter().map(|(n, p)| (format!("shard `{n}`"), p, "chat")).collect();
        for f in &self.follows {
            dbs.push((format!("source `{}`", f.source.name), &f.pool, f.source.schema));
        }
        for (what, pool, schema) in dbs {
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
        sqlx::query("UPDATE chat_move.moves SET stage = $2, updated_at = now() WHERE id = $1")
            .bind(self.move_id)
            .bind(stage)
            .execute(&self.control)
            .await
            .ctx(|| "recording the stage".into())?;
        Ok(())
    }

    /// The prepare stage: idempotent, so a resumed move runs it again.
    pub async fn prepare(&self) -> Result<()> {
        let new_move = self.stage().await? == "prepare";
        for f in &self.follows {
            let (pool, schema, name) = (&f.pool, f.source.schema, &f.source.name);
            let wal: String = sqlx::query_scalar("SHOW wal_level").fetch_one(pool).await.ctx(|| format!("source `{name}`"))?;
            if wal != "logical" {
                return Err(MoveError::Refused(format!(
                    "source `{name}` runs with wal_level = {wal}: the follow stage needs logical (ALTER SYSTEM SET wal_level = logical, then restart that PostgreSQL; scripts/stack does it in dev)"
                )));
            }
            // a kill during CREATE INDEX CONCURRENTLY leaves an invalid index: drop it, build again
            let valid: Option<bool> = sqlx::query_scalar(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = 'messages_id_chat_id_key'",
            )
            .bind(schema)
            .fetch_optional(pool)
            .await
            .ctx(|| format!("source `{name}`"))?;
            if valid == Some(false) {
                sqlx::raw_sql(&format!("DROP INDEX CONCURRENTLY {schema}.messages_id_chat_id_key"))
                    .execute(pool)
                    .await
                    .ctx(|| format!("source `{name}`"))?;
            }
            if valid != Some(true) {
                sqlx::raw_sql(&format!("CREATE UNIQUE INDEX CONCURRENTLY messages_id_chat_id_key ON {schema}.messages (id, chat_id)"))
                    .execute(pool)
                    .await
                    .ctx(|| format!("source `{name}`: indexing messages (id, chat_id) for the replica identity"))?;
            }
            sqlx::raw_sql(&format!("ALTER TABLE {schema}.messages REPLICA IDENTITY USING INDEX messages_id_chat_id_key"))
                .execute(pool)
                .await
                .ctx(|| format!("source `{name}`: setting the replica identity of messages"))?;
            let has_pub: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
                .bind(&f.publication)
                .fetch_one(pool)
                .await
                .ctx(|| format!("source `{name}`"))?;
            if !has_pub {
                sqlx::raw_sql(&plan::publication_sql(&f.publication, &f.source))
                    .execute(pool)
                    .await
                    .ctx(|| format!("source `{name}`: creating the publication"))?;
            }
            let has_slot: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)")
                .bind(&f.slot)
                .fetch_one(pool)
                .await
                .ctx(|| format!("source `{name}`"))?;
            if !has_slot {
                if !new_move {
                    // the copy may already have read rows whose later changes only this slot had
                    return Err(MoveError::Refused(format!(
                        "source `{name}`: the move's replication slot {} is gone (dropped by hand?): changes made since the copy began are lost to this move — `bm-chat move abort` it and start again",
                        f.slot
                    )));
                }
                sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                    .bind(&f.slot)
                    .execute(pool)
                    .await
                    .ctx(|| format!("source `{name}`: creating the replication slot"))?;
            }
        }
        if new_move {
            // nothing of the moving buckets may be on a target yet: rows left by an earlier move
            // would be trusted by the copy (it leaves rows that are there alone)
            for (target, pool) in &self.targets {
                for f in &self.follows {
                    if let Some(b) = f.source.targets.get(target) {
                        let filter = plan::bucket_filter("id", b);
                        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM chat.chats WHERE {filter}"))
                            .fetch_one(pool)
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
            }
            self.set_stage("copy").await?;
        }
        Ok(())
    }

    /// The copy stage: every table of every source, chunk by chunk, from where it stopped.
    pub async fn copy(&self, mut progress: impl FnMut(&CopyProgress)) -> Result<()> {
        for f in &self.follows {
            for t in &TABLES {
                self.copy_table(f, t, &mut progress).await?;
            }
        }
        if self.stage().await? == "copy" {
            self.set_stage("verify").await?;
        }
        Ok(())
    }

    async fn copy_table(&self, f: &Follow, t: &TableSpec, progress: &mut impl FnMut(&CopyProgress)) -> Result<()> {
        let (src, name) = (&f.pool, &f.source.name);
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
                    "SELECT count(*) FROM {}.{} WHERE {}",
                    f.source.schema,
                    t.name,
                    plan::bucket_filter(t.bucket_col, &f.source.buckets)
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
        let end_sql = plan::chunk_end_sql(f.source.schema, t);
        let select_sql = plan::copy_select_sql(f.source.schema, t, &f.source.buckets);
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
                let target = self.plan.to.shard_for_bucket(*b as u16 % BUCKETS);
                by_target.entry(target.name.as_str()).or_default().push(json);
            }
            for (target, rows) in by_target {
                let array = format!("[{}]", rows.join(","));
                sqlx::query(&insert_sql)
                    .bind(array)
                    .execute(&self.targets[target])
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
            metrics::counter!("chat_move_rows_copied_total", "source" => name.clone(), "table" => t.name).increment(rows.len() as u64);
            progress(&CopyProgress { source: name.clone(), table: t.name.into(), rows_copied: copied, rows_total: total });
            match hi {
                None => return Ok(()),
                Some(h) => last = Some(h),
            }
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
        }
    }

    /// Applies what every source's slot holds, up to `max` changes each; returns how many.
    pub async fn follow_once(&mut self, max: i32) -> Result<usize> {
        let mut applied = 0;
        for i in 0..self.follows.len() {
            applied += self.follow_source(i, max).await?;
        }
        Ok(applied)
    }

    async fn follow_source(&mut self, i: usize, max: i32) -> Result<usize> {
        let f = &mut self.follows[i];
        let name = f.source.name.clone();
        let before: String =
            sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&f.pool).await.ctx(|| format!("source `{name}`"))?;
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, 'proto_version', '1', 'publication_names', $3)",
        )
        .bind(&f.slot)
        .bind(max)
        .bind(&f.publication)
        .fetch_all(&f.pool)
        .await
        .ctx(|| format!("source `{name}`: reading the replication slot {}", f.slot))?;
        if rows.is_empty() {
            // everything committed before `before` was decoded and none of it is ours
            advance(&f.pool, &f.slot, &before).await?;
            return Ok(0);
        }
        // target → statements in stream order (a chat's rows all go to one target)
        let mut ops: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let mut changes = 0;
        let mut last_commit = None;
        for (lsn, data) in &rows {
            let msg = pgoutput::decode(data).map_err(|error| MoveError::Decode { source_name: name.clone(), error })?;
            match msg {
                Message::Relation(r) => {
                    f.relations.insert(r.oid, r);
                }
                Message::Insert { rel, new: row } | Message::Update { rel, new: row, .. } | Message::Delete { rel, old: row } => {
                    let kind = match data.first() {
                        Some(b'I') => Kind::Insert,
                        Some(b'U') => Kind::Update,
                        _ => Kind::Delete,
                    };
                    if let Some((target, sql, json)) = change(&self.plan, &f.source, &f.relations, rel, &row, kind)? {
                        ops.entry(target).or_default().push((sql, json));
                        changes += 1;
                    }
                }
                Message::Truncate { .. } => {
                    return Err(MoveError::Refused(format!(
                        "source `{name}`: a TRUNCATE of a chat table was replicated; a move cannot follow it — `bm-chat move abort`, then start again"
                    )))
                }
                Message::Commit { .. } => last_commit = Some(lsn.clone()),
                Message::Begin { .. } | Message::Other(_) => {}
            }
        }
        for (target, stmts) in &ops {
            let pool = &self.targets[target];
            let mut tx = pool.begin().await.ctx(|| format!("shard `{target}`"))?;
            for (sql, json) in stmts {
                sqlx::query(sql).bind(json).execute(&mut *tx).await.ctx(|| format!("shard `{target}`: applying a change"))?;
            }
            tx.commit().await.ctx(|| format!("shard `{target}`: applying changes"))?;
        }
        if let Some(lsn) = last_commit {
            advance(&f.pool, &f.slot, &lsn).await?;
        }
        metrics::counter!("chat_move_changes_applied_total", "source" => name).increment(changes as u64);
        Ok(changes)
    }

    /// Follows until every source's slot has passed the position its WAL had when called.
    pub async fn catch_up(&mut self) -> Result<()> {
        for i in 0..self.follows.len() {
            let pool = self.follows[i].pool.clone();
            let slot = self.follows[i].slot.clone();
            let goal: String =
                sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&pool).await.ctx(|| "reading the WAL position".into())?;
            loop {
                let behind: bool =
                    sqlx::query_scalar("SELECT confirmed_flush_lsn < $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1")
                        .bind(&slot)
                        .bind(&goal)
                        .fetch_one(&pool)
                        .await
                        .ctx(|| format!("reading slot {slot}"))?;
                if !behind {
                    break;
                }
                self.follow_source(i, 5000).await?;
            }
        }
        Ok(())
    }

    /// Each source's follow lag: bytes of WAL its slot has not confirmed.
    pub async fn lag(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for f in &self.follows {
            let lag = slot_lag(&f.pool, &f.slot).await?;
            metrics::gauge!("chat_move_follow_lag_bytes", "source" => f.source.name.clone()).set(lag as f64);
            out.push((f.source.name.clone(), lag));
        }
        Ok(out)
    }

    /// The verify stage: every table of every source, chunk by chunk, against the targets.
    pub async fn verify(&mut self) -> Result<VerifyReport> {
        let started = Instant::now();
        let run_id: i64 = sqlx::query_scalar("INSERT INTO chat_move.verify_runs (move_id) VALUES ($1) RETURNING id")
            .bind(self.move_id)
            .fetch_one(&self.control)
            .await
            .ctx(|| "recording the verify run".into())?;
        let mut report = VerifyReport::default();
        for i in 0..self.follows.len() {
            for t in &TABLES {
                let (pool, schema, buckets) =
                    (self.follows[i].pool.clone(), self.follows[i].source.schema, self.follows[i].source.buckets.clone());
                let end_sql = plan::chunk_end_sql(schema, t);
                let mut last: Option<Uuid> = None;
                loop {
                    let hi: Option<Uuid> = sqlx::query_scalar(&end_sql)
                        .bind(last)
                        .bind(self.chunk)
                        .fetch_optional(&pool)
                        .await
                        .ctx(|| "verify: reading a chunk".into())?;
                    let upper = hi.unwrap_or(Uuid::max());
                    let source = checksums(&pool, &plan::checksum_sql(schema, t, &buckets), last, upper).await?;
                    self.catch_up().await?;
                    let mut target = Vec::new();
                    for (name, b) in &self.follows[i].source.targets {
                        target.extend(checksums(&self.targets[name], &plan::checksum_sql("chat", t, b), last, upper).await?);
                    }
                    target.sort_by(|a, b| a.key.cmp(&b.key));
                    let mut d = diff(&source, &target);
                    // a row written between the two reads differs for now: read the rows that
                    // differ again, source first, then the targets once the follow stage has
                    // passed the source's position, until they agree or the attempts run out
                    let mut attempt = 1;
                    while !d.is_clean() && attempt < VERIFY_ATTEMPTS {
                        attempt += 1;
                        let keys: Vec<String> = d.missing.iter().chain(&d.extra).chain(&d.changed).cloned().collect();
                        let src = keyed_checksums(&pool, &plan::checksum_keys_sql(schema, t), &keys).await?;
                        self.catch_up().await?;
                        let mut tgt = Vec::new();
                        for name in self.follows[i].source.targets.keys() {
                            tgt.extend(keyed_checksums(&self.targets[name], &plan::checksum_keys_sql("chat", t), &keys).await?);
                        }
                        tgt.sort_by(|a, b| a.key.cmp(&b.key));
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
}

enum Kind {
    Insert,
    Update,
    Delete,
}

/// One change as (target shard, statement, JSON of its row), or None when it is not the move's.
fn change(
    plan: &Plan,
    source: &Source,
    relations: &HashMap<u32, Relation>,
    rel: u32,
    tuple: &[Value],
    kind: Kind,
) -> Result<Option<(String, String, String)>> {
    let r = relations
        .get(&rel)
        .ok_or_else(|| MoveError::Refused(format!("source `{}`: a change of relation {rel} came before its description", source.name)))?;
    let Some(t) = plan::table(&r.name).filter(|_| r.schema == source.schema) else {
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
        return Err(MoveError::Refused(format!(
            "source `{}`: a change of {}.{} without its {}",
            source.name, r.schema, r.name, t.bucket_col
        )));
    };
    if !source.buckets.iter().any(|b| b.contains(&bucket)) {
        return Ok(None);
    }
    let target = plan.to.shard_for_bucket(bucket).name.clone();
    let columns: Vec<&str> = t.columns.iter().copied().filter(|c| sent.contains(c)).collect();
    let sql = match kind {
        Kind::Delete => plan::delete_sql(t),
        Kind::Update if unchanged => plan::update_sql(t, &columns),
        Kind::Insert | Kind::Update => plan::upsert_sql(t),
    };
    Ok(Some((target, sql, serde_json::Value::Object(obj).to_string())))
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

async fn advance(pool: &PgPool, slot: &str, lsn: &str) -> Result<()> {
    sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
        .bind(slot)
        .bind(lsn)
        .execute(pool)
        .await
        .ctx(|| format!("advancing slot {slot}"))?;
    Ok(())
}

async fn slot_lag(pool: &PgPool, slot: &str) -> Result<i64> {
    let lag: Option<i64> = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .ctx(|| format!("reading slot {slot}"))?;
    Ok(lag.unwrap_or(-1))
}

async fn lock_holder(conn: &mut PgConnection) -> String {
    let holder: Option<(String, i32, String)> = sqlx::query_as(
        "SELECT a.application_name, a.pid, to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND (l.classid::bigint << 32 | l.objid::bigint) = $1",
    )
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

/// What `bm-chat move status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub move_id: i64,
    pub to_version: i64,
    pub from: String,
    pub stage: String,
    pub started: String,
    pub copy: Vec<CopyStatus>,
    pub follow: Vec<FollowStatus>,
    pub last_verify: Option<VerifyStatus>,
    /// the mover holding the lock, if one runs
    pub mover: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CopyStatus {
    pub source: String,
    pub table: String,
    pub rows_copied: i64,
    pub rows_total: i64,
    pub done: bool,
    pub rows_per_second: f64,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct FollowStatus {
    pub source: String,
    pub slot: String,
    pub lag_bytes: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct VerifyStatus {
    pub finished: Option<String>,
    pub rows_compared: i64,
    pub differences: serde_json::Value,
}

/// id, from_map, to_map, to_version, stage, started, tag
type OpenMoveRow = (i64, Option<String>, String, i64, String, String, String);

/// The open move's status (None: no move is open), read without the lock.
pub async fn status(control_url: &str, url_of: &dyn Fn(&str) -> Option<String>) -> Result<Option<Status>> {
    let control = connect("the control database (DATABASE_URL)", control_url, 1).await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('chat_move.moves') IS NOT NULL")
        .fetch_one(&control)
        .await
        .ctx(|| "reading the move".into())?;
    if !exists {
        return Ok(None);
    }
    let open: Option<OpenMoveRow> = sqlx::query_as(
        "SELECT id, from_map, to_map, to_version, stage, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS') || ' UTC', tag FROM chat_move.moves WHERE ended_at IS NULL",
    )
    .fetch_optional(&control)
    .await
    .ctx(|| "reading the move".into())?;
    let Some((id, from_map, to_map, to_version, stage, started, tag)) = open else { return Ok(None) };
    let copy: Vec<(String, String, i64, i64, bool, f64)> = sqlx::query_as(
        "SELECT source, tbl, rows_copied, rows_total, done, extract(epoch FROM updated_at - started_at)::float8 FROM chat_move.copy_progress WHERE move_id = $1 ORDER BY source, array_position(ARRAY['chats','chat_members','messages'], tbl)",
    )
    .bind(id)
    .fetch_all(&control)
    .await
    .ctx(|| "reading the copy's progress".into())?;
    let copy = copy
        .into_iter()
        .map(|(source, table, rows_copied, rows_total, done, secs)| {
            let rate = if secs > 0.0 { rows_copied as f64 / secs } else { 0.0 };
            let eta = (!done && rate > 0.0).then(|| (rows_total - rows_copied).max(0) as f64 / rate);
            CopyStatus { source, table, rows_copied, rows_total, done, rows_per_second: rate, eta_seconds: eta }
        })
        .collect();
    // the follow lag, per source (read from each source: the slots live there)
    let mut follow = Vec::new();
    let to = ShardMap::parse("to_map", &to_map).map_err(|e| MoveError::Refused(e.to_string()))?;
    let from = match &from_map {
        None => Origin::Legacy,
        Some(t) => Origin::Map(ShardMap::parse("from_map", t).map_err(|e| MoveError::Refused(e.to_string()))?),
    };
    let plan = plan::plan(&from, &to)?;
    for s in &plan.sources {
        let slot = slot_name(&tag, &s.name);
        let url = if s.name == plan::LEGACY { Some(control_url.to_string()) } else { url_of(&s.url_env) };
        let lag = match url {
            Some(u) => match connect(&s.name, &u, 1).await {
                Ok(p) => slot_lag(&p, &slot).await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        follow.push(FollowStatus { source: s.name.clone(), slot, lag_bytes: lag });
    }
    let last_verify: Option<(Option<String>, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT to_char(finished_at, 'YYYY-MM-DD HH24:MI:SS') || ' UTC', rows_compared, differences FROM chat_move.verify_runs WHERE move_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&control)
    .await
    .ctx(|| "reading verify runs".into())?;
    let mut conn = control.acquire().await.ctx(|| "the control database".into())?;
    let locked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND (classid::bigint << 32 | objid::bigint) = $1)",
    )
    .bind(LOCK_KEY)
    .fetch_one(&mut *conn)
    .await
    .ctx(|| "reading the lock".into())?;
    let mover = if locked { Some(lock_holder(&mut conn).await) } else { None };
    Ok(Some(Status {
        move_id: id,
        to_version,
        from: if from_map.is_some() { "the previous shard map".into() } else { "the monolith's tables".into() },
        stage,
        started,
        copy,
        follow,
        last_verify: last_verify.map(|(finished, rows_compared, differences)| VerifyStatus { finished, rows_compared, differences }),
        mover,
    }))
}

/// Ends the open move before its switch: drops its slots and publications (a slot left behind
/// keeps WAL on the source forever) and the rows it copied to the targets, and marks it aborted.
pub async fn abort(mover: Mover) -> Result<()> {
    let stage = mover.stage().await?;
    if stage == "done" {
        return Err(MoveError::Refused("the move is done: moving back is a new move".into()));
    }
    for f in &mover.follows {
        sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&f.slot)
            .execute(&f.pool)
            .await
            .ctx(|| format!("source `{}`: dropping slot {}", f.source.name, f.slot))?;
        sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {}", f.publication))
            .execute(&f.pool)
            .await
            .ctx(|| format!("source `{}`: dropping publication", f.source.name))?;
        for (target, b) in &f.source.targets {
            sqlx::raw_sql(&format!("DELETE FROM chat.chats WHERE {}", plan::bucket_filter("id", b)))
                .execute(&mover.targets[target])
                .await
                .ctx(|| format!("shard `{target}`: removing the copied rows"))?;
        }
    }
    sqlx::query("UPDATE chat_move.moves SET stage = 'aborted', ended_at = now(), updated_at = now() WHERE id = $1")
        .bind(mover.move_id)
        .execute(&mover.control)
        .await
        .ctx(|| "recording the abort".into())?;
    Ok(())
}

/// The open move's maps (old map text or None for the monolith's tables, new map text).
pub async fn stored_maps(control_url: &str) -> Result<Option<(Option<String>, String)>> {
    let control = connect("the control database (DATABASE_URL)", control_url, 1).await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('chat_move.moves') IS NOT NULL")
        .fetch_one(&control)
        .await
        .ctx(|| "reading the move".into())?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_as("SELECT from_map, to_map FROM chat_move.moves WHERE ended_at IS NULL")
        .fetch_optional(&control)
        .await
        .ctx(|| "reading the open move".into())
}
