//! `routes.toml`: the platform engineer's interface.
//!
//! Two stages, as ripgrep and pingora do it: [`raw`] is the file as written (serde, spans kept),
//! [`RouteTable::compile`] checks everything and builds the table the proxy serves. Errors carry
//! file, line, column and a hint ([`error`]); [`RouteTable::diff`] says what a change does.

mod compile;
mod diff;
mod error;
mod json_schema;
mod markdown;
mod model;
pub mod raw;
mod schema;
mod spanned;
mod summary;

pub use compile::{content_hash, Compiled, DEFAULT_ADMIN, DEFAULT_LISTEN};
pub use diff::{route_summary, Change, RoutingDiff};
pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, ConfigWarning, Location, Source};
pub use json_schema::{routes_schema, routes_schema_text, SCHEMA_FILE};
pub use markdown::CheckReport;
pub use model::*;

#[cfg(test)]
mod tests;
