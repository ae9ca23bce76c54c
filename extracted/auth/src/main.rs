//! `bm-auth`: the extracted auth service. Configuration from the environment (docs/api.md,
//! extracted/auth/README.md); exits 2 with every problem listed when it is invalid.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use bm_auth::{app, config::Config, router, tokens::Keys, AppState};
use bm_common::config::Env;
use bm_common::health::Readiness;
use bm_common::telemetry;

fn main() -> ExitCode {
    let cfg = match Config::from_env(Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let keys = match Keys::from_file(&cfg.jwt_private_key_file, &cfg.jwt_key_id, &cfg.jwt_issuer, &cfg.jwt_audience) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("invalid configuration:\n  - {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing("bm_auth");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(cfg, keys)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bm-auth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config, keys: Keys) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics();
    let pool = bm_common::config::pool_options(cfg.db_pool_max, Duration::from_secs(5))
        .connect(&cfg.database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    let redis_client = redis::Client::open(cfg.redis_url.as_str()).context("REDIS_URL")?;
    let redis = redis::aio::ConnectionManager::new(redis_client).await.context("connecting to Redis (REDIS_URL)")?;
    let addr = cfg.addr;
    let ready_redis = redis.clone();
    let readiness = Readiness::default().postgres(pool.clone()).check("redis", move || {
        let mut r = ready_redis.clone();
        async move { redis::cmd("PING").query_async::<String>(&mut r).await.map(|_| ()).map_err(|e| e.to_string()) }
    });
    let state = AppState::new(cfg, pool, redis, keys)?;
    let inner = Router::new()
        .merge(router(state)?)
        .merge(readiness.router())
        .merge(telemetry::metrics_router(metrics))
        .layer(axum::middleware::from_fn(telemetry::track_requests));
    bm_common::serve::serve(addr, app(inner)).await
}
