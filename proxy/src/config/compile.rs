//! The second stage: [`RawConfig`] → [`RouteTable`], running every check before returning.
//!
//! Pure: no file system, no DNS, no clock. `strangler check`, startup and every reload call
//! [`RouteTable::compile`], so what `check` accepts is exactly what the proxy will serve.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::de::DeTable;

use super::error::{ConfigError, ConfigErrorKind as K, ConfigErrors, ConfigWarning, Source};
use super::model::*;
use super::raw::*;
use super::schema;
use crate::routing::{normalize_path, prefix_segments, Matcher};

/// A table that passed every check, with what looked suspicious.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub table: RouteTable,
    pub warnings: Vec<ConfigWarning>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

impl RouteTable {
    /// Parses and validates a whole `routes.toml`, reporting every problem at once. A file that
    /// names another file (`[graphql] schema`) cannot be compiled this way: see
    /// [`RouteTable::compile_with`].
    pub fn compile(source: Source<'_>) -> Result<Compiled, ConfigErrors> {
        Self::compile_with(source, &|name| Err(format!("`{name}` is not read when compiling from text alone")))
    }

    /// [`RouteTable::compile`], reading the files the configuration names (the GraphQL schema)
    /// through `files` (the caller resolves the name; the proxy and `strangler check` read it
    /// relative to the configuration file). Still pure as far as this function goes.
    pub fn compile_with(source: Source<'_>, files: &dyn Fn(&str) -> Result<String, String>) -> Result<Compiled, ConfigErrors> {
        let mut cx = Cx { src: source, errors: Vec::new(), warnings: Vec::new(), files };
        let mut doc = match DeTable::parse(source.text) {
            Ok(doc) => doc,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                return Err(ConfigErrors(vec![source.error(span, K::Syntax(e.message().to_string()))]));
            }
        };
        for unknown in schema::prune_unknown_keys(doc.get_mut(), &schema::ROOT, "") {
            let suggestion = schema::suggest(&unknown.key, &unknown.allowed).map(str::to_string);
            cx.push(
                unknown.span,
                K::UnknownKey {
                    key: unknown.key,
                    section: if unknown.section.is_empty() { "the top level".into() } else { unknown.section },
                    suggestion,
                    allowed: unknown.allowed.iter().map(|s| s.to_string()).collect(),
                },
            );
        }
        let raw = match RawConfig::deserialize(toml::de::Deserializer::from(doc)) {
            Ok(raw) => raw,
            Err(e) => {
                cx.push(e.span().unwrap_or(0..0), K::Type(e.message().trim_end_matches('\n').to_string()));
                return Err(cx.into_errors());
            }
        };
        let table = cx.build(raw);
        if cx.errors.is_empty() {
            let table = table.expect("a table is built when there are no errors");
            Ok(Compiled { table, warnings: cx.warnings })
        } else {
            Err(cx.into_errors())
        }
    }
}

