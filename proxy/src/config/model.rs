//! The compiled, validated configuration: what the proxy actually serves.
//!
//! A [`RouteTable`] is built once by [`RouteTable::compile`] and then only read. Reloading builds
//! a new one and swaps it in whole; requests in flight keep an `Arc` to the table they started
//! with.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::routing::Matcher;

/// A route's unique name; it appears in metrics, logs and reports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteName(pub Arc<str>);

/// An upstream's name, the key of `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamName(pub Arc<str>);

macro_rules! name_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }
    };
}
name_impls!(RouteName);
name_impls!(UpstreamName);

/// Where a route is in its migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Everything goes to the monolith.
    Legacy,
    /// The monolith answers; a copy goes to the extracted service (until the shadow engine
    /// lands, this routes like `Legacy`).
    Shadow,
    /// A sticky share of users goes to the extracted service.
    Canary,
    /// Everything goes to the extracted service, idempotent requests fall back to the monolith.
    Extracted,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "legacy" => Mode::Legacy,
            "shadow" => Mode::Shadow,
            "canary" => Mode::Canary,
            "extracted" => Mode::Extracted,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Shadow => "shadow",
            Mode::Canary => "canary",
            Mode::Extracted => "extracted",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A canary share, 0..=100, checked at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Percent(u8);

impl Percent {
    pub fn try_new(v: i64) -> Option<Percent> {
        (0..=100).contains(&v).then_some(Percent(v as u8))
    }
    pub fn get(self) -> u8 {
        self.0
    }
}

/// What identifies "the same user" for canary stickiness.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StickyKey {
    /// The `sub` claim of a bearer JWT (decoded, not verified: it only picks a bucket), else the
    /// client address.
    JwtSub,
    /// The client's address.
    ClientIp,
    /// A request header's value, else the client address.
    Header(HeaderName),
    /// A cookie's value, else the client address.
    Cookie(String),
}

impl StickyKey {
    pub fn parse(s: &str) -> Option<StickyKey> {
        Some(match s {
            "jwt_sub" => StickyKey::JwtSub,
            "client_ip" => StickyKey::ClientIp,
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    StickyKey::Header(HeaderName::from_bytes(h.as_bytes()).ok()?)
                } else if let Some(c) = s.strip_prefix("cookie:") {
                    if c.is_empty() {
                        return None;
                    }
                    StickyKey::Cookie(c.to_string())
                } else {
                    return None;
                }
            }
        })
    }
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::JwtSub => f.write_str("jwt_sub"),
            StickyKey::ClientIp => f.write_str("client_ip"),
            StickyKey::Header(h) => write!(f, "header:{h}"),
            StickyKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// When to stop trying a dead extracted service, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerSettings {
    /// Consecutive failures (refused connection, 502/503/504) that open the breaker.
    pub failures: u32,
    /// How long an open breaker sends everything to the fallback before one probe is let through.
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings { failures: 5, cooldown: Duration::from_secs(10) }
    }
}

/// How a route's path is matched. Prefixes are segment-aware: `/auth` matches `/auth`,
/// `/auth/` and `/auth/login`, never `/authors`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    /// Normalised segments of the prefix; empty for `/`.
    Prefix(Vec<String>),
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(p) => write!(f, "path = {p}"),
            PathMatch::Prefix(segs) => write!(f, "path_prefix = /{}", segs.join("/")),
        }
    }
}

/// Host to match: exact, or `*.example.com` for any subdomain. Lowercase, without port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Exact(String),
    Suffix(String),
}

