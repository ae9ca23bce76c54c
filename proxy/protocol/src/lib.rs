//! What the strangler proxy and the services behind it agree on.
//!
//! The proxy (`strangler`) and every extracted service (through `bm-common`) depend on this
//! crate, so a header name or the dry-run signature is defined once. It is pure: no I/O, no
//! clock (the time is passed in), so both sides test it the same way.
//!
//! - [`REQUEST_ID_HEADER`], [`SHADOW_HEADER`], [`DRY_RUN_HEADER`]: the internal headers.
//! - [`dry_run`]: the signed dry-run header. A shadow copy of a write carries it; a service runs
//!   such a request and rolls it back. Only the proxy can make one (HMAC with a shared secret),
//!   so a client inside the network cannot use dry runs to skip side effects.

pub mod dry_run;

pub use dry_run::{DryRunKey, DryRunRejection};

/// The request id the proxy forwards (the client's, when it sent a usable one).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Put by the proxy on every shadow copy (informational: services may log it).
pub const SHADOW_HEADER: &str = "x-strangler-shadow";
/// Put by the proxy on shadow copies of unsafe requests of a route with `writes = "dry-run"`,
/// signed (see [`dry_run`]); removed from every client request.
pub const DRY_RUN_HEADER: &str = "x-strangler-dry-run";
