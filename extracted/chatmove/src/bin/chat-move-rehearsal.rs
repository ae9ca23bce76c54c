//! The chat data move rehearsed end to end on a seeded copy of the monolith's tables while
//! clients write where the routing says (scripts/rehearse-chat-move sets the databases up):
//! copy, catch-up, verify, following with probes (the time a message written on the monolith's
//! table takes to appear on its shard), switch reads, switch writes (the pause the mover measured
//! and the longest any client's write took), reverse sync, verify again, every message the
//! clients touched checked where the routing reads it, finish. Prints a Markdown table.
//!
//!   chat-move-rehearsal --map shards.toml [--writers 4] [--rate 200] [--follow-seconds 20] [--chunk 5000]
//!
//! Needs DATABASE_URL (the monolith's database) and the map's url_env variables.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bm_chatmove::mover::{MoveSpec, Mover};
use bm_chatmove::routing::Routing;
use bm_chatmove::testkit::{check, paced_writer, Outcome};
use clap::Parser;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    map: std::path::PathBuf,
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// client operations per second, all writers together
    #[arg(long, default_value_t = 200)]
    rate: u32,
    #[arg(long, default_value_t = 20)]
    follow_seconds: u64,
    #[arg(long, default_value_t = 5000)]
    chunk: i64,
    /// No move of its own: for this many seconds, time probe messages written on the monolith's
    /// table until they are on their shard — the follow lag of a mover that is following now
    /// (`bm-chat move run`), under whatever load the stack has.
    #[arg(long)]
    probe_only: Option<u64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes a probe message on the monolith's table every 100 ms for `secs` seconds and times each