impl HostMatch {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
    /// Whether every host this matches is also matched by `self` (used to find dead routes).
    pub fn covers(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (a, b) if a == b => true,
            (HostMatch::Suffix(s), HostMatch::Exact(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (HostMatch::Suffix(s), HostMatch::Suffix(t)) => t.ends_with(s.as_str()),
            _ => false,
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// The conditions of one route. All given conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    pub host: Option<HostMatch>,
    /// Header name and the exact value it must have.
    pub headers: Vec<(HeaderName, String)>,
    /// GraphQL root fields this route claims on its (exact) path, sorted; empty for a route
    /// that is not GraphQL-aware. Such routes are chosen by the operation, not by the matcher.
    pub graphql_fields: Vec<String>,
}

impl RouteMatch {
    /// Whether every request `other` matches (on methods, host and headers) is matched by
    /// `self` too. Paths are compared by the caller. GraphQL routes are chosen by their fields,
    /// so none covers another route or is covered by one.
    pub fn conditions_cover(&self, other: &RouteMatch) -> bool {
        if !self.graphql_fields.is_empty() || !other.graphql_fields.is_empty() {
            return false;
        }
        let methods = match (&self.methods, &other.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|m| mine.contains(m)),
        };
        let host = match (&self.host, &other.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        let headers = self.headers.iter().all(|h| other.headers.contains(h));
        methods && host && headers
    }
}

impl fmt::Display for RouteMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(methods) = &self.methods {
            let m: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            write!(f, ", methods = {}", m.join("|"))?;
        }
        if let Some(host) = &self.host {
            write!(f, ", host = {host}")?;
        }
        for (name, value) in &self.headers {
            write!(f, ", {name}: {value}")?;
        }
        if !self.graphql_fields.is_empty() {
            write!(f, ", graphql_fields = {}", self.graphql_fields.join("|"))?;
        }
        Ok(())
    }
}

/// One route, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: RouteName,
    /// Line of `[[routes]]` in the file, for messages.
    pub line: usize,
    pub matcher: RouteMatch,
    /// The extracted service.
    pub target: UpstreamName,
    pub mode: Mode,
    pub percent: Percent,
    pub sticky: StickyKey,
    /// Whether idempotent requests fall back to the monolith when the service is down
    /// (`extracted` mode).
    pub fallback: bool,
    pub breaker: BreakerSettings,
    pub shadow: RouteShadow,
    /// Automatic demotion of a canary (see `demote.rs`); `None` when not configured.
    pub demote: Option<DemoteSettings>,
    /// The stage of the migration plan this route belongs to (a name declared in `[plan]`).
    pub stage: Option<Arc<str>>,
}

/// One stage of the migration plan (`[plan] stages`): a month, and the services it moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: Arc<str>,
    /// Upstream names of the services this stage moves out of the monolith; a service may have
    /// no upstream yet (a later month's).
    pub services: Vec<String>,
}

/// Limits past which a canary is demoted to shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DemoteSettings {
    pub max_error_percent: u8,
    pub max_mismatch_percent: u8,
    pub window: Duration,
    pub min_requests: u64,
}

/// Whether unsafe methods are copied to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Writes {
    /// Only safe methods (GET, HEAD, OPTIONS) are shadowed.
    Skip,
    /// Unsafe methods are shadowed with the dry-run header; the service rolls them back.
    DryRun,
}

/// How a route's traffic is shadowed and compared.
#[derive(Debug, Clone)]
pub struct RouteShadow {
    pub writes: Writes,
    /// `extracted` mode: copy requests to the monolith and compare (until it is switched off).
    pub reverse: bool,
    pub rules: crate::shadow::Rules,
    /// Share of shadowed requests for which the monolith is asked twice to learn noise.
    pub noise_sample_percent: u8,
    /// Share of the route's requests that are copied at all (by request id, uniformly).
    pub sample_percent: u8,
    /// The rule patterns as written, for diffs and the admin API.
    pub rules_text: Vec<String>,
}

impl Default for RouteShadow {
    fn default() -> Self {
        RouteShadow {
            writes: Writes::Skip,
            reverse: false,
            rules: Default::default(),
            noise_sample_percent: 10,
            sample_percent: 100,
            rules_text: Vec::new(),
        }
    }
}

impl PartialEq for RouteShadow {
    fn eq(&self, o: &Self) -> bool {
        (self.writes, self.reverse, self.noise_sample_percent, self.sample_percent, &self.rules_text)
            == (o.writes, o.reverse, o.noise_sample_percent, o.sample_percent, &o.rules_text)
    }
}
impl Eq for RouteShadow {}

/// Where comparison records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// JSONL files in `store_dir`, one folder per proxy.
    Jsonl,
    /// The `strangler.shadow_comparisons` table, shared by several proxies.
    Postgres,
}

