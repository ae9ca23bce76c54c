//! The first stage of configuration: `routes.toml` exactly as written.
//!
//! Every value an error might point at is wrapped in [`Spanned`] so the compile stage can name
//! file, line and column. Numbers are read as `i64` so that a negative `percent` is reported by
//! our own validation (with a hint) rather than as a serde type error. Unknown keys are found
//! before serde runs (see `schema.rs`), so that every typo in a file is reported at once; the
//! `deny_unknown_fields` here is a second line of defence that a unit test keeps in step with
//! the key schema.
//!
//! The same types describe the file as a JSON Schema (`strangler schema`, `json_schema.rs`): the doc
//! comments here are the help an editor shows, and the `#[schemars]` attributes state the values
//! the compile stage accepts (enumerations, ranges, patterns); tests there hold both to the
//! compiler. A new field needs nothing more; a new struct derives `JsonSchema` too.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

pub use super::spanned::Spanned;

/// `routes.toml`: the route table of the strangler edge proxy. Every request goes to the monolith
/// (the default upstream) or to an extracted service, as its route says; `strangler check` validates
/// a file exactly as the running proxy will.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Process settings: the default upstream, worker threads, shutdown. They apply after a restart.
    #[serde(default)]
    pub server: Option<Spanned<RawServer>>,
    /// Where clients connect: any number of addresses (default one plain listener on 127.0.0.1:8080).
    #[serde(default)]
    pub listeners: Vec<Spanned<RawListener>>,
    /// The admin API: /routes, /reload, /metrics, /shadow.
    #[serde(default)]
    pub admin: Option<Spanned<RawAdmin>>,
    /// The backends, by name: the monolith (`legacy` unless `[server] default_upstream` names another) and
    /// each extracted service. Names: letters, digits, `-`, `_` and `.`.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": r"^[A-Za-z0-9._-]{1,64}$" }))]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// The routes. An exact `path` beats every prefix, a longer prefix a shorter one, and among routes on
    /// the same path the first in the file whose conditions hold wins; unmatched requests go to the
    /// default upstream.
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// Process-wide limits of shadow traffic and where comparisons are stored. They apply after a
    /// restart.
    #[serde(default)]
    pub shadow: Option<Spanned<RawShadow>>,
    /// How GraphQL operations are read, so that routes can claim root fields of one endpoint.
    #[serde(default)]
    pub graphql: Option<Spanned<RawGraphQl>>,
    /// The migration plan: its stages (months) in order, each with the services it moves out of
    /// the monolith. Routes name their stage with `stage`; progress is reported per stage.
    #[serde(default)]
    pub plan: Option<Spanned<RawPlan>>,
}

/// `[plan]`: the stages of the migration, in the order they happen.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// The stages in order, e.g. `[{ name = "january", services = ["auth"] }, …]`.
    pub stages: Spanned<Vec<Spanned<RawStage>>>,
}

