//! Where each bucket's reads and writes go, as the move's state says: what the chat service
//! follows. The map in effect is the last finished move's (none: the monolith's tables); an open
//! move moves its buckets' reads at `reads-switched` and their writes at `writes-switched`, and
//! pauses their writes while it switches them (or rolls them back). A writer that meets the write
//! fence (SQLSTATE [`crate::plan::FENCE_SQLSTATE`]) or a pause loads the routing again.

use bm_shards::{ShardMap, BUCKETS};
use sqlx::PgPool;

use crate::mover::{Ctx, MoveError, MoveSpec, Result};
use crate::plan::LEGACY;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// each bucket's database for reads: `legacy` or a shard's name
    pub reads: Vec<String>,
    /// each bucket's database for writes; None while they are paused
    pub writes: Vec<Option<String>>,
    /// every shard named by the maps in play: (name, url_env)
    pub shards: Vec<(String, String)>,
    /// what this routing was read from, for logs: "legacy", "map 3", "move 4 at reads-switched"
    pub describe: String,
}

impl Routing {
    /// Everything on the monolith's tables.
    pub fn legacy() -> Routing {
        Routing {
            reads: vec![LEGACY.to_string(); BUCKETS as usize],
            writes: vec![Some(LEGACY.to_string()); BUCKETS as usize],
            shards: vec![],
            describe: "the monolith's tables".into(),
        }
    }

    fn of_map(map: &ShardMap) -> Routing {
        let names: Vec<String> = (0..BUCKETS).map(|b| map.shard_for_bucket(b).name.clone()).collect();
        Routing {
            writes: names.iter().cloned().map(Some).collect(),
            reads: names,
            shards: map.shards.iter().map(|s| (s.name.clone(), s.url_env.clone())).collect(),
            describe: format!("shard map version {}", map.version),
        }
    }

    /// Reads the routing from the control database (any pool on it).
    pub async fn load(control: &PgPool) -> Result<Routing> {
        if !crate::mover::has_moves(control).await? {
            return Ok(Routing::legacy());
        }
        let done: Option<String> = sqlx::query_scalar("SELECT to_map FROM chat_move.moves WHERE stage = 'done' ORDER BY id DESC LIMIT 1")
            .fetch_optional(control)
            .await
            .ctx(|| "reading the chat routing".into())?;
        let mut routing = match &done {
            None => Routing::legacy(),
            Some(text) => Routing::of_map(&ShardMap::parse("the map in effect", text).map_err(|e| MoveError::Refused(e.to_string()))?),
        };
        let open: Option<(i64, Option<String>, String, String)> =
            sqlx::query_as("SELECT id, from_map, to_map, stage FROM chat_move.moves WHERE ended_at IS NULL")
                .fetch_optional(control)
                .await
                .ctx(|| "reading the chat routing".into())?;
        let Some((id, from, to, stage)) = open else { return Ok(routing) };
        let spec = MoveSpec::parse(from, to)?;
        for s in &spec.to.shards {
            if !routing.shards.iter().any(|(n, _)| n == &s.name) {
                routing.shards.push((s.name.clone(), s.url_env.clone()));
            }
        }
        let (reads_after, writes) = match stage.as_str() {
            "reads-switched" => (true, Some(false)),
            "switching-writes" | "rolling-back" => (true, None),
            "writes-switched" => (true, Some(true)),
            _ => (false, Some(false)),
        };
        for b in 0..BUCKETS {
            let after = &spec.to.shard_for_bucket(b).name;
            if &routing.reads[b as usize] == after {
                continue; // not moving
            }
            if reads_after {
                routing.reads[b as usize] = after.clone();
            }
            routing.writes[b as usize] = match writes {
                None => None,
                Some(true) => Some(after.clone()),
                Some(false) => routing.writes[b as usize].clone(),
            };
        }
        routing.describe = format!("move {id} at {stage} over {}", routing.describe);
        Ok(routing)
    }

    pub fn read_db(&self, id: &uuid::Uuid) -> &str {
        &self.reads[bm_shards::bucket(id) as usize]
    }

    pub fn write_db(&self, id: &uuid::Uuid) -> Option<&str> {
        self.writes[bm_shards::bucket(id) as usize].as_deref()
    }
}

/// Whether a database error is the write fence's refusal.
pub fn is_fenced(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == crate::plan::FENCE_SQLSTATE)
}
