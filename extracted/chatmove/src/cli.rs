//! `bm-chat move …`: the operator's commands. Exit status 0: done; 1: verify found differences
//! or a database failed; 2: refused (bad input, another mover running) — the message says what
//! to do.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bm_shards::ShardMap;
use clap::{Parser, Subcommand, ValueEnum};

use crate::mover::{self, MoveError, MoveSpec, Mover, VerifyReport};
use crate::plan::{self, Origin};
use crate::status;

#[derive(Parser)]
#[command(name = "bm-chat move", about = "Move chat data onto the shards, or between them, while traffic flows (docs/chat-sharding.md)")]
struct Cli {
    /// The control database: the move's state and lock live here, and it holds the monolith's
    /// tables (the first move's source).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a move, or resume the open one: prepare, copy, verify, then follow until stopped.
    Run {
        /// The shard map to move to (its shards' URLs come from their url_env variables).
        /// Optional when resuming: the open move's map is stored.
        #[arg(long)]
        to: Option<std::path::PathBuf>,
        /// The map the data is on now; without it, the monolith's tables.
        #[arg(long)]
        from: Option<std::path::PathBuf>,
        /// Rows per chunk (copy and verify).
        #[arg(long, default_value_t = 2000)]
        chunk: i64,
        /// Pause between copied chunks, to spare a busy source.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Stop after this stage instead of following until Ctrl-C / SIGTERM.
        #[arg(long, value_enum)]
        exit_after: Option<ExitAfter>,
        /// While following: a wait after a pass that applied nothing (the stream itself waits
        /// for changes; this only spaces out the loop's bookkeeping when idle).
        #[arg(long, default_value_t = 0)]
        follow_pause_ms: u64,
        /// Serve Prometheus metrics (chat_move_*) on this address.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Verify the open move again (follows while it compares).
    Verify {
        #[arg(long, default_value_t = 2000)]
        chunk: i64,
    },
    /// Where the open move is: stage, rows copied, rate, ETA, follow lag, last verify.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Abandon the open move before its writes switched: drop its slots and publications and
    /// the rows it copied to the targets.
    Abort,
    /// Send the moving buckets' reads (after a clean verify), then their writes, to the new
    /// shards. Asks the running mover when one runs, or does it itself.
    Switch {
        #[arg(value_enum)]
        what: SwitchWhat,
    },
    /// Back to where the data was, losing nothing written since the switch.
    Rollback,
    /// End reverse sync (when the monolith is switched off; at once for a move between shards).
    Finish,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SwitchWhat {
    Reads,
    Writes,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ExitAfter {
    Copy,
    Verify,
}

/// Runs `bm-chat move` with these arguments (the first is the program name).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    bm_common::telemetry::init_tracing("bm_chatmove");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bm-chat move: {e}");
            ExitCode::from(match e {
                MoveError::Refused(_) | MoveError::Locked(_) | MoveError::Plan(_) => 2,
                _ => 1,
            })
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn read_map(path: &std::path::Path) -> Result<(ShardMap, String), MoveError> {
    let text = std::fs::read_to_string(path).map_err(|e| MoveError::Refused(format!("{}: {e}", path.display())))?;
    let map = ShardMap::parse(&path.display().to_string(), &text).map_err(|e| MoveError::Refused(e.to_string().trim_end().to_string()))?;
    Ok((map, text))
}

/// The open move's maps, as stored when it started.
async fn open_spec(control_url: &str) -> Result<Option<MoveSpec>, MoveError> {
    let Some(st) = mover::stored_maps(control_url).await? else { return Ok(None) };
    let to = ShardMap::parse("the open move's map", &st.1).map_err(|e| MoveError::Refused(e.to_string()))?;
    let from = match &st.0 {
        None => Origin::Legacy,
        Some(t) => Origin::Map(ShardMap::parse("the open move's old map", t).map_err(|e| MoveError::Refused(e.to_string()))?),
    };
    Ok(Some(MoveSpec { from, from_text: st.0, to, to_text: st.1 }))
}

async fn run(cli: Cli) -> Result<ExitCode, MoveError> {
    let url = cli.database_url;
    match cli.command {
        Command::Status { json } => {
            let st = status::status(&url, &env).await?;
            match (st, json) {
                (None, true) => println!("null"),
                (None, false) => println!("no move is open"),
                (Some(s), true) => println!("{}", serde_json::to_string_pretty(&s).expect("status serialises")),
                (Some(s), false) => print!("{}", show_status(&s)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Abort => {
            let mut m = open_mover(&url).await?;
            let id = m.move_id;
            mover::abort(&mut m).await?;
            println!("move {id} aborted: its slots, publications and copied rows are gone");
            Ok(ExitCode::SUCCESS)
        }
        Command::Switch { what } => {
            let name = match what {
                SwitchWhat::Reads => "switch-reads",
                SwitchWhat::Writes => "switch-writes",
            };
            control_command(&url, name).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback => {
            control_command(&url, "rollback").await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Finish => {
            control_command(&url, "finish").await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { chunk } => {
            let mut m = open_mover(&url).await?;
            m.chunk = chunk;
            let r = m.verify().await?;
            print!("{}", show_verify(&r));
            Ok(if r.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Run { to, from, chunk, pause_ms, exit_after, follow_pause_ms, metrics_addr } => {
            if chunk < 1 {
                return Err(MoveError::Refused("--chunk must be at least 1".into()));
            }
            let spec = match (to, open_spec(&url).await?) {
                (None, Some(open)) => open,
                (None, None) => {
                    return Err(MoveError::Refused(
                        "no move is open: start one with --to <shards.toml> (and --from <old map> when the data is on shards)".into(),
                    ))
                }
                (Some(to), _) => {
                    let (to, to_text) = read_map(&to)?;
                    let (from, from_text) = match from {
                        None => (Origin::Legacy, None),
                        Some(p) => {
                            let (m, t) = read_map(&p)?;
                            (Origin::Map(m), Some(t))
                        }
                    };
                    MoveSpec { from, from_text, to, to_text }
                }
            };
            if let Some(addr) = metrics_addr {
                let handle = bm_common::telemetry::install_metrics();
                let listener =
                    tokio::net::TcpListener::bind(addr).await.map_err(|e| MoveError::Refused(format!("--metrics-addr {addr}: {e}")))?;
                tokio::spawn(async move { axum::serve(listener, bm_common::telemetry::metrics_router::<()>(handle)).await });
            }
            let mut m = Mover::open(&url, spec, &env).await?;
            m.chunk = chunk;
            m.pause = Duration::from_millis(pause_ms);
            for s in &m.plan.sources {
                for (t, b) in &s.targets {
                    eprintln!("move {}: buckets {} from {} to {t}", m.move_id, plan::show_ranges(b), s.name);
                }
            }
            let stage = m.stage().await?;
            if stage == "prepare" || stage == "copy" {
                m.prepare().await?;
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}")
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                let mut last_line = Instant::now();
                m.copy(|p| {
                    bar.set_length(p.rows_total.max(p.rows_copied) as u64);
                    bar.set_position(p.rows_copied as u64);
                    bar.set_message(format!("copy {}.{}", p.source, p.table));
                    if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(5) {
                        last_line = Instant::now();
                        eprintln!("copy {}.{}: {}/{} rows", p.source, p.table, p.rows_copied, p.rows_total);
                    }
                })
                .await?;
                bar.finish_and_clear();
                eprintln!("copy done");
            }
            if exit_after == Some(ExitAfter::Copy) {
                return Ok(ExitCode::SUCCESS);
            }
            match m.stage().await?.as_str() {
                "verify" => {
                    let r = m.verify().await?;
                    eprint!("{}", show_verify(&r));
                    if !r.is_clean() {
                        return Ok(ExitCode::from(1));
                    }
                }
                // a switch or rollback a kill interrupted: done again (each step is idempotent)
                "switching-writes" => {
                    run_command(&mut m, "switch-writes").await?;
                }
                "rolling-back" => {
                    run_command(&mut m, "rollback").await?;
                    return Ok(ExitCode::SUCCESS);
                }
                _ => {}
            }
            if exit_after == Some(ExitAfter::Verify) {
                return Ok(ExitCode::SUCCESS);
            }
            follow_until_stopped(&mut m, Duration::from_millis(follow_pause_ms)).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open_mover(url: &str) -> Result<Mover, MoveError> {
    let spec = open_spec(url).await?.ok_or_else(|| MoveError::Refused("no move is open".into()))?;
    Mover::open(url, spec, &env).await
}

/// A switch, rollback or finish: run here when no mover runs, or asked of the running one.
async fn control_command(url: &str, name: &str) -> Result<(), MoveError> {
    match open_mover(url).await {
        Ok(mut m) => {
            run_command(&mut m, name).await?;
            Ok(())
        }
        Err(MoveError::Locked(holder)) => {
            eprintln!("{holder}: asking it to {name}");
            mover::request(url, name, Duration::from_secs(600)).await?;
            println!("{name}: done by the running mover");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Runs a command on the mover; false when the move has ended.
async fn run_command(m: &mut Mover, name: &str) -> Result<bool, MoveError> {
    match name {
        "switch-reads" => {
            m.switch_reads().await?;
            println!("reads of the moving buckets now go to the new shards; writes stay where they were, followed");
        }
        "switch-writes" => {
            let r = m.switch_writes().await?;
            println!(
                "writes of the moving buckets now go to the new shards: they waited {} ms while {} last changes were applied; reverse sync runs from here",
                r.write_pause_ms, r.drained
            );
        }
        "rollback" => {
            m.rollback().await?;
            println!("rolled back: reads and writes are where they were, nothing written since the switch is lost");
            return Ok(false);
        }
        "finish" => {
            m.finish().await?;
            println!("finished: the new map is in effect, reverse sync ended");
            return Ok(false);
        }
        other => return Err(MoveError::Refused(format!("unknown command {other}"))),
    }
    Ok(true)
}

/// Changes applied per decoding pass at most.
const FOLLOW_BATCH: i32 = 5000;

/// Follows (forward before the switch of writes, backward after it) until SIGINT/SIGTERM, and
/// runs what `bm-chat move switch|rollback|finish` asks meanwhile.
async fn follow_until_stopped(m: &mut Mover, pause: Duration) -> Result<(), MoveError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    let mut last_line = Instant::now() - Duration::from_secs(3600);
    eprintln!("following: changes are applied until this stops (Ctrl-C); switch, rollback and finish can be asked from another terminal");
    loop {
        if let Some(req) = m.take_request().await? {
            eprintln!("asked to {req}");
            match run_command(m, &req).await {
                Ok(going_on) => {
                    m.answer_request(None).await?;
                    if !going_on {
                        return Ok(());
                    }
                }
                Err(e) => {
                    eprintln!("{req}: {e}");
                    m.answer_request(Some(e.to_string())).await?;
                }
            }
        }
        // a signal while a pass runs drops it: nothing it applied is confirmed to the server
        // before the shards committed, so a restart replays it (whole-row states: the same end)
        let applied = tokio::select! {
            r = m.follow_once(FOLLOW_BATCH) => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        if last_line.elapsed() >= Duration::from_secs(10) {
            last_line = Instant::now();
            let lag = m.lag().await?;
            eprintln!("following: lag {}", lag.iter().map(|(s, l)| format!("{s} {l} bytes")).collect::<Vec<_>>().join(", "));
        }
        if applied == 0 && !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
            }
        }
    }
}

fn show_verify(r: &VerifyReport) -> String {
    let mut s = format!(
        "verify: {} rows in {} chunks compared in {:.1} s ({} chunks read again after writes in flight): ",
        r.rows_compared, r.chunks, r.seconds, r.rechecked
    );
    if r.is_clean() {
        s.push_str("no differences\n");
    } else {
        s.push_str(&format!("{} differences\n", r.differences.len()));
        for d in &r.differences {
            s.push_str(&format!("  {} {}: {} on the target\n", d.table, d.key, if d.kind == "changed" { "changed" } else { d.kind }));
        }
    }
    s
}

fn show_status(s: &crate::status::Status) -> String {
    let mut out =
        format!("move {} from {} to shard map version {}: stage {}, started {}\n", s.move_id, s.from, s.to_version, s.stage, s.started);
    out.push_str(&format!("mover: {}\n", s.mover.as_deref().unwrap_or("none running")));
    for c in &s.copy {
        let eta = c.eta_seconds.map(|e| format!(", eta {e:.0} s")).unwrap_or_default();
        out.push_str(&format!(
            "copy {}.{}: {}/{} rows{} ({:.0} rows/s{eta})\n",
            c.source,
            c.table,
            c.rows_copied,
            c.rows_total,
            if c.done { " done" } else { "" },
            c.rows_per_second
        ));
    }
    for f in &s.follow {
        out.push_str(&format!(
            "follow {} (slot {}): lag {}\n",
            f.source,
            f.slot,
            f.lag_bytes.map(|b| format!("{b} bytes")).unwrap_or_else(|| "unknown (source unreachable)".into())
        ));
    }
    match &s.last_verify {
        Some(v) => out.push_str(&format!(
            "last verify: {} rows compared, finished {}, differences {}\n",
            v.rows_compared,
            v.finished.as_deref().unwrap_or("(running or killed)"),
            v.differences
        )),
        None => out.push_str("last verify: none yet\n"),
    }
    if let Some(ms) = s.write_pause_ms {
        out.push_str(&format!("writes switched after a pause of {ms} ms\n"));
    }
    out
}