/// until it is on its shard; follows with `mover` meanwhile when given (else another process
/// follows), recording its largest lag.
async fn probe(
    main: &PgPool,
    pools: &HashMap<String, PgPool>,
    spec: &MoveSpec,
    secs: u64,
    mut mover: Option<(&mut Mover, &mut i64)>,
) -> anyhow::Result<Vec<f64>> {
    let (probe_chat, probe_sender): (Uuid, Uuid) =
        sqlx::query_as("SELECT chat_id, user_id FROM legacy.chat_members LIMIT 1").fetch_one(main).await?;
    let target = pools[&spec.to.shard_of(&probe_chat).name].clone();
    let mut pending: HashMap<Uuid, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut next_probe = Instant::now();
    while Instant::now() < until || !pending.is_empty() {
        if Instant::now() >= next_probe && Instant::now() < until {
            next_probe += Duration::from_millis(100);
            let id = Uuid::new_v4();
            sqlx::query("INSERT INTO legacy.messages (id, chat_id, sender_id, body) VALUES ($1, $2, $3, 'probe')")
                .bind(id)
                .bind(probe_chat)
                .bind(probe_sender)
                .execute(main)
                .await?;
            pending.insert(id, Instant::now());
        }
        if let Some((m, max_lag)) = mover.as_mut() {
            m.follow_once(5000).await?;
            **max_lag = (**max_lag).max(m.lag().await?.iter().map(|(_, l)| *l).sum());
        }
        let ids: Vec<Uuid> = pending.keys().copied().collect();
        let seen: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM chat.messages WHERE id = ANY($1)").bind(&ids).fetch_all(&target).await?;
        for id in seen {
            if let Some(sent) = pending.remove(&id) {
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if Instant::now() > until + Duration::from_secs(30) {
            anyhow::bail!("{} probes never reached their shard: is a mover following?", pending.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(latencies)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let control_url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let to_text = std::fs::read_to_string(&args.map).with_context(|| args.map.display().to_string())?;
    let spec = MoveSpec::parse(None, to_text.clone())?;
    let mut pools: HashMap<String, PgPool> = HashMap::new();
    pools.insert("legacy".into(), sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&control_url).await?);
    for s in &spec.to.shards {
        let url = std::env::var(&s.url_env).with_context(|| s.url_env.clone())?;
        pools.insert(s.name.clone(), sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await?);
    }
    let main = pools["legacy"].clone();
    if let Some(secs) = args.probe_only {
        let mut latencies = probe(&main, &pools, &spec, secs, None).await?;
        let (p50, p99, pmax) = (pct(&mut latencies, 0.5), pct(&mut latencies, 0.99), pct(&mut latencies, 1.0));
        println!(
            "| follow: a monolith write on its shard after (p50 / p99 / max) | {p50:.0} / {p99:.0} / {pmax:.0} ms ({} probes) |",
            latencies.len()
        );
        return Ok(());
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy.messages").fetch_one(&main).await?;
    let chats: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy.chats").fetch_one(&main).await?;
    eprintln!("rehearsing the move of {messages} messages in {chats} chats, {} writers at {} ops/s", args.writers, args.rate);

    let stop = Arc::new(AtomicBool::new(false));
    let pace = Duration::from_secs_f64(args.writers as f64 / args.rate.max(1) as f64);
    let writers: Vec<_> =
        (0..args.writers).map(|i| tokio::spawn(paced_writer(pools.clone(), stop.clone(), u64::MAX, pace, (i, args.writers)))).collect();

    let url_of = |k: &str| std::env::var(k).ok();
    let mut m = Mover::open(&control_url, MoveSpec::parse(None, to_text)?, &url_of).await?;
    m.chunk = args.chunk;
    m.prepare().await?;
    let t = Instant::now();
    let mut last_line = Instant::now();
    m.copy(|p| {
        if last_line.elapsed() > Duration::from_secs(5) {
            last_line = Instant::now();
            eprintln!("copy {}: {}/{}", p.table, p.rows_copied, p.rows_total);
        }
    })
    .await?;
    let copy_secs = t.elapsed().as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT coalesce(sum(rows_copied), 0)::bigint FROM chat_move.copy_progress WHERE move_id = $1")
        .bind(m.move_id)
        .fetch_one(&main)
        .await?;
    let lag_after_copy: i64 = m.lag().await?.iter().map(|(_, l)| *l).sum();
    let t = Instant::now();
    let caught = m.catch_up(false).await?;
    let catch_up_secs = t.elapsed().as_secs_f64();
    eprintln!("copied {rows} rows in {copy_secs:.1} s; {caught} changes made meanwhile applied in {catch_up_secs:.1} s");
    let v = m.verify().await?;
    eprintln!("verify: {} rows in {:.1} s, {} differences", v.rows_compared, v.seconds, v.differences.len());
    if !v.is_clean() {
        bail!("verify found differences: {:?}", &v.differences[..v.differences.len().min(10)]);
    }

    // following: probes written on the monolith's table, timed until they are on their shard
    let mut max_lag = 0i64;
    let mut latencies = probe(&main, &pools, &spec, args.follow_seconds, Some((&mut m, &mut max_lag))).await?;
    let (p50, p99, pmax) = (pct(&mut latencies, 0.5), pct(&mut latencies, 0.99), pct(&mut latencies, 1.0));
    eprintln!(
        "following: {} probes, apply latency p50 {p50:.0} ms, p99 {p99:.0} ms, max {pmax:.0} ms; lag at most {max_lag} bytes",
        latencies.len()
    );

    m.switch_reads().await?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        m.follow_once(5000).await?;
    }
    let switch = m.switch_writes().await?;
    eprintln!("writes switched: paused {} ms, {} changes drained", switch.write_pause_ms, switch.drained);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(args.follow_seconds / 2) {
        m.follow_once(5000).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut outcome = Outcome::default();
    for w in writers {
        let o = w.await?;
        outcome.written.sent += o.written.sent;
        outcome.written.edited += o.written.edited;
        outcome.written.deleted += o.written.deleted;
        outcome.written.fenced += o.written.fenced;
        outcome.written.paused += o.written.paused;
        outcome.longest_write = outcome.longest_write.max(o.longest_write);
        outcome.expected.extend(o.expected);
    }
    m.catch_up(true).await?;
    let v2 = m.verify().await?;
    if !v2.is_clean() {
        bail!("verify after the switch found differences: {:?}", &v2.differences[..v2.differences.len().min(10)]);
    }
    let routing = Routing::load(&main).await?;
    let problems = check(&pools, &routing, &outcome.expected).await;
    if !problems.is_empty() {
        bail!("{} messages not as the clients left them: {:?}", problems.len(), &problems[..problems.len().min(10)]);
    }
    m.finish().await?;
    println!("| figure | value |\n|---|---:|");
    println!("| messages moved (chats, members and messages rows) | {messages} ({rows} rows) |");
    println!("| copy | {copy_secs:.1} s, {:.0} rows/s |", rows as f64 / copy_secs);
    println!("| changes made during the copy, applied after it | {caught} in {catch_up_secs:.1} s (WAL behind at the end of the copy: {lag_after_copy} bytes) |");
    println!("| verify (every column of every row) | {} rows in {:.1} s |", v.rows_compared, v.seconds);
    println!(
        "| follow: a monolith write on its shard after (p50 / p99 / max) | {p50:.0} / {p99:.0} / {pmax:.0} ms ({} probes) |",
        latencies.len()
    );
    println!("| writes paused at the switch (mover) | {} ms ({} changes drained) |", switch.write_pause_ms, switch.drained);
    println!("| longest client write (through the switch) | {} ms |", outcome.longest_write.as_millis());
    println!(
        "| client operations | {} sent, {} edited, {} deleted; {} refused by the fence and re-routed, {} waits for the routing |",
        outcome.written.sent, outcome.written.edited, outcome.written.deleted, outcome.written.fenced, outcome.written.paused
    );
    println!("| after the switch: verify, every message the clients touched | {} rows clean; {} messages checked, 0 missing, duplicated or changed |", v2.rows_compared, outcome.expected.len());
    Ok(())
}
