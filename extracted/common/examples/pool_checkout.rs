//! What one checkout of every service's pool costs (`bm_common::config::pool_options`): tasks
//! that each take a connection, run one short statement and give it back, as a request's
//! autocommit reads do. Prints statements/s and the CPU time per statement of this process and of
//! the pool's PostgreSQL backends (`/proc/<pid>/stat`, the server on this host). Used to measure
//! the vendored sqlx-core's release without a ping (docs/benchmarks.md, issue 13):
//!
//! ```text
//! source .run/stack.env   # scripts/stack up
//! cargo run --release -p bm-common --example pool_checkout -- 4 8 20000
//! ```
//! arguments: pool size, concurrent tasks, statements per task.

use std::time::Instant;

fn ticks_of(pid: u32) -> u64 {
    // utime + stime, fields 14 and 15 of /proc/<pid>/stat (after the command's closing paren)
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
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
    let me = std::process::id();
    let (client0, server0) = (ticks_of(me), backends.iter().map(|p| ticks_of(*p)).sum::<u64>());
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
    let (client1, server1) = (ticks_of(me), backends.iter().map(|p| ticks_of(*p)).sum::<u64>());
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