impl StoreKind {
    pub fn parse(s: &str) -> Option<StoreKind> {
        match s {
            "jsonl" => Some(StoreKind::Jsonl),
            "postgres" => Some(StoreKind::Postgres),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Jsonl => "jsonl",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// The variable that holds the dry-run secret unless `[shadow] dry_run_secret_env` names another.
pub const DEFAULT_DRY_RUN_SECRET_ENV: &str = "STRANGLER_DRY_RUN_SECRET";

/// Process-wide shadow limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowSettings {
    /// Shadow requests in flight at once; more are dropped and counted, never queued.
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// Larger request or response bodies are not shadowed (counted as `too_large`).
    pub max_body_bytes: usize,
    pub store: StoreKind,
    /// Where comparison records go (JSONL, rotated), relative to the config file.
    pub store_dir: String,
    pub store_max_bytes: u64,
    /// `postgres`: the environment variable holding the database URL (never the URL itself).
    pub database_url_env: Option<String>,
    /// `postgres`: the table is trimmed to this many rows (the newest are kept).
    pub store_max_rows: u64,
    /// `postgres`: this proxy's name in the `proxy` column (default: the host name).
    pub proxy_id: Option<String>,
    /// The environment variable holding the secret that signs dry-run copies (shared with the
    /// services, which verify it).
    pub dry_run_secret_env: String,
}

impl Default for ShadowSettings {
    fn default() -> Self {
        ShadowSettings {
            max_in_flight: 64,
            timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            store: StoreKind::Jsonl,
            store_dir: "shadow-store".into(),
            store_max_bytes: 64 << 20,
            database_url_env: None,
            store_max_rows: 1_000_000,
            proxy_id: None,
            dry_run_secret_env: DEFAULT_DRY_RUN_SECRET_ENV.into(),
        }
    }
}

/// A backend the proxy forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: UpstreamName,
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Filled from the host when it is an IP literal; otherwise by [`RouteTable::resolve`].
    pub addr: Option<SocketAddr>,
    pub health: Option<String>,
    pub health_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle keep-alive connections kept for this upstream. Pingora's pool is shared and
    /// LRU-evicted, so the proxy sizes it as the sum over all upstreams.
    pub pool_size: usize,
    /// The upstream runs requests marked as dry runs in a rolled-back transaction (services on
    /// bm-common). Only such upstreams are sent dry-run copies of writes.
    pub dry_run: bool,
    /// `https` upstreams: a PEM file of the CA certificates this upstream's certificate is
    /// checked against, instead of the system's store (relative to the config file).
    pub ca_file: Option<String>,
    /// The certificates of `ca_file`, loaded by [`RouteTable::resolve`].
    pub ca: Option<TrustedCa>,
}

/// CA certificates loaded from an upstream's `ca_file`: in the form Pingora's connector takes,
/// and as DER (with its SHA-256) for the proxy's own clients (shadow copies, health checks).
#[derive(Clone)]
pub struct TrustedCa {
    pub certs: Arc<pingora::protocols::tls::CaType>,
    pub der: Arc<Vec<Vec<u8>>>,
    /// SHA-256 of the certificates, hex: tells two loads of the same file apart from a changed one
    pub digest: String,
}

impl TrustedCa {
    pub fn new(certs: Vec<pingora::tls::x509::X509>) -> Result<TrustedCa, String> {
        use sha2::{Digest, Sha256};
        let der = certs.iter().map(|c| c.to_der().map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
        let mut h = Sha256::new();
        der.iter().for_each(|d| h.update(d));
        let digest = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(TrustedCa { certs: Arc::new(certs.into_boxed_slice()), der: Arc::new(der), digest })
    }
}

impl fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedCa({} certificates, {})", self.der.len(), &self.digest[..12])
    }
}

impl PartialEq for TrustedCa {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}
impl Eq for TrustedCa {}

/// A client-facing listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Certificate and key paths (PEM), resolved against the config file's folder.
    pub tls: Option<(String, String)>,
}

/// The admin API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub addr: SocketAddr,
    /// Environment variable that holds the admin bearer token.
    pub token_env: Option<String>,
}

/// Process-wide settings: changing them needs a restart, not a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub listeners: Vec<Listener>,
    pub shadow: ShadowSettings,
    /// Accept HTTP/2 with prior knowledge on plain listeners (TLS listeners offer h2 by ALPN).
    pub h2c: bool,
    /// What an encoded slash (`%2F`) in a request path does (see `routing::path`).
    pub encoded_slash: crate::routing::EncodedSlash,
    pub admin: AdminSettings,
}

/// What the proxy does with an operation whose root fields belong to different owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MixedOperations {
    /// It goes to the default upstream (the monolith still serves every field).
    #[default]
    Legacy,
    /// It is refused with a GraphQL error naming the owners (once the monolith no longer does).
    Reject,
}

impl MixedOperations {
    pub fn parse(s: &str) -> Option<MixedOperations> {
        match s {
            "legacy" => Some(MixedOperations::Legacy),
            "reject" => Some(MixedOperations::Reject),
            _ => None,
        }
    }
}

