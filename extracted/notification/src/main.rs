//! `bm-notification`: the notification service. Configuration from the environment
//! (extracted/notification/README.md); exits 2 with every problem listed when it is invalid.
//!
//! - `bm-notification` (or `serve`): the REST routes `/notifications/*`, the push job, and
//!   `/health`, `/ready`, `/metrics`.
//! - `bm-notification pushes [--owner monolith|notification]`: who sends the pushes; with
//!   `--owner`, switch (the cut-over) or switch back (the rollback).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use bm_common::config::Env;
use bm_common::health::Readiness;
use bm_common::telemetry;
use bm_notification::config::Config;
use bm_notification::job::Job;
use bm_notification::owner::{self, Owner};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "BrainMessenger's notification service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST routes and run the push job (the default)
    Serve,
    /// Show who sends the pushes for new messages; --owner switches (DATABASE_URL)
    Pushes {
        /// monolith (in-process, the job compares) or notification (the job pushes)
        #[arg(long)]
        owner: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let cfg = match Config::from_env(Env::from_process()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init_tracing("bm_notification");
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bm-notification: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Pushes { owner } => match rt.block_on(pushes(owner)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bm-notification pushes: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn pushes(to: Option<String>) -> anyhow::Result<ExitCode> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let pool = sqlx::PgPool::connect(&url).await.context("connecting to Postgres (DATABASE_URL)")?;
    match to {
        None => {
            let (o, since) = owner::current(&pool).await?;
            println!("pushes are sent by: {} (since {})", o.as_str(), since.to_rfc3339());
        }
        Some(to) => {
            let Some(to) = Owner::parse(&to) else {
                eprintln!("--owner {to}: expected monolith or notification");
                return Ok(ExitCode::from(2));
            };
            let was = owner::switch(&pool, to).await?;
            if was == to {
                println!("pushes are already sent by {}: nothing changed", to.as_str());
            } else {
                println!("pushes: {} → {} (messages sent from now on)", was.as_str(), to.as_str());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics();
    let verifier = cfg.jwt.verifier(&cfg.tls).await?;
    let pool = cfg.database.connect().await?;
    let fcm = bm_notification::fcm::Client::new(&cfg.fcm, cfg.http_timeout, &cfg.tls)?;
    let producer = cfg.kafka.producer().context("creating the Kafka producer (dead letters)")?;
    let addr = cfg.addr;
    let rest = bm_notification::rest::router(pool.clone(), cfg.dry_run_key.clone()).layer(axum::Extension(verifier));
    let job = Arc::new(Job::new(cfg, pool.clone(), fcm, producer));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = tokio::spawn(job.clone().run(stopped));
    let readiness = Readiness::default().postgres(pool);
    let inner = Router::new()
        .merge(rest)
        .merge(readiness.router())
        .merge(telemetry::metrics_router(metrics))
        .layer(axum::middleware::from_fn(telemetry::track_requests));
    let mut server = tokio::spawn(bm_common::serve::serve(addr, bm_common::nest::express_app(inner)));
    tokio::select! {
        // the job never ends on its own: if it does, exit so the supervisor restarts the service
        r = &mut running => {
            match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("the push job stopped")),
                Ok(Err(e)) => Err(e.context("the push job")),
                Err(e) => Err(anyhow::anyhow!("the push job panicked: {e}")),
            }
        }
        served = &mut server => {
            // SIGTERM: the HTTP side has drained; now the job finishes what it holds
            let _ = stop.send(true);
            match running.await {
                Ok(r) => r.context("the push job")?,
                Err(e) => anyhow::bail!("the push job panicked: {e}"),
            }
            served?
        }
    }
}