/// One stage of the plan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// The stage's name, as routes write it in `stage` (1 to 40 letters, digits, spaces, `-`,
    /// `_` or `.`), e.g. "january" or "2027-02 chat".
    pub name: Spanned<String>,
    /// The services this stage moves out of the monolith (their upstream names; they need not
    /// exist yet): a stage whose services have no routes yet is reported as not started.
    pub services: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[graphql]`: how the proxy reads GraphQL operations to route them by root field.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGraphQl {
    /// The schema (SDL), relative to this file: claimed fields are checked against it, and the route
    /// claiming its `Subscription` fields gets the WebSocket upgrades.
    pub schema: Option<Spanned<String>>,
    /// POST bodies up to this size are read to route them; larger ones go to the default upstream.
    /// Default 65536 (the most).
    #[schemars(range(min = 0, max = 65536))]
    pub max_body_bytes: Option<Spanned<i64>>,
    /// Selection-set nesting the parser follows before giving up (the operation then goes to the
    /// default upstream). Default 64.
    #[schemars(range(min = 1, max = 1000))]
    pub max_depth: Option<Spanned<i64>>,
    /// Lexical tokens the parser reads before giving up. Default 15000.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_tokens: Option<Spanned<i64>>,
    /// An operation whose root fields have different owners: `legacy` (default; the default upstream
    /// answers it) or `reject` (a `400` GraphQL error names each field's owner).
    #[schemars(extend("enum" = ["legacy", "reject"]))]
    pub mixed: Option<Spanned<String>>,
}

/// `[server]`: process settings; they apply after a restart, not a reload.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Where requests no route matches go. Default: the upstream named `legacy`.
    pub default_upstream: Option<Spanned<String>>,
    /// Worker threads of the proxy. Default 2.
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<Spanned<i64>>,
    /// On SIGTERM: stop accepting and give requests in flight this long. Default 5.
    #[schemars(range(min = 0, max = 3600))]
    pub grace_period_secs: Option<Spanned<i64>>,
    /// Then this long for the runtime to stop. Default 5.
    #[schemars(range(min = 0, max = 3600))]
    pub shutdown_timeout_secs: Option<Spanned<i64>>,
    /// Accept HTTP/2 with prior knowledge (h2c) on plain listeners. Default false.
    pub h2c: Option<bool>,
    /// An encoded slash (`%2F`, or `%5C` for `\`) in a path: `keep` (default; it stays inside its
    /// segment and is forwarded unchanged) or `reject` (answer `400`).
    #[schemars(extend("enum" = ["keep", "reject"]))]
    pub encoded_slash: Option<Spanned<String>>,
}

/// `[[listeners]]`: one address clients connect to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// IP:PORT, e.g. `0.0.0.0:8080` or `[::]:8443`; port 0 takes any free port (`strangler serve
    /// --bound-addrs-file` tells which).
    pub addr: Spanned<String>,
    /// Serve HTTPS here (h2 and http/1.1 by ALPN) with this certificate.
    pub tls: Option<Spanned<RawTls>>,
}

/// A listener's certificate and key, PEM files relative to this file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The certificate chain (PEM).
    pub cert: Spanned<String>,
    /// The private key (PEM).
    pub key: Spanned<String>,
}

/// `[admin]`: the admin API (/routes, /reload, /metrics, /shadow).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// IP:PORT. Default 127.0.0.1:9901; anywhere but loopback requires `token_env`.
    pub addr: Option<Spanned<String>>,
    /// The environment variable holding the bearer token the admin API then requires.
    pub token_env: Option<Spanned<String>>,
}

/// `[upstreams.NAME]`: a backend, the monolith or an extracted service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://` or `https://`, host and port only: the request's own path is forwarded.
    pub url: Spanned<String>,
    /// Path of an active health check, e.g. `/health` (shown on /routes and as a metric).
    #[schemars(regex(pattern = r"^/"))]
    pub health: Option<Spanned<String>>,
    /// Seconds between health checks. Default 5.
    #[schemars(range(min = 1, max = 3600))]
    pub health_interval_secs: Option<Spanned<i64>>,
    /// Default 2000.
    #[schemars(range(min = 1, max = 3600000))]
    pub connect_timeout_ms: Option<Spanned<i64>>,
    /// Default 60000.
    #[schemars(range(min = 1, max = 3600000))]
    pub read_timeout_ms: Option<Spanned<i64>>,
    /// Default 60000.
    #[schemars(range(min = 1, max = 3600000))]
    pub write_timeout_ms: Option<Spanned<i64>>,
    /// Pooled connections idle longer are closed. Keep it below the upstream's own keep-alive timeout
    /// (Node: 5 s), or a request can meet a connection the upstream is closing. Default 4.
    #[schemars(range(min = 1, max = 3600))]
    pub idle_timeout_secs: Option<Spanned<i64>>,
    /// Idle keep-alive connections kept. Default 128.
    #[schemars(range(min = 0, max = 100000))]
    pub pool_size: Option<Spanned<i64>>,
    /// It rolls back requests marked as dry runs (services built on extracted/common do): only such
    /// upstreams receive shadow copies of writes (`writes = "dry-run"`). Default false.
    pub dry_run: Option<Spanned<bool>>,
    /// https: trust only the CAs in this PEM file (relative to this file), not the system's.
    pub ca_file: Option<Spanned<String>>,
}

