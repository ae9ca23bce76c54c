//! The shared crate of the extracted BrainMessenger services (auth, chat, notification, call,
//! payment, ai). Each service gets the same operational surface from here:
//!
//! * [`config`]: typed settings from the environment, every problem reported at once;
//! * [`telemetry`]: `tracing` logs (text or JSON) and a Prometheus `/metrics` endpoint;
//! * [`health`]: `/health` (liveness) and `/ready` (dependencies answer);
//! * [`http`]: outbound HTTPS clients (OpenSSL; system CAs plus `EXTRA_CA_CERTS`);
//! * [`jwt`]: verification of the access tokens the auth service and the monolith issue (RS256,
//!   keys from a JWKS URL or a PEM), as an axum extractor;
//! * [`dryrun`]: one database transaction per request, rolled back when the proxy marks the
//!   request as a shadow dry run (`x-strangler-dry-run`), so shadowed writes leave nothing behind;
//! * [`nest`]: what the monolith's HTTP layer (Nest on Express) does around handlers: JSON body
//!   parsing, error bodies, ETags, 404s;
//! * [`validate`]: the monolith's request validation (class-validator's rules and messages);
//! * [`serve`]: serving a router with graceful shutdown on SIGTERM/SIGINT.

pub mod config;
pub mod dryrun;
pub mod health;
pub mod http;
pub mod jwt;
pub mod nest;
pub mod serve;
pub mod telemetry;
#[doc(hidden)]
pub mod testdb;
pub mod validate;

/// The internal headers, defined once for the proxy and the services (`strangler-protocol`).
pub use strangler_protocol::{DryRunKey, DRY_RUN_HEADER, REQUEST_ID_HEADER, SHADOW_HEADER};