/// How GraphQL operations are read at the edge (`[graphql]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphQlSettings {
    /// The SDL routes are checked against (`schema = "…"`, relative to the file), when given.
    pub schema_file: Option<String>,
    pub schema: Option<crate::graphql::Schema>,
    /// Larger POST bodies are not read (their operation goes to the default upstream). At most
    /// 64 KiB: the body is held to be sent on after reading.
    pub max_body_bytes: usize,
    pub limits: crate::graphql::Limits,
    pub mixed: MixedOperations,
}

impl Default for GraphQlSettings {
    fn default() -> Self {
        GraphQlSettings {
            schema_file: None,
            schema: None,
            max_body_bytes: 64 * 1024,
            limits: Default::default(),
            mixed: MixedOperations::Legacy,
        }
    }
}

/// The GraphQL routes of one path: who claims which root field, and where a WebSocket goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphQlPath {
    /// Root field → index of the route claiming it (into `RouteTable::routes`).
    pub claims: std::collections::HashMap<String, usize>,
    /// The route whose fields include the schema's subscription fields: WebSocket upgrades on
    /// this path go there (without a schema, to the default upstream).
    pub websocket: Option<usize>,
}

/// The whole compiled configuration.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub server: ServerSettings,
    pub upstreams: BTreeMap<UpstreamName, Arc<Upstream>>,
    pub default_upstream: UpstreamName,
    /// In file order.
    pub routes: Vec<Arc<Route>>,
    pub(crate) matcher: Matcher,
    pub graphql: GraphQlSettings,
    /// Normalised path → its GraphQL routes.
    pub graphql_paths: BTreeMap<String, GraphQlPath>,
    /// SHA-256 of the file's bytes, hex: tells which version is being served.
    pub hash: String,
    /// The migration plan's stages, in order (empty without `[plan]`).
    pub plan: Vec<Stage>,
}

impl RouteTable {
    pub fn upstream(&self, name: &UpstreamName) -> &Arc<Upstream> {
        // compile() guarantees every name a route or the default points at exists.
        &self.upstreams[name]
    }

    pub fn default_upstream(&self) -> &Arc<Upstream> {
        self.upstream(&self.default_upstream)
    }

    /// The upstreams that receive shadow copies of `route`'s requests, with why: those that
    /// must honour dry runs when the route copies writes.
    pub fn shadow_targets<'a>(&'a self, route: &'a Route) -> Vec<(&'a UpstreamName, &'static str)> {
        let legacy = &self.default_upstream;
        match route.mode {
            Mode::Shadow => vec![(&route.target, "shadow mode copies to the target")],
            Mode::Canary => vec![
                (&route.target, "canary mode copies the monolith's share to the target"),
                (legacy, "canary mode copies the target's share to the default upstream"),
            ],
            Mode::Extracted if route.shadow.reverse => vec![(legacy, "`reverse = true` copies to the default upstream")],
            Mode::Legacy | Mode::Extracted => vec![],
        }
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name.as_str() == name)
    }

    /// Resolves what the file refers to outside itself: upstream host names that are not IP
    /// literals, and `ca_file`s (relative to `base`, the config file's folder). Blocking (DNS,
    /// files): call it from a blocking context.
    pub fn resolve(&mut self, base: &std::path::Path) -> Result<(), String> {
        use std::net::ToSocketAddrs;
        let mut problems = Vec::new();
        for upstream in self.upstreams.values_mut() {
            if let Some(file) = upstream.ca_file.clone() {
                let path = base.join(&file);
                let loaded = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| pingora::tls::x509::X509::stack_from_pem(&pem).map_err(|e| e.to_string()))
                    .and_then(|certs| if certs.is_empty() { Err("no certificate in the file".to_string()) } else { TrustedCa::new(certs) });
                match loaded {
                    Ok(ca) => Arc::make_mut(upstream).ca = Some(ca),
                    Err(e) => problems.push(format!("upstream `{}`: ca_file `{}`: {e}", upstream.name, path.display())),
                }
            }
            if upstream.addr.is_some() {
                continue;
            }
            match (upstream.host.as_str(), upstream.port).to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(a) => Arc::make_mut(upstream).addr = Some(a),
                    None => problems.push(format!("upstream `{}`: `{}` has no address", upstream.name, upstream.host)),
                },
                Err(e) => problems.push(format!("upstream `{}`: cannot resolve `{}`: {e}", upstream.name, upstream.host)),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