struct Cx<'a> {
    src: Source<'a>,
    files: &'a dyn Fn(&str) -> Result<String, String>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl<'a> Cx<'a> {
    fn push(&mut self, span: std::ops::Range<usize>, kind: K) {
        self.errors.push(self.src.error(span, kind));
    }

    fn warn(&mut self, span: std::ops::Range<usize>, message: String) {
        self.warnings.push(ConfigWarning { at: self.src.locate(span.start), message });
    }

    fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|a| (a.at.line, a.at.column));
        ConfigErrors(self.errors)
    }

    /// A number that must lie in `range`, or the default.
    fn number(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &'static str,
        range: std::ops::RangeInclusive<i64>,
        expected: &'static str,
        default: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.push(v.span(), K::OutOfRange { key, got: *v.get_ref(), expected });
                default
            }
        }
    }

    fn build(&mut self, raw: RawConfig) -> Option<RouteTable> {
        let server = self.server(&raw);
        let upstreams = self.upstreams(&raw);
        // Names defined in the file, valid or not: a route pointing at a broken upstream gets
        // that upstream's error, not a misleading "unknown upstream".
        let known: Vec<String> = raw.upstreams.keys().cloned().collect();

        let default_upstream = match raw.server.as_ref().and_then(|s| s.get_ref().default_upstream.as_ref()) {
            Some(name) => {
                if !known.contains(name.get_ref()) {
                    self.push(name.span(), K::UnknownDefaultUpstream { name: name.get_ref().clone(), known: known.clone() });
                }
                UpstreamName::from(name.get_ref().as_str())
            }
            None if upstreams.contains_key(&UpstreamName::from("legacy")) => UpstreamName::from("legacy"),
            None => {
                self.push(0..0, K::NoDefaultUpstream);
                UpstreamName::from("legacy")
            }
        };

        let plan = self.plan(&raw);
        let mut routes = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for raw_route in &raw.routes {
            let line = self.src.locate(raw_route.span().start).line;
            let r = raw_route.get_ref();
            let name = r.name.get_ref();
            if let Some(first_line) = seen.get(name) {
                self.push(r.name.span(), K::DuplicateRoute { name: name.clone(), first_line: *first_line });
            } else {
                seen.insert(name.clone(), line);
            }
            if !valid_name(name) {
                self.push(r.name.span(), K::BadRouteName(name.clone()));
            }
            if let Some(route) = self.route(r, line, &known, &plan) {
                routes.push((Arc::new(route), raw_route.span()));
            }
        }

        // Dead routes: an earlier route on the same path whose conditions cover this one.
        for (i, (route, span)) in routes.iter().enumerate() {
            if let Some((by, _)) = routes[..i]
                .iter()
                .find(|(earlier, _)| earlier.matcher.path == route.matcher.path && earlier.matcher.conditions_cover(&route.matcher))
            {
                let kind = K::Unreachable { route: route.name.to_string(), by: by.name.to_string(), by_line: by.line };
                self.push(span.clone(), kind);
            }
        }

        // GraphQL claims, checked on the routes that compiled (so their errors come with the rest)
        let spans: Vec<_> = routes.iter().map(|(_, span)| span.clone()).collect();
        let routes: Vec<Arc<Route>> = routes.into_iter().map(|(r, _)| r).collect();
        let graphql = self.graphql_settings(&raw);
        let graphql_paths = self.graphql_paths(&routes, &raw, &graphql);

        let server = server?;
        if !self.errors.is_empty() {
            return None;
        }
        let matcher = Matcher::new(&routes);
        let table = RouteTable {
            server,
            upstreams,
            default_upstream,
            routes,
            matcher,
            graphql,
            graphql_paths,
            hash: content_hash(self.src.text.as_bytes()),
            plan,
        };
        // Dry-run copies of writes go only to upstreams that roll them back.
        for ((route, span), raw_route) in table.routes.iter().zip(spans).zip(&raw.routes) {
            if route.shadow.writes != Writes::DryRun {
                continue;
            }
            let at = raw_route.get_ref().shadow.as_ref().and_then(|s| s.get_ref().writes.as_ref()).map_or(span, |w| w.span());
            for (upstream, why) in table.shadow_targets(route) {
                if !table.upstream(upstream).dry_run {
                    let kind = K::DryRunUnsupported { route: route.name.to_string(), upstream: upstream.to_string(), why };
                    self.push(at.clone(), kind);
                }
            }
        }
        self.errors.is_empty().then_some(table)
    }

    fn server(&mut self, raw: &RawConfig) -> Option<ServerSettings> {
        let default = RawServer::default();
        let s = raw.server.as_ref().map(|s| s.get_ref()).unwrap_or(&default);
        let threads = self.number(&s.threads, "threads", 1..=256, "1..=256", 2) as usize;
        let grace = self.number(&s.grace_period_secs, "grace_period_secs", 0..=3600, "0..=3600 seconds", 5);
        let shutdown = self.number(&s.shutdown_timeout_secs, "shutdown_timeout_secs", 0..=3600, "0..=3600 seconds", 5);

        let mut listeners = Vec::new();
        let mut addrs_seen = Vec::new();
        for l in &raw.listeners {
            let l = l.get_ref();
            let Some(addr) = self.socket_addr(&l.addr, "listener address") else { continue };
            // port 0 asks for any free port: two such listeners get two ports
            if addr.port() != 0 && addrs_seen.contains(&addr) {
                self.push(l.addr.span(), K::DuplicateListener(l.addr.get_ref().clone()));
            }
            addrs_seen.push(addr);
            let tls = l.tls.as_ref().map(|t| (t.get_ref().cert.get_ref().clone(), t.get_ref().key.get_ref().clone()));
            listeners.push(Listener { addr, tls });
        }
        if raw.listeners.is_empty() {
            listeners.push(Listener { addr: DEFAULT_LISTEN.parse().expect("valid default"), tls: None });
        }

        let admin = match &raw.admin {
            None => AdminSettings { addr: DEFAULT_ADMIN.parse().expect("valid default"), token_env: None },
            Some(a) => {
                let a = a.get_ref();
                let addr = match &a.addr {
                    None => Some(DEFAULT_ADMIN.parse().expect("valid default")),
                    Some(addr) => self.socket_addr(addr, "admin address"),
                };
                let token_env = a.token_env.as_ref().map(|t| t.get_ref().clone());
                match (addr, &a.addr) {
                    (Some(addr), Some(raw_addr)) if !addr.ip().is_loopback() && token_env.is_none() => {
                        self.push(raw_addr.span(), K::AdminNeedsToken(raw_addr.get_ref().clone()));
                        return None;
                    }
                    (Some(addr), _) => AdminSettings { addr, token_env },
                    (None, _) => return None,
                }
            }
        };
        let shadow = self.shadow_settings(raw);
        Some(ServerSettings {
            shadow,
            threads,
            grace_period: Duration::from_secs(grace as u64),
            shutdown_timeout: Duration::from_secs(shutdown as u64),
            listeners,
            h2c: s.h2c.unwrap_or(false),
            encoded_slash: match &s.encoded_slash {
                None => crate::routing::EncodedSlash::default(),
                Some(v) => crate::routing::EncodedSlash::parse(v.get_ref()).unwrap_or_else(|| {
                    let reason = "expected `keep` (an encoded slash stays inside its segment) or `reject` (answer 400)".into();
                    self.push(v.span(), K::BadValue { what: "encoded_slash", value: v.get_ref().clone(), reason });
                    Default::default()
                }),
            },
            admin,
        })
    }

    fn shadow_settings(&mut self, raw: &RawConfig) -> ShadowSettings {
        let d = ShadowSettings::default();
        let Some(s) = raw.shadow.as_ref().map(|s| s.get_ref()) else { return d };
        let store = match &s.store {
            None => d.store,
            Some(v) => StoreKind::parse(v.get_ref()).unwrap_or_else(|| {
                let reason = "expected `jsonl` (files in store_dir) or `postgres` (one table for several proxies)".into();
                self.push(v.span(), K::BadValue { what: "shadow store", value: v.get_ref().clone(), reason });
                d.store
            }),
        };
        let database_url_env = s.database_url_env.as_ref().and_then(|v| {
            let name = v.get_ref();
            if valid_env_name(name) {
                return Some(name.clone());
            }
            if let Some((scheme, _)) = name.split_once("://") {
                // A URL where a variable name belongs: it may carry a password, so neither the
                // message nor the quoted line repeats it.
                let masked: String = format!("{scheme}://{}", "*".repeat(name.chars().count() - scheme.chars().count() - 3));
                let reason =
                    "this names the environment variable that holds the URL; keep the URL (and its password) out of the file".into();
                let mut e = self.src.error(v.span(), K::BadValue { what: "database_url_env", value: masked.clone(), reason });
                e.snippet = e.snippet.replace(name.as_str(), &masked);
                self.errors.push(e);
            } else {
                let reason = "expected an environment variable name such as STRANGLER_SHADOW_DATABASE_URL".into();
                self.push(v.span(), K::BadValue { what: "database_url_env", value: name.clone(), reason });
            }
            None
        });
        if let (StoreKind::Postgres, None, Some(v)) = (store, &s.database_url_env, &s.store) {
            self.push(v.span(), K::StoreNeedsDatabase);
        }
        let proxy_id = s.proxy_id.as_ref().and_then(|v| {
            let id = v.get_ref().trim();
            if id.is_empty() || id.chars().count() > 100 || id.chars().any(char::is_control) {
                let reason = "expected 1 to 100 printable characters".into();
                self.push(v.span(), K::BadValue { what: "proxy_id", value: v.get_ref().clone(), reason });
                return None;
            }
            Some(id.to_string())
        });
        let dry_run_secret_env = match &s.dry_run_secret_env {
            None => d.dry_run_secret_env.clone(),
            Some(v) if valid_env_name(v.get_ref()) => v.get_ref().clone(),
            Some(v) => {
                // a secret pasted where its variable's name belongs is never repeated
                let masked = "*".repeat(v.get_ref().chars().count());
                let reason = "this names the environment variable that holds the secret, such as STRANGLER_DRY_RUN_SECRET; keep the secret out of the file".into();
                let mut e = self.src.error(v.span(), K::BadValue { what: "dry_run_secret_env", value: masked.clone(), reason });
                e.snippet = e.snippet.replace(v.get_ref().as_str(), &masked);
                self.errors.push(e);
                d.dry_run_secret_env.clone()
            }
        };
        let table_span = raw.shadow.as_ref().map_or(0..0, |s| s.span());
        match store {
            StoreKind::Jsonl => {
                let unused: Vec<&str> = [
                    ("database_url_env", s.database_url_env.is_some()),
                    ("store_max_rows", s.store_max_rows.is_some()),
                    ("proxy_id", s.proxy_id.is_some()),
                ]
                .into_iter()
                .filter_map(|(k, set)| set.then_some(k))
                .collect();
                if !unused.is_empty() {
                    self.warn(table_span, format!("[shadow] {} only apply to store = \"postgres\"", unused.join(", ")));
                }
            }
            StoreKind::Postgres => {
                if s.store_dir.is_some() || s.store_max_bytes.is_some() {
                    self.warn(table_span, "[shadow] store_dir and store_max_bytes only apply to store = \"jsonl\"".into());
                }
            }
        }
        ShadowSettings {
            dry_run_secret_env,
            store,
            database_url_env,
            proxy_id,
            store_max_rows: self.number(
                &s.store_max_rows,
                "store_max_rows",
                1_000..=1_000_000_000,
                "1000..=1000000000 rows",
                d.store_max_rows as i64,
            ) as u64,
            max_in_flight: self.number(&s.max_in_flight, "max_in_flight", 1..=100_000, "1..=100000", d.max_in_flight as i64) as usize,
            timeout: Duration::from_millis(self.number(
                &s.timeout_ms,
                "timeout_ms",
                1..=600_000,
                "1..=600000 milliseconds",
                d.timeout.as_millis() as i64,
            ) as u64),
            max_body_bytes: self.number(
                &s.max_body_bytes,
                "max_body_bytes",
                0..=(256 << 20),
                "0..=268435456 bytes",
                d.max_body_bytes as i64,
            ) as usize,
            store_dir: s.store_dir.as_ref().map_or(d.store_dir, |v| v.get_ref().clone()),
            store_max_bytes: self.number(
                &s.store_max_bytes,
                "store_max_bytes",
                1 << 16..=(1 << 40),
                "65536..=1099511627776 bytes",
                d.store_max_bytes as i64,
            ) as u64,
        }
    }

    fn route_shadow(&mut self, r: &RawRoute) -> RouteShadow {
        use crate::shadow::{PathPattern, Rules, SortBy, ValueType};
        let mut out = RouteShadow::default();
        let Some(s) = r.shadow.as_ref().map(|s| s.get_ref()) else { return out };
        if let Some(w) = &s.writes {
            out.writes = match w.get_ref().as_str() {
                "skip" => Writes::Skip,
                "dry-run" => Writes::DryRun,
                other => {
                    let reason = "expected `skip` (only safe methods are shadowed) or `dry-run`".into();
                    self.push(w.span(), K::BadValue { what: "shadow writes", value: other.into(), reason });
                    Writes::Skip
                }
            };
        }
        out.reverse = s.reverse.unwrap_or(false);
        out.noise_sample_percent = self.number(&s.noise_sample_percent, "noise_sample_percent", 0..=100, "0..=100", 10) as u8;
        out.sample_percent = self.number(&s.sample_percent, "sample_percent", 0..=100, "0..=100", 100) as u8;
        let pattern = |cx: &mut Self, v: &Spanned<String>| match PathPattern::parse(v.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                cx.push(
                    v.span(),
                    K::BadValue { what: "JSON path", value: v.get_ref().clone(), reason: format!("at character {}: {}", e.at, e.reason) },
                );
                None
            }
        };
        let mut rules = Rules::default();
        let mut text = Vec::new();
        for v in s.ignore.iter().flatten() {
            text.push(format!("ignore {}", v.get_ref()));
            rules.ignore.extend(pattern(self, v));
        }
        for (path, ty) in s.types.iter().flatten() {
            text.push(format!("type {path} = {}", ty.get_ref()));
            let Some(t) = ValueType::parse(ty.get_ref()) else {
                let reason = "expected string, number, integer, boolean, null, array, object, rfc3339, uuid or present".into();
                self.push(ty.span(), K::BadValue { what: "value type", value: ty.get_ref().clone(), reason });
                continue;
            };
            let spanned = Spanned::new(ty.span(), path.clone());
            if let Some(p) = pattern(self, &spanned) {
                rules.types.push((p, t));
            }
        }
        for v in s.sort.iter().flatten() {
            text.push(format!("sort {}", v.get_ref()));
            // `$.members:id` sorts by the `id` field of each element; `$.tags` by value.
            let (path, by) = match v.get_ref().rsplit_once(':') {
                Some((p, f)) if !f.is_empty() && !f.contains(['.', '[']) => (p.to_string(), SortBy::Field(f.to_string())),
                _ => (v.get_ref().clone(), SortBy::Value),
            };
            if let Some(p) = pattern(self, &Spanned::new(v.span(), path)) {
                rules.sort.push((p, by));
            }
        }
        for h in s.headers.iter().flatten() {
            text.push(format!("header {}", h.get_ref()));
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => rules.headers.push(name.as_str().to_string()),
                Err(_) => self.push(
                    h.span(),
                    K::BadValue { what: "header name", value: h.get_ref().clone(), reason: "not a valid HTTP header name".into() },
                ),
            }
        }
        out.rules = rules;
        out.rules_text = text;
        out
    }

    fn socket_addr(&mut self, v: &Spanned<String>, what: &'static str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let reason = "expected IP:PORT, such as 0.0.0.0:8080 or [::]:8080".to_string();
                self.push(v.span(), K::BadValue { what, value: v.get_ref().clone(), reason });
                None
            }
        }
    }

    fn upstreams(&mut self, raw: &RawConfig) -> BTreeMap<UpstreamName, Arc<Upstream>> {
        let mut out = BTreeMap::new();
        for (name, u) in &raw.upstreams {
            let span = u.span();
            let u = u.get_ref();
            if !valid_name(name) {
                self.push(
                    span.clone(),
                    K::BadValue { what: "upstream name", value: name.clone(), reason: "use letters, digits, `-`, `_` and `.`".into() },
                );
            }
            let Some((tls, host, port)) = self.url(&u.url) else { continue };
            let addr = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port));
            let health = match &u.health {
                Some(h) if !h.get_ref().starts_with('/') => {
                    self.push(
                        h.span(),
                        K::BadValue { what: "health path", value: h.get_ref().clone(), reason: "it must start with `/`".into() },
                    );
                    None
                }
                h => h.as_ref().map(|h| h.get_ref().clone()),
            };
            let ms = |cx: &mut Self, v: &Option<Spanned<i64>>, key, default| {
                Duration::from_millis(cx.number(v, key, 1..=3_600_000, "1..=3600000 milliseconds", default) as u64)
            };
            let connect_timeout = ms(self, &u.connect_timeout_ms, "connect_timeout_ms", 2_000);
            let read_timeout = ms(self, &u.read_timeout_ms, "read_timeout_ms", 60_000);
            let write_timeout = ms(self, &u.write_timeout_ms, "write_timeout_ms", 60_000);
            // below Node's 5 s keepAliveTimeout (the monolith's): a pooled connection the upstream is
            // about to close is never reused, so a write never meets a reset it cannot be retried after
            let idle = self.number(&u.idle_timeout_secs, "idle_timeout_secs", 1..=3600, "1..=3600 seconds", 4);
            let interval = self.number(&u.health_interval_secs, "health_interval_secs", 1..=3600, "1..=3600 seconds", 5);
            let pool_size = self.number(&u.pool_size, "pool_size", 0..=100_000, "0..=100000 connections", 128) as usize;
            if let (Some(c), false) = (&u.ca_file, tls) {
                self.warn(c.span(), format!("upstream `{name}`: `ca_file` only applies to https upstreams"));
            }
            let name = UpstreamName::from(name.as_str());
            out.insert(
                name.clone(),
                Arc::new(Upstream {
                    name,
                    url: u.url.get_ref().clone(),
                    tls,
                    host,
                    port,
                    addr,
                    health,
                    health_interval: Duration::from_secs(interval as u64),
                    connect_timeout,
                    read_timeout,
                    write_timeout,
                    idle_timeout: Duration::from_secs(idle as u64),
                    pool_size,
                    dry_run: u.dry_run.as_ref().is_some_and(|d| *d.get_ref()),
                    ca_file: u.ca_file.as_ref().map(|c| c.get_ref().clone()),
                    ca: None,
                }),
            );
        }
        out
    }

    fn url(&mut self, v: &Spanned<String>) -> Option<(bool, String, u16)> {
        let bad = |cx: &mut Self, reason: String| {
            cx.push(v.span(), K::BadUrl { url: v.get_ref().clone(), reason });
            None
        };
        let url = match url::Url::parse(v.get_ref()) {
            Ok(u) => u,
            Err(e) => return bad(self, e.to_string()),
        };
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return bad(self, format!("scheme `{other}` is not http or https")),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return bad(self, "a path or query is not supported; the request's own path is forwarded".into());
        }
        let Some(host) = url.host_str() else { return bad(self, "no host".into()) };
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        Some((tls, host.to_string(), port))
    }

    /// `[plan]`: every stage once, named as a route can write it, with well-formed service
    /// names. A stage with a bad name is still listed, so routes naming it get no second error.
    fn plan(&mut self, raw: &RawConfig) -> Vec<Stage> {
        let Some(plan) = raw.plan.as_ref().map(|p| p.get_ref()) else { return Vec::new() };
        if plan.stages.get_ref().is_empty() {
            let reason = "list the stages in the order they happen, e.g. [{ name = \"january\", services = [\"auth\"] }]".into();
            self.push(plan.stages.span(), K::BadValue { what: "plan stages", value: "[]".into(), reason });
        }
        let mut out: Vec<Stage> = Vec::new();
        let mut lines: Vec<usize> = Vec::new();
        for stage in plan.stages.get_ref() {
            let st = stage.get_ref();
            let name = st.name.get_ref();
            if !valid_stage_name(name) {
                let reason = "1 to 40 letters, digits, spaces, `-`, `_` or `.`, such as \"january\" or \"2027-02 chat\"".into();
                self.push(st.name.span(), K::BadValue { what: "stage name", value: name.clone(), reason });
            }
            if let Some(i) = out.iter().position(|s| &*s.name == name.as_str()) {
                self.push(st.name.span(), K::DuplicateStage { name: name.clone(), first_line: lines[i] });
                continue;
            }
            let mut services = Vec::new();
            for service in st.services.iter().flat_map(|s| s.get_ref()) {
                if !valid_name(service.get_ref()) {
                    let reason = "an upstream name: letters, digits, `-`, `_` and `.`".into();
                    self.push(service.span(), K::BadValue { what: "service name", value: service.get_ref().clone(), reason });
                } else if !services.contains(service.get_ref()) {
                    services.push(service.get_ref().clone());
                }
            }
            lines.push(self.src.locate(st.name.span().start).line);
            out.push(Stage { name: Arc::from(name.as_str()), services });
        }
        out
    }

    /// The stage a route names, which `[plan]` must declare.
    fn stage(&mut self, r: &RawRoute, plan: &[Stage]) -> Option<Arc<str>> {
        let s = r.stage.as_ref()?;
        let (name, route, target) = (s.get_ref(), r.name.get_ref(), r.target.get_ref());
        let Some(stage) = plan.iter().find(|st| &*st.name == name.as_str()) else {
            let known: Vec<&str> = plan.iter().map(|st| &*st.name).filter(|n| valid_stage_name(n)).collect();
            let kind = K::UnknownStage {
                route: route.clone(),
                stage: name.clone(),
                suggestion: schema::suggest(name, &known).map(str::to_string),
                known: known.iter().map(|k| k.to_string()).collect(),
            };
            self.push(s.span(), kind);
            return None;
        };
        // a route filed under one month while the plan moves its service in another
        if !stage.services.contains(target) {
            if let Some(other) = plan.iter().find(|st| st.services.contains(target)) {
                let message =
                    format!("route `{route}` is in stage `{name}`, but [plan] lists its target `{target}` under stage `{}`", other.name);
                self.warn(s.span(), message);
            }
        }
        Some(stage.name.clone())
    }

    fn route(&mut self, r: &RawRoute, line: usize, known: &[String], plan: &[Stage]) -> Option<Route> {
        let name = r.name.get_ref().clone();
        let target = UpstreamName::from(r.target.get_ref().as_str());
        if !known.contains(r.target.get_ref()) {
            self.push(r.target.span(), K::UnknownUpstream { route: name.clone(), name: r.target.get_ref().clone(), known: known.to_vec() });
        }
        let mode = match &r.mode {
            None => Mode::Legacy,
            Some(m) => match Mode::parse(m.get_ref()) {
                Some(mode) => mode,
                None => {
                    self.push(m.span(), K::UnknownMode(m.get_ref().clone()));
                    Mode::Legacy
                }
            },
        };
        let percent = match &r.percent {
            None => {
                if mode == Mode::Canary {
                    self.push(r.mode.as_ref().map_or(r.name.span(), |m| m.span()), K::CanaryWithoutPercent);
                }
                Percent::default()
            }
            Some(p) => match Percent::try_new(*p.get_ref()) {
                Some(pct) => {
                    if mode != Mode::Canary {
                        self.warn(p.span(), format!("route `{name}`: `percent` only applies in canary mode; it is ignored in {mode} mode"));
                    }
                    pct
                }
                None => {
                    self.push(p.span(), K::PercentOutOfRange { got: *p.get_ref() });
                    Percent::default()
                }
            },
        };
        let sticky = match &r.sticky {
            None => StickyKey::JwtSub,
            Some(s) => StickyKey::parse(s.get_ref()).unwrap_or_else(|| {
                self.push(s.span(), K::BadSticky(s.get_ref().clone()));
                StickyKey::JwtSub
            }),
        };
        let breaker = match &r.breaker {
            None => BreakerSettings::default(),
            Some(b) => {
                let b = b.get_ref();
                let d = BreakerSettings::default();
                BreakerSettings {
                    failures: self.number(&b.failures, "failures", 1..=10_000, "1..=10000", d.failures as i64) as u32,
                    cooldown: Duration::from_secs(self.number(
                        &b.cooldown_secs,
                        "cooldown_secs",
                        1..=3600,
                        "1..=3600 seconds",
                        d.cooldown.as_secs() as i64,
                    ) as u64),
                }
            }
        };
        let shadow = self.route_shadow(r);
        if (shadow.writes == Writes::DryRun || !shadow.rules_text.is_empty()) && mode == Mode::Legacy {
            let span = r.shadow.as_ref().map_or(0..0, |s| s.span());
            self.warn(span, format!("route `{name}`: shadow settings have no effect in legacy mode"));
        }
        let demote = r.demote.as_ref().map(|d| {
            if mode != Mode::Canary {
                self.warn(d.span(), format!("route `{name}`: `demote` only watches canary routes; it is ignored in {mode} mode"));
            }
            let d = d.get_ref();
            DemoteSettings {
                max_error_percent: self.number(&d.max_error_percent, "max_error_percent", 0..=100, "0..=100", 5) as u8,
                max_mismatch_percent: self.number(&d.max_mismatch_percent, "max_mismatch_percent", 0..=100, "0..=100", 5) as u8,
                window: Duration::from_secs(self.number(&d.window_secs, "window_secs", 1..=86_400, "1..=86400 seconds", 60) as u64),
                min_requests: self.number(&d.min_requests, "min_requests", 1..=1_000_000, "1..=1000000", 20) as u64,
            }
        });
        let stage = self.stage(r, plan);
        let matcher = self.route_match(&name, r.matcher.as_ref(), r.name.span())?;
        Some(Route {
            stage,
            demote,
            shadow,
            name: RouteName::from(name.as_str()),
            line,
            matcher,
            target,
            mode,
            percent,
            sticky,
            fallback: r.fallback.as_ref().is_none_or(|f| *f.get_ref()),
            breaker,
        })
    }

    fn route_match(&mut self, route: &str, m: Option<&Spanned<RawMatch>>, fallback_span: std::ops::Range<usize>) -> Option<RouteMatch> {
        let default = Spanned::new(fallback_span, RawMatch::default());
        let m = m.unwrap_or(&default);
        let raw = m.get_ref();
        let mut ok = true;
        let path = match (&raw.path, &raw.path_prefix) {
            (Some(_), Some(p)) => {
                self.push(p.span(), K::BothPaths(route.to_string()));
                return None;
            }
            (Some(p), None) => match self.path(p) {
                Some(p) => PathMatch::Exact(normalize_path(&p)),
                None => {
                    ok = false;
                    PathMatch::Prefix(Vec::new())
                }
            },
            (None, Some(p)) => match self.path(p) {
                Some(p) => PathMatch::Prefix(prefix_segments(&p)),
                None => {
                    ok = false;
                    PathMatch::Prefix(Vec::new())
                }
            },
            (None, None) => PathMatch::Prefix(Vec::new()),
        };
        let methods = raw.methods.as_ref().map(|ms| {
            let mut out = Vec::new();
            for m in ms.get_ref() {
                let upper = m.get_ref().to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if !upper.is_empty() => {
                        if !out.contains(&method) {
                            out.push(method)
                        }
                    }
                    _ => {
                        ok = false;
                        self.push(
                            m.span(),
                            K::BadValue {
                                what: "method",
                                value: m.get_ref().clone(),
                                reason: "expected an HTTP method such as GET".into(),
                            },
                        );
                    }
                }
            }
            out
        });
        let host = raw.host.as_ref().map(|h| {
            let v = h.get_ref().to_ascii_lowercase();
            match v.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => HostMatch::Suffix(suffix.to_string()),
                _ => {
                    if v.contains(['*', '/', ':']) || v.is_empty() {
                        ok = false;
                        self.push(
                            h.span(),
                            K::BadValue {
                                what: "host",
                                value: h.get_ref().clone(),
                                reason: "expected a host name without port, or *.example.com".into(),
                            },
                        );
                    }
                    HostMatch::Exact(v)
                }
            }
        });
        let mut headers = Vec::new();
        if let Some(hs) = &raw.headers {
            for (name, value) in hs.get_ref() {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => headers.push((h, value.get_ref().clone())),
                    Err(_) => {
                        ok = false;
                        self.push(
                            hs.span(),
                            K::BadValue { what: "header name", value: name.clone(), reason: "not a valid HTTP header name".into() },
                        );
                    }
                }
            }
        }
        let mut graphql_fields = Vec::new();
        if let Some(fields) = &raw.graphql_fields {
            if !matches!(path, PathMatch::Exact(_)) {
                ok = false;
                self.push(fields.span(), K::GraphQlNeedsPath(route.to_string()));
            }
            if raw.methods.is_some() || raw.host.is_some() || raw.headers.is_some() {
                ok = false;
                self.push(fields.span(), K::GraphQlWithConditions(route.to_string()));
            }
            if fields.get_ref().is_empty() {
                ok = false;
                let reason = "list the root fields this route claims, e.g. [\"chats\", \"sendMessage\"]".into();
                self.push(fields.span(), K::BadValue { what: "graphql_fields", value: "[]".into(), reason });
            }
            for f in fields.get_ref() {
                let name = f.get_ref();
                let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid || name.starts_with("__") {
                    ok = false;
                    let reason = "a GraphQL root field name (letters, digits, `_`; not an introspection field)".into();
                    self.push(f.span(), K::BadValue { what: "graphql field", value: name.clone(), reason });
                } else if !graphql_fields.contains(name) {
                    graphql_fields.push(name.clone());
                }
            }
            graphql_fields.sort();
        }
        ok.then_some(RouteMatch { path, methods, host, headers, graphql_fields })
    }

    fn path(&mut self, p: &Spanned<String>) -> Option<String> {
        let v = p.get_ref();
        if !v.starts_with('/') || v.contains(['?', '#', ' ']) {
            self.push(
                p.span(),
                K::BadValue {
                    what: "path",
                    value: v.clone(),
                    reason: "a path starts with `/` and has no query, fragment or spaces".into(),
                },
            );
            return None;
        }
        if let Err(e) = crate::routing::normalize(v, crate::routing::EncodedSlash::Keep) {
            self.push(p.span(), K::BadValue { what: "path", value: v.clone(), reason: e.to_string() });
            return None;
        }
        Some(v.clone())
    }
}

