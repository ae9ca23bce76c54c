//! BrainMessenger's chat service, extracted from the NestJS monolith (the February cut-over,
//! part 1).
//!
//! It serves the monolith's GraphQL chat API (`docs/api/chat.md`, schema in
//! `docs/api/chat.graphql`) — the same types, fields, descriptions, error codes and messages,
//! HTTP statuses and WebSocket protocol — on the monolith's own tables (`legacy.chats`,
//! `legacy.chat_members`, `legacy.messages`, `legacy.notifications`, `legacy.devices`), so the
//! strangler proxy can send each root field to either side and a client cannot tell which one
//! answered.
//!
//! `messageAdded` crosses sides through Redis pub/sub (`bus`): a message sent through either
//! side reaches subscribers on both. Pushes for new messages go to FCM as the monolith sends them
//! (`push`).
//!
//! What it adds: Prometheus metrics, `/ready`, dry runs for the proxy's signed shadow copies
//! (writes rolled back, nothing published or pushed), and, within one HTTP operation with
//! several mutations, each mutation's writes kept or undone on their own (a savepoint each), as
//! the monolith's transaction per service call does.

pub mod answer;
pub mod bus;
pub mod config;
pub mod errors;
pub mod graphqljs;
pub mod http;
pub mod inbox;
pub mod placement;
pub mod push;
pub mod schema;
pub mod shape;
pub mod store;
pub mod validate;
pub mod ws;

use std::sync::Arc;

use axum::routing::any;
use axum::Router;
use bm_common::dryrun::{transaction_per_request, TxState};
use bm_common::jwt::Verifier;
use bm_common::nest;
use sqlx::PgPool;

pub use config::Config;

/// Everything a resolver needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub cfg: Config,
    pub pool: PgPool,
    /// Single-statement reads on the monolith's database by a request that holds a shard's
    /// connection meanwhile (`sendMessage` on a shard reads its sender's profile while its
    /// shard transaction begins). A pool of its own: its connections are held for one
    /// statement by tasks that wait on nothing else, so waiting for one while holding a shard's
    /// can never close a circle of waits (requests on `pool` may wait for shards' connections).
    pub side_reads: PgPool,
    pub bus: bus::Bus,
    /// FCM
    pub http: reqwest::Client,
    pub verifier: Verifier,
    /// where each chat's rows are read (the chat data move's routing)
    pub placement: Arc<placement::Placement>,
}

/// The side-reads pool's size: a quarter of the main pool's, at least two (each is held for one
/// round trip, the main pool's for a whole request).
pub fn side_reads_max(pool_max: u32) -> u32 {
    (pool_max / 4).max(2)
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        cfg: Config,
        pool: PgPool,
        bus: bus::Bus,
        verifier: Verifier,
        placement: Arc<placement::Placement>,
    ) -> anyhow::Result<AppState> {
        let http = cfg.tls.client_builder().timeout(cfg.http_timeout).build()?;
        let side_reads = bm_common::config::pool_options(side_reads_max(cfg.database.pool_max), cfg.database.acquire_timeout)
            .connect_lazy(&cfg.database.url)?;
        Ok(AppState(Arc::new(Inner { cfg, pool, side_reads, bus, http, verifier, placement })))
    }
}

/// What `/graphql` needs: the state, and the schema built over it.
#[derive(Clone)]
pub struct Endpoint {
    pub app: AppState,
    pub schema: schema::ChatSchema,
    /// automatic persisted queries (hash → query), per process as in Apollo Server
    pub persisted: Arc<http::PersistedQueries>,
}

/// The chat API (`/graphql`, HTTP and WebSocket), with the request transaction. Serve it inside
/// [`nest::express_app`], like the monolith's Express: `/GraphQL/` and `/graphql/anything` reach
/// it too (Apollo is mounted with `app.use`).
pub fn router(state: AppState) -> Router {
    let tx_state = TxState::new(state.pool.clone(), state.cfg.dry_run_key.clone());
    let endpoint = Endpoint { schema: schema::build(state.clone()), app: state, persisted: Arc::default() };
    Router::new()
        .route("/graphql", any(http::endpoint))
        .route("/graphql/{*rest}", any(http::endpoint))
        .fallback(nest::not_found)
        .with_state(endpoint)
        .layer(axum::middleware::from_fn_with_state(tx_state, transaction_per_request))
}
