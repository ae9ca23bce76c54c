//! `bm-chat`: the extracted chat service. Configuration from the environment
//! (extracted/chat/README.md); exits 2 with every problem listed when it is invalid.
//! `bm-chat move …` is the chat data mover (bm-chatmove, docs/chat-sharding.md).

use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use bm_chat::config::Config;
use bm_chat::{bus::Bus, router, AppState};
use bm_common::config::Env;
use bm_common::health::Readiness;
use bm_common::telemetry;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "move") {
        return bm_chatmove::cli::main(std::env::args_os().skip(1));
    }
    let cfg = match Config::from_env(Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing("bm_chat");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bm-chat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics();
    let verifier = cfg.jwt.verifier(&cfg.tls).await?;
    let pool = cfg.database.connect().await?;
    let redis_client = redis::Client::open(cfg.redis_url.as_str()).context("REDIS_URL")?;
    let redis = redis::aio::ConnectionManager::new(redis_client.clone()).await.context("connecting to Redis (REDIS_URL)")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (bus, listener) = Bus::start(redis_client, redis.clone(), stopped);
    let addr = cfg.addr;
    let ready_redis = redis.clone();
    let ready_bus = bus.clone();
    // where each chat is read: the chat data move's routing (docs/chat-sharding.md)
    let placement =
        bm_chat::placement::Placement::start(pool.clone(), &cfg.database, |k| std::env::var(k).ok(), cfg.kafka.clone(), stop.subscribe())
            .await?;
    tracing::info!(routing = %placement.describe(), "chat routing");
    let readiness = Readiness::default()
        .postgres(pool.clone())
        .check("redis", move || {
            let mut r = ready_redis.clone();
            async move { redis::cmd("PING").query_async::<String>(&mut r).await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .check("chat routing", {
            let placement = placement.clone();
            move || {
                let problem = placement.problems();
                async move { problem.map_or(Ok(()), Err) }
            }
        })
        .check("bus", move || {
            let connected = ready_bus.connected();
            async move {
                if connected {
                    Ok(())
                } else {
                    Err("not subscribed to messageAdded:* on Redis".to_string())
                }
            }
        });
    // the outbox relay: publishes message.sent (whoever wrote it) while this process holds the
    // relay lock; stopped after the last request is answered
    let relay = cfg.kafka.clone().map(|kafka| {
        let relay = bm_events::relay::Relay {
            pool: pool.clone(),
            kafka,
            cfg: Default::default(),
            table: bm_events::outbox::LEGACY,
            source: "legacy".into(),
        };
        tokio::spawn(relay.run(stop.subscribe()))
    });
    // other members' chat lists (docs/chat-sharding.md): their inbox rows from the chat events
    let projection = cfg
        .kafka
        .clone()
        .map(|kafka| tokio::spawn(bm_chat::inbox::run(placement.clone(), kafka, cfg.inbox_group.clone(), stop.subscribe())));
    let state = AppState::new(cfg, pool, bus, verifier, placement.clone())?;
    let inner = Router::new()
        .merge(router(state))
        .merge(readiness.router())
        .merge(telemetry::metrics_router(metrics))
        .layer(axum::middleware::from_fn(telemetry::track_requests));
    let served = bm_common::serve::serve(addr, bm_common::nest::express_app(inner)).await;
    let _ = stop.send(true);
    let _ = listener.await;
    if let Some(r) = relay {
        let _ = r.await;
    }
    placement.stopped().await;
    if let Some(p) = projection {
        let _ = p.await;
    }
    served
}
