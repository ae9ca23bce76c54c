//! BrainMessenger's auth service, extracted from the NestJS monolith (the January cut-over).
//!
//! It serves the monolith's auth contract (`docs/api.md`) byte for byte where a client can see
//! it — statuses, JSON bodies, validation messages, headers — on the monolith's own tables
//! (`legacy.users`, `legacy.refresh_tokens`, `legacy.password_resets`) and Redis keys, and signs
//! access tokens with the same configured RSA key, so a token issued by either side works on the
//! other and moving the route back and forth logs nobody out.
//!
//! What it adds: rate limits on failed sign-ins and two-factor codes (Redis, `429` with
//! `Retry-After`), Prometheus metrics, `/ready`, and dry runs for the proxy's signed shadow
//! copies (writes rolled back, no change to Redis state the monolith shares, no mail, tokens that
//! work nowhere; rate limits apply and count as for the real request).

pub mod config;
pub mod dto;
pub mod handlers;
pub mod limits;
pub mod tokens;
pub mod users;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Extension, Router};
use bm_common::dryrun::{transaction_per_request, TxState};
use bm_common::jwt::Verifier;
use bm_common::nest;
use sqlx::PgPool;

pub use config::Config;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub cfg: Config,
    pub pool: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub keys: tokens::Keys,
    pub http: reqwest::Client,
    /// compared against when the e-mail is unknown, so both paths cost one bcrypt
    pub dummy_hash: String,
    /// bcrypt runs on blocking threads; more at once than there are cores only makes every
    /// request on the box slower (a login burst would starve `me` and `refresh`), so logins
    /// queue here instead
    pub bcrypt_slots: tokio::sync::Semaphore,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(cfg: Config, pool: PgPool, redis: redis::aio::ConnectionManager, keys: tokens::Keys) -> anyhow::Result<AppState> {
        let http = cfg.tls.client_builder().timeout(cfg.http_timeout).build()?;
        let dummy_hash = bcrypt::hash(tokens::opaque_token(), cfg.bcrypt_cost)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let bcrypt_slots = tokio::sync::Semaphore::new(cores);
        Ok(AppState(Arc::new(Inner { cfg, pool, redis, keys, http, dummy_hash, bcrypt_slots })))
    }
}

/// The service as served: `inner` inside Express's layers ([`nest::express_app`]).
pub fn app(inner: Router) -> Router {
    nest::express_app(inner)
}

/// The auth API (the monolith's paths), with the request transaction. Serve it inside [`app`].
pub fn router(state: AppState) -> anyhow::Result<Router> {
    let verifier =
        Verifier::from_rsa_components(&state.keys.public_n, &state.keys.public_e, &state.cfg.jwt_issuer, &state.cfg.jwt_audience)?;
    let tx_state = TxState::new(state.pool.clone(), state.cfg.dry_run_key.clone());
    use handlers as h;
    Ok(Router::new()
        .route("/auth/register", post(h::register))
        .route("/auth/login", post(h::login))
        .route("/auth/2fa/verify", post(h::verify_two_factor))
        .route("/auth/refresh", post(h::refresh))
        .route("/auth/logout", post(h::logout))
        .route("/auth/me", get(h::me))
        .route("/auth/2fa/setup", post(h::setup_two_factor))
        .route("/auth/2fa/enable", post(h::enable_two_factor))
        .route("/auth/2fa/disable", post(h::disable_two_factor))
        .route("/auth/google", get(h::google))
        .route("/auth/google/callback", get(h::google_callback))
        .route("/auth/password/forgot", post(h::forgot_password))
        .route("/auth/password/reset", post(h::reset_password))
        .route("/.well-known/jwks.json", get(h::jwks))
        .fallback(nest::not_found)
        .method_not_allowed_fallback(nest::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(tx_state, transaction_per_request))
        .layer(Extension(verifier)))
}