/// `[[routes]]`: which requests a route claims, where they go, and how far their migration is.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// a canary without its share is refused by the compiler too
#[schemars(extend("if" = { "properties": { "mode": { "const": "canary" } }, "required": ["mode"] }, "then" = { "required": ["percent"] }))]
pub struct RawRoute {
    /// Unique; letters, digits, `-`, `_` and `.`, at most 64. Appears in metrics, reports and logs.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub name: Spanned<String>,
    /// Which requests: `path` (exact) or `path_prefix`, and optionally `methods`, `host`, `headers`; or
    /// `graphql_fields` on an exact `path`. Without `match`, every path.
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<RawMatch>>,
    /// The upstream of the extracted service.
    pub target: Spanned<String>,
    /// `legacy` (default; the default upstream answers) → `shadow` (the monolith answers, a copy goes to
    /// `target` and the answers are compared) → `canary` (`percent`% of users go to `target`) →
    /// `extracted` (everything goes to `target`).
    #[schemars(extend("enum" = ["legacy", "shadow", "canary", "extracted"]))]
    pub mode: Option<Spanned<String>>,
    /// `canary`: the share of users sent to `target`, sticky per user (required in canary mode).
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<Spanned<i64>>,
    /// `canary`: what makes requests one user's: `jwt_sub` (default; the bearer JWT's `sub`, else the
    /// client address), `client_ip`, `header:NAME` or `cookie:NAME`.
    #[schemars(regex(pattern = r"^(jwt_sub|client_ip|header:.+|cookie:.+)$"))]
    pub sticky: Option<Spanned<String>>,
    /// `extracted` and the service's share of `canary`: a request goes to the monolith instead when the
    /// service cannot have seen it or may safely be asked again. Default true.
    pub fallback: Option<Spanned<bool>>,
    /// When to stop trying a failing service, and for how long.
    pub breaker: Option<Spanned<RawBreaker>>,
    /// How the route's traffic is copied and compared.
    pub shadow: Option<Spanned<RawRouteShadow>>,
    /// `canary`: demote the route to `shadow` at run time when the service's errors or mismatches
    /// exceed these limits.
    pub demote: Option<Spanned<RawDemote>>,
    /// The stage of `[plan]` this route belongs to (e.g. "february"): `strangler plan`, the
    /// admin API's `/plan` and the dashboard report the migration's progress per stage.
    pub stage: Option<Spanned<String>>,
}

/// `demote`: limits past which a canary is demoted to shadow (until the file is reloaded).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDemote {
    /// The service's 5xx share over the window that demotes. Default 5.
    #[schemars(range(min = 0, max = 100))]
    pub max_error_percent: Option<Spanned<i64>>,
    /// The share of compared answers that differ that demotes. Default 5.
    #[schemars(range(min = 0, max = 100))]
    pub max_mismatch_percent: Option<Spanned<i64>>,
    /// The window the shares are measured over. Default 60.
    #[schemars(range(min = 1, max = 86400))]
    pub window_secs: Option<Spanned<i64>>,
    /// Requests in the window before anything is demoted. Default 20.
    #[schemars(range(min = 1, max = 1000000))]
    pub min_requests: Option<Spanned<i64>>,
}

/// A route's `shadow`: what is copied, and how answers are compared.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouteShadow {
    /// `skip` (default: unsafe methods are not copied) or `dry-run` (copied with a signed dry-run
    /// header, and only to upstreams that declare `dry_run = true`).
    #[schemars(extend("enum" = ["skip", "dry-run"]))]
    pub writes: Option<Spanned<String>>,
    /// `extracted`: copy requests to the monolith and compare, until it is switched off. Default false.
    pub reverse: Option<bool>,
    /// JSON paths never compared (still shown), e.g. `$.accessToken`, `$.items[*].createdAt`.
    pub ignore: Option<Vec<Spanned<String>>>,
    /// JSON paths whose values only need the given type: `string`, `number`, `integer`, `boolean`,
    /// `null`, `array`, `object`, `rfc3339`, `uuid` or `present`.
    #[schemars(extend("additionalProperties" = { "type": "string", "enum": ["string", "number", "integer", "boolean", "null", "array", "object", "rfc3339", "uuid", "present"] }))]
    pub types: Option<BTreeMap<String, Spanned<String>>>,
    /// Arrays sorted before they are compared: `$.items` by value, `$.items:id` by a field.
    pub sort: Option<Vec<Spanned<String>>>,
    /// Response headers compared too, beyond the default set.
    pub headers: Option<Vec<Spanned<String>>>,
    /// Share of requests sent to the monolith twice, to learn which fields are noise. Default 10.
    #[schemars(range(min = 0, max = 100))]
    pub noise_sample_percent: Option<Spanned<i64>>,
    /// Share of the route's requests copied at all, drawn per request. Default 100.
    #[schemars(range(min = 0, max = 100))]
    pub sample_percent: Option<Spanned<i64>>,
}

