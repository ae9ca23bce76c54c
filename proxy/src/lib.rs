//! strangler: a Pingora edge proxy that moves a monolith's routes to extracted services one at a
//! time, as a hand-edited `routes.toml` says.
//!
//! Map of the crate:
//! - [`config`]: `routes.toml` → validated [`config::RouteTable`] (pure), errors with locations,
//!   routing diffs.
//! - [`routing`]: route lookup and canary bucketing over a compiled table (pure).
//! - [`graphql`]: reading GraphQL operations' root fields, for routes that claim fields (pure).
//! - [`breaker`]: the per-route circuit breaker (pure; the clock is passed in).
//! - [`demote`]: automatic demotion of misbehaving canaries (sliding windows, pure).
//! - [`edge`]: the Pingora `ProxyHttp` implementation: per-request decisions, header hygiene,
//!   fallback.
//! - [`reload`]: the live table behind an `ArcSwap`, file watching, SIGHUP and the admin reload.
//! - [`admin`]: the admin API (routes, health, readiness, metrics, reload, the migration's
//!   progress and the cut-over dashboard).
//! - [`progress`]: the migration's progress measured from live traffic (lock-free counters per
//!   route and backend, the monolith's endpoints), and the report built from it.
//! - [`outbound`]: the proxy's own HTTP clients (shadow copies, health checks) and their TLS trust.
//! - [`metrics`]: metric names, in one place.
//! - [`serve`]: assembling the Pingora server from a table.
//! - [`shadow`]: response diffing with noise cancellation (pure), the tee and the record store.
//! - [`cli`]: what only the command line does (reports, corpora, replay), off the serving path.
//! - [`clock`]: wall-clock stamps, a leaf shared by the modules that record events.

pub mod accesslog;
pub mod admin;
pub mod breaker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demote;
pub mod edge;
pub mod graphql;
pub mod health;
pub mod metrics;
pub mod outbound;
pub mod progress;
pub mod reload;
pub mod routing;
pub mod serve;
pub mod shadow;
