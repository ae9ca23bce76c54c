//! The first stage of configuration: `routes.toml` exactly as written.
//!
//! Every value an error might point at is wrapped in [`Spanned`] so the compile stage can name
//! file, line and column. Numbers are read as `i64` so that a negative `percent` is reported by
//! our own validation (with a hint) rather than as a serde type error. Unknown keys are found
//! before serde runs (see `schema.rs`), so that every typo in a file is reported at once; the
//! `deny_unknown_fields` here is a second line of defence that a unit test keeps in step with
//! the key schema.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: Option<Spanned<RawServer>>,
    #[serde(default)]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub shadow: Option<Spanned<RawShadow>>,
    #[serde(default)]
    pub graphql: Option<Spanned<RawGraphQl>>,
    /// The migration plan: its stages (months) in order, each with the services it moves out of
    /// the monolith. Routes name their stage with `stage`; progress is reported per stage.
    #[serde(default)]
    pub plan: Option<Spanned<RawPlan>>,
}

/// `[plan]`: the stages of the migration, in the order they happen.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// The stages in order, e.g. `[{ name = "january", services = ["auth"] }, …]`.
    pub stages: Spanned<Vec<Spanned<RawStage>>>,
}

/// One stage of the plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// The stage's name, as routes write it in `stage` (1 to 40 letters, digits, spaces, `-`,
    /// `_` or `.`), e.g. "january" or "2027-02 chat".
    pub name: Spanned<String>,
    /// The services this stage moves out of the monolith (their upstream names; they need not
    /// exist yet): a stage whose services have no routes yet is reported as not started.
    pub services: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGraphQl {
    pub schema: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_depth: Option<Spanned<i64>>,
    pub max_tokens: Option<Spanned<i64>>,
    pub mixed: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub default_upstream: Option<Spanned<String>>,
    pub threads: Option<Spanned<i64>>,
    pub grace_period_secs: Option<Spanned<i64>>,
    pub shutdown_timeout_secs: Option<Spanned<i64>>,
    pub h2c: Option<bool>,
    pub encoded_slash: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub addr: Spanned<String>,
    pub tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub addr: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Spanned<String>,
    pub health: Option<Spanned<String>>,
    pub health_interval_secs: Option<Spanned<i64>>,
    pub connect_timeout_ms: Option<Spanned<i64>>,
    pub read_timeout_ms: Option<Spanned<i64>>,
    pub write_timeout_ms: Option<Spanned<i64>>,
    pub idle_timeout_secs: Option<Spanned<i64>>,
    pub pool_size: Option<Spanned<i64>>,
    pub dry_run: Option<Spanned<bool>>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<RawMatch>>,
    pub target: Spanned<String>,
    pub mode: Option<Spanned<String>>,
    pub percent: Option<Spanned<i64>>,
    pub sticky: Option<Spanned<String>>,
    pub fallback: Option<Spanned<bool>>,
    pub breaker: Option<Spanned<RawBreaker>>,
    pub shadow: Option<Spanned<RawRouteShadow>>,
    pub demote: Option<Spanned<RawDemote>>,
    /// The stage of `[plan]` this route belongs to (e.g. "february"): `strangler plan`, the
    /// admin API's `/plan` and the dashboard report the migration's progress per stage.
    pub stage: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemote {
    pub max_error_percent: Option<Spanned<i64>>,
    pub max_mismatch_percent: Option<Spanned<i64>>,
    pub window_secs: Option<Spanned<i64>>,
    pub min_requests: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteShadow {
    pub writes: Option<Spanned<String>>,
    pub reverse: Option<bool>,
    pub ignore: Option<Vec<Spanned<String>>>,
    pub types: Option<BTreeMap<String, Spanned<String>>>,
    pub sort: Option<Vec<Spanned<String>>>,
    pub headers: Option<Vec<Spanned<String>>>,
    pub noise_sample_percent: Option<Spanned<i64>>,
    pub sample_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub max_in_flight: Option<Spanned<i64>>,
    pub timeout_ms: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub store_dir: Option<Spanned<String>>,
    pub store_max_bytes: Option<Spanned<i64>>,
    pub store: Option<Spanned<String>>,
    pub database_url_env: Option<Spanned<String>>,
    pub store_max_rows: Option<Spanned<i64>>,
    pub proxy_id: Option<Spanned<String>>,
    pub dry_run_secret_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub host: Option<Spanned<String>>,
    pub headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub graphql_fields: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<Spanned<i64>>,
    pub cooldown_secs: Option<Spanned<i64>>,
}
