//! `bm-chat move status`: where the open move is, read without the lock (a mover may be running)
//! — from the control database and each database whose slot the stage follows.

use serde::Serialize;

use crate::mover::{connect, lock_holder, slot_lag, slot_name, Ctx, MoveError, Mover, Result};
use crate::plan::{self, Origin, LEGACY};
use bm_shards::ShardMap;

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
    /// how long writes to the moving buckets waited at the switch, once switched
    pub write_pause_ms: Option<i64>,
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
    if !crate::mover::has_moves(&control).await? {
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
    // before the switch of writes the sources' slots are followed, after it the targets'
    let reverse = Mover::following_reverse(&stage);
    let streams: Vec<(String, String)> = if reverse {
        let mut targets: Vec<&String> = plan.sources.iter().flat_map(|s| s.targets.keys()).collect();
        targets.sort();
        targets.dedup();
        targets
            .into_iter()
            .map(|t| (t.clone(), to.shards.iter().find(|s| &s.name == t).map(|s| s.url_env.clone()).unwrap_or_default()))
            .collect()
    } else {
        plan.sources.iter().map(|s| (s.name.clone(), s.url_env.clone())).collect()
    };
    for (db, url_env) in streams {
        let slot = slot_name(&tag, &db, reverse);
        let url = if db == LEGACY { Some(control_url.to_string()) } else { url_of(&url_env) };
        let lag = match url {
            Some(u) => match connect(&db, &u, 1).await {
                Ok(p) => slot_lag(&p, &slot).await.ok().flatten(),
                Err(_) => None,
            },
            None => None,
        };
        follow.push(FollowStatus { source: db, slot, lag_bytes: lag });
    }
    let last_verify: Option<(Option<String>, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT to_char(finished_at, 'YYYY-MM-DD HH24:MI:SS') || ' UTC', rows_compared, differences FROM chat_move.verify_runs WHERE move_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&control)
    .await
    .ctx(|| "reading verify runs".into())?;
    let mut conn = control.acquire().await.ctx(|| "the control database".into())?;
    let locked = !crate::mover::lock_is_free(&mut conn).await?;
    let mover = if locked { Some(lock_holder(&mut conn).await) } else { None };
    let write_pause_ms: Option<i64> = sqlx::query_scalar("SELECT write_pause_ms FROM chat_move.moves WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .ctx(|| "reading the move".into())?;
    Ok(Some(Status {
        move_id: id,
        to_version,
        from: if from_map.is_some() { "the previous shard map".into() } else { "the monolith's tables".into() },
        stage,
        started,
        copy,
        follow,
        last_verify: last_verify.map(|(finished, rows_compared, differences)| VerifyStatus { finished, rows_compared, differences }),
        write_pause_ms,
        mover,
    }))
}
