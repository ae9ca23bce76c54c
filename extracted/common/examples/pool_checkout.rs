//! What one checkout of every service's pool costs (`bm_common::config::pool_options`): tasks
//! that each take a connection, run one short statement and give it back, as a request's
//! autocommit reads do. Prints statements/s and the CPU time per statement of this process and of
//! the pool's PostgreSQL backends (`/proc/<pid>/stat`, the server on this host). Used to measure
//! the vendored sqlx-core's release without a ping (docs/benchmarks.md, issue 13):
//!
//! ```text
//! source .run/stack.env   # scripts/stack up
//! cargo run --release -p bm-common --example pool_checkout -- 4 8 10000
//! ```
//! arguments: pool size, concurrent tasks, statements per task.

use std::time::Instant;

/// utime + stime of `pid`, fields 14 and 15 of /proc/<pid>/stat (after the command's closing
/// paren). An error, not a zero, when they cannot be read: a zero would print as a figure.
fn ticks_of(pid: u32) -> anyhow::Result<u64> {
    use anyhow::Context;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no ')' in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).with_context(|| format!("field {i} of /proc/{pid}/stat"));
    Ok(field(11)? + field(12)?)
}

/// This process's ticks and the sum of `backends`'.
fn ticks(backends: &[u32]) -> anyhow::Result<(u64, u64)> {
    Ok((ticks_of(std::process::id())?, backends.iter().map(|p| ticks_of(*p)).sum::<anyhow::Result<u64>>()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let (size, tasks, per_task) = match args[..] {
        [a, b, c] => (a, b, c),
        _ => anyhow::bail!("usage: pool_checkout POOL_SIZE TASKS STATEMENTS_PER_TASK"),
    };
    let url = std::env::var("DATABASE_URL")?;
    let pool = bm_common::config::pool_options(u32::try_from(size)?, std::time::Duration::from_secs(30)).connect(&url).await?;
    // open every connection and learn its backend
    let mut held = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..size {
        let mut c = pool.acquire().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *c).await?;
        backends.push(u32::try_from(pid)?);
        held.push(c);
    }
    drop(held);
    let (client0, server0) = ticks(&backends)?;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        set.spawn(async move {
            for i in 0..i64::try_from(per_task)? {
                let n: i64 = sqlx::query_scalar("SELECT $1::int8").bind(i).fetch_one(&pool).await?;
                anyhow::ensure!(n == i, "statement {i} answered {n}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let secs = start.elapsed().as_secs_f64();
    let (client1, server1) = ticks(&backends)?;
    let statements = (tasks * per_task) as f64;
    // USER_HZ is 100 on Linux
    let us = |ticks: u64| ticks as f64 * 10_000.0 / statements;
    println!(
        "pool {size}, {tasks} tasks, {statements} statements: {:.0}/s, CPU per statement: this process {:.1} µs, its backends {:.1} µs",
        statements / secs,
        us(client1 - client0),
        us(server1 - server0)
    );
    Ok(())
}