/// `[shadow]`: process-wide shadow limits and where comparisons are stored; changes apply after a
/// restart.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// the Postgres store is refused without the variable that holds its URL
#[schemars(extend("if" = { "properties": { "store": { "const": "postgres" } }, "required": ["store"] }, "then" = { "required": ["database_url_env"] }))]
pub struct RawShadow {
    /// Shadow copies in flight at once; more are dropped and counted. Default 64.
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight: Option<Spanned<i64>>,
    /// A shadow copy slower than this counts as a timeout. Default 5000.
    #[schemars(range(min = 1, max = 600000))]
    pub timeout_ms: Option<Spanned<i64>>,
    /// Larger request or answer bodies are not compared (counted as too_large). Default 1048576.
    #[schemars(range(min = 0, max = 268435456))]
    pub max_body_bytes: Option<Spanned<i64>>,
    /// `jsonl`: the store's folder, relative to this file. Default `shadow-store`.
    pub store_dir: Option<Spanned<String>>,
    /// `jsonl`: the store rotates at this size. Default 67108864.
    #[schemars(range(min = 65536, max = 1_099_511_627_776_i64))]
    pub store_max_bytes: Option<Spanned<i64>>,
    /// Where comparisons go: `jsonl` (default; files in `store_dir`) or `postgres` (one table for
    /// several proxies; needs `database_url_env`).
    #[schemars(extend("enum" = ["jsonl", "postgres"]))]
    pub store: Option<Spanned<String>>,
    /// `postgres`: the environment variable holding the database URL (the file never holds the URL or
    /// its password).
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub database_url_env: Option<Spanned<String>>,
    /// `postgres`: rows kept, newest first. Default 1000000.
    #[schemars(range(min = 1000, max = 1000000000))]
    pub store_max_rows: Option<Spanned<i64>>,
    /// `postgres`: this proxy's `proxy` column, 1 to 100 printable characters. Default: the host name.
    pub proxy_id: Option<Spanned<String>>,
    /// The environment variable holding the secret that signs dry-run headers. Default
    /// `STRANGLER_DRY_RUN_SECRET`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub dry_run_secret_env: Option<Spanned<String>>,
}

/// A route's `match`: every condition given must hold.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// An exact path, e.g. `/auth/me`, compared after normalisation (`/api//x/./y` is `/api/x/y`). Not
    /// with `path_prefix`.
    #[schemars(regex(pattern = r"^/[^?# ]*$"))]
    pub path: Option<Spanned<String>>,
    /// A prefix by segments: `/auth` matches `/auth`, `/auth/` and `/auth/login`, never `/authors`.
    #[schemars(regex(pattern = r"^/[^?# ]*$"))]
    pub path_prefix: Option<Spanned<String>>,
    /// HTTP methods, e.g. `["GET", "POST"]`.
    #[schemars(inner(regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")))]
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// The request's host, exact or `*.example.com`; the port is ignored.
    pub host: Option<Spanned<String>>,
    /// Request headers and the exact values they must have.
    pub headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// GraphQL root fields this route claims on its exact `path` (no other conditions). An operation
    /// whose root fields all belong to one route goes there; `__typename` does not count.
    #[schemars(length(min = 1), inner(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")))]
    pub graphql_fields: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A route's circuit breaker: when to stop trying a failing service, and for how long.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive failures (refused connection, 502/503/504) that open the breaker. Default 5.
    #[schemars(range(min = 1, max = 10000))]
    pub failures: Option<Spanned<i64>>,
    /// How long an open breaker sends requests to the monolith before one probe. Default 10.
    #[schemars(range(min = 1, max = 3600))]
    pub cooldown_secs: Option<Spanned<i64>>,
}