impl Cx<'_> {
    fn graphql_settings(&mut self, raw: &RawConfig) -> GraphQlSettings {
        let d = GraphQlSettings::default();
        let Some(g) = raw.graphql.as_ref().map(|g| g.get_ref()) else { return d };
        let schema = g.schema.as_ref().and_then(|file| match (self.files)(file.get_ref()) {
            Err(e) => {
                self.push(file.span(), K::SchemaUnreadable { file: file.get_ref().clone(), reason: e });
                None
            }
            Ok(text) => match crate::graphql::Schema::parse(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.push(
                        file.span(),
                        K::SchemaUnreadable { file: file.get_ref().clone(), reason: format!("not a GraphQL schema: {e}") },
                    );
                    None
                }
            },
        });
        let mixed = match &g.mixed {
            None => d.mixed,
            Some(v) => MixedOperations::parse(v.get_ref()).unwrap_or_else(|| {
                let reason =
                    "expected `legacy` (the default upstream serves it) or `reject` (a GraphQL error asks the client to split it)".into();
                self.push(v.span(), K::BadValue { what: "graphql mixed", value: v.get_ref().clone(), reason });
                d.mixed
            }),
        };
        GraphQlSettings {
            schema_file: g.schema.as_ref().map(|s| s.get_ref().clone()),
            schema,
            max_body_bytes: self.number(
                &g.max_body_bytes,
                "max_body_bytes",
                0..=65_536,
                "0..=65536 bytes (the body is held while it is read)",
                d.max_body_bytes as i64,
            ) as usize,
            limits: crate::graphql::Limits {
                max_depth: self.number(&g.max_depth, "max_depth", 1..=1_000, "1..=1000", d.limits.max_depth as i64) as usize,
                max_tokens: self.number(&g.max_tokens, "max_tokens", 1..=1_000_000, "1..=1000000", d.limits.max_tokens as i64) as usize,
            },
            mixed,
        }
    }

    /// Who claims which root field on each GraphQL path; every field at most once, every field
    /// in the schema when there is one, and subscription fields with one route per path.
    fn graphql_paths(&mut self, routes: &[Arc<Route>], raw: &RawConfig, settings: &GraphQlSettings) -> BTreeMap<String, GraphQlPath> {
        let mut out: BTreeMap<String, GraphQlPath> = BTreeMap::new();
        let field_spans = |i: usize| -> Vec<Spanned<String>> {
            raw.routes
                .iter()
                .find(|r| r.get_ref().name.get_ref() == routes[i].name.as_str())
                .and_then(|r| r.get_ref().matcher.as_ref())
                .and_then(|m| m.get_ref().graphql_fields.as_ref())
                .map(|f| f.get_ref().clone())
                .unwrap_or_default()
        };
        for (i, route) in routes.iter().enumerate() {
            let PathMatch::Exact(path) = &route.matcher.path else { continue };
            if route.matcher.graphql_fields.is_empty() {
                continue;
            }
            let spans = field_spans(i);
            let span_of = |f: &str| spans.iter().find(|s| s.get_ref() == f).map_or(0..0, |s| s.span());
            let entry = out.entry(path.clone()).or_default();
            let mut subscribes = false;
            for field in &route.matcher.graphql_fields {
                if let Some(&by) = entry.claims.get(field) {
                    let kind = K::FieldClaimedTwice {
                        field: field.clone(),
                        route: route.name.to_string(),
                        by: routes[by].name.to_string(),
                        by_line: routes[by].line,
                    };
                    self.push(span_of(field), kind);
                    continue;
                }
                entry.claims.insert(field.clone(), i);
                if let Some(schema) = &settings.schema {
                    match schema.kind_of(field) {
                        None => {
                            let known: Vec<&str> = schema.root_fields.keys().map(String::as_str).collect();
                            let kind = K::UnknownField {
                                field: field.clone(),
                                schema: settings.schema_file.clone().unwrap_or_default(),
                                suggestion: schema::suggest(field, &known).map(str::to_string),
                            };
                            self.push(span_of(field), kind);
                        }
                        Some(crate::graphql::OperationKind::Subscription) => subscribes = true,
                        Some(_) => {}
                    }
                }
            }
            if subscribes {
                match entry.websocket {
                    Some(other) => {
                        let kind =
                            K::TwoWebSocketOwners { path: path.clone(), route: route.name.to_string(), by: routes[other].name.to_string() };
                        self.push(span_of(&route.matcher.graphql_fields[0]), kind);
                    }
                    None => entry.websocket = Some(i),
                }
            }
        }
        if settings.schema.is_none() && !out.is_empty() && raw.graphql.as_ref().is_none_or(|g| g.get_ref().schema.is_none()) {
            self.warn(0..0, "GraphQL routes without [graphql] schema: field names are not checked, and WebSocket upgrades (subscriptions) go to the default upstream".into());
        }
        out
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A stage name: short, printable, no surrounding spaces (routes repeat it exactly).
fn valid_stage_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=40).contains(&n)
        && name.chars().all(|c| c.is_alphanumeric() || " -_.".contains(c))
        && !name.starts_with(' ')
        && !name.ends_with(' ')
}

/// An environment variable name as shells accept it.
fn valid_env_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// SHA-256 of a file's bytes, hex: names the version of the table being served.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
