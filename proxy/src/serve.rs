//! Assembles and runs the Pingora server for a compiled table: the proxy service on the
//! configured listeners, the admin service, the reloader and the health checker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tracing::info;

use crate::admin::Admin;
use crate::config::{RouteTable, StoreKind, Writes};
use crate::edge::{Edge, EdgeApp, MAX_RETRIES};
use crate::health::HealthChecker;
use crate::reload::{LiveState, Reloader};
use crate::shadow::store::jsonl::StoreWriter;
use crate::shadow::store::postgres::{self, PgWriter};
use crate::shadow::store::{Sink, StoreService};
use crate::shadow::tee::Tee;

pub struct ServeOptions {
    pub config: PathBuf,
    /// How often the file is re-read in case a file-system event was missed.
    pub poll_interval: Duration,
    /// Where to write the addresses the listeners got (see [`PortHolds`]).
    pub bound_addrs_file: Option<PathBuf>,
}

/// Listeners asking for port 0 get a concrete port before Pingora binds: a socket bound (not
/// listening) with `SO_REUSEPORT` takes the port the system gives and holds it for the life of
/// the process, and Pingora's listener joins it on that port (a socket that does not listen
/// never receives connections). So a test or tool can ask for "any port" and read back the one it
/// got, with no window in which another process could take it.
#[derive(Default)]
struct PortHolds(Vec<socket2::Socket>);

impl PortHolds {
    fn concrete(&mut self, addr: std::net::SocketAddr) -> anyhow::Result<std::net::SocketAddr> {
        if addr.port() != 0 {
            return Ok(addr);
        }
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        let bound = socket.local_addr()?.as_socket().context("a TCP socket has an IP address")?;
        self.0.push(socket);
        Ok(bound)
    }

    /// Pingora's socket options for a listener on a held port (`SO_REUSEPORT`, to join it).
    fn options(held: bool) -> Option<pingora::listeners::TcpSocketOptions> {
        held.then(|| {
            let mut o = pingora::listeners::TcpSocketOptions::default();
            o.so_reuseport = Some(true);
            o
        })
    }
}

/// No read buffer in front of a plain-text client connection. Pingora's listeners put a 64 KiB
/// one there, allocated for as long as the connection is open: 75 kB of resident memory per
/// idle keep-alive connection (`scripts/bench --memory`: 731 MB for 10k, nginx 6 MB; 4 KiB:
/// 146 MB; none: 108 MB). The HTTP/1 session reads into buffers of its own (headers, body), so
/// the one below only saved a copy's worth of syscalls — Pingora's own upstream connections run
/// without one. Throughput was the same within the run's noise (docs/benchmarks.md).
fn plain_l4_buffer() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// Everything wrong with a file at startup; the binary prints it and exits with the config
/// error code.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct StartupConfigError(pub Vec<String>);

fn resolve_against(base: &Path, p: &str) -> String {
    let p = Path::new(p);
    if p.is_absolute() {
        p.display().to_string()
    } else {
        base.join(p).display().to_string()
    }
}

pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let (table, warnings) = crate::reload::load_file(&opts.config).map_err(StartupConfigError)?;
    for w in &warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let prometheus = crate::metrics::install()?;
    let admin_token = match &table.server.admin.token_env {
        Some(var) => match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => bail!("[admin] token_env names `{var}`, but that environment variable is empty or unset"),
        },
        None => None,
    };
    let server_conf = server_conf(&table);
    let settings = table.server.clone();
    let base = opts.config.parent().map(Path::to_path_buf).unwrap_or_default();
    let writer = store_writer(&settings.shadow, &base)?;
    let state = LiveState::new(table, opts.config.clone());

    let mut server = Server::new_with_opt_and_conf(None::<pingora::server::configuration::Opt>, server_conf);
    server.bootstrap();

    // Shadow: bounded in-flight copies, records to a bounded channel drained by the store writer.
    let shadow = settings.shadow.clone();
    let (store_tx, store_rx) = tokio::sync::mpsc::channel(STORE_QUEUE);
    let dry_run_key = dry_run_key(&shadow.dry_run_secret_env)?;
    let tables = state.table.load_full();
    let dry_run_routes: Vec<&str> = tables.routes.iter().filter(|r| r.shadow.writes == Writes::DryRun).map(|r| r.name.as_str()).collect();
    if dry_run_key.is_none() && !dry_run_routes.is_empty() {
        tracing::warn!(
            variable = %shadow.dry_run_secret_env,
            routes = %dry_run_routes.join(", "),
            "no dry-run secret: copies of writes will not be sent (set the variable to the secret the services verify with)"
        );
    }
    let clients = Arc::new(crate::outbound::Clients::new(shadow.max_in_flight));
    let tee = Tee::new(
        shadow.max_in_flight,
        shadow.max_body_bytes,
        shadow.timeout,
        Some(store_tx),
        state.demoter.clone(),
        dry_run_key,
        clients.clone(),
    );
    let store = StoreService::new(writer, store_rx);

    let mut http = pingora::proxy::http_proxy(&server.configuration, Edge::new(state.clone(), tee.clone(), shadow.max_body_bytes));
    if settings.h2c {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        http.server_options = Some(options);
    }
    // our connection loop in front of Pingora's: strict HTTP/1 heads, pipelining in order
    let mut proxy = Service::new(
        "strangler edge".to_string(),
        EdgeApp::new(http, Edge::new(state.clone(), tee.clone(), shadow.max_body_bytes), settings.h2c),
    );
    let mut holds = PortHolds::default();
    let mut bound = Vec::new();
    for l in &settings.listeners {
        let concrete = holds.concrete(l.addr)?;
        let sock = PortHolds::options(l.addr.port() == 0);
        bound.push(concrete);
        let addr = concrete.to_string();
        match &l.tls {
            Some((cert, key)) => {
                let (cert, key) = (resolve_against(&base, cert), resolve_against(&base, key));
                for f in [&cert, &key] {
                    if !Path::new(f).is_file() {
                        bail!("listener {addr}: TLS file `{f}` does not exist");
                    }
                }
                let mut tls = TlsSettings::intermediate(&cert, &key)
                    .with_context(|| format!("listener {addr}: loading certificate `{cert}` and key `{key}`"))?;
                tls.enable_h2();
                proxy.add_tls_with_settings(&addr, sock, tls);
            }
            None => {
                let mut endpoint = ListenerConfig::tcp(&addr).l4_buffer(plain_l4_buffer());
                if let Some(o) = sock {
                    endpoint = endpoint.tcp_socket_options(o);
                }
                proxy.add_listener(endpoint);
            }
        }
        info!(addr = %addr, tls = l.tls.is_some(), "listening");
    }

    let mut admin = Service::new(
        "strangler admin".to_string(),
        Admin { state: state.clone(), prometheus, token: admin_token, tee, listeners: bound.clone(), listening: Default::default() },
    );
    let admin_addr = holds.concrete(settings.admin.addr)?;
    match PortHolds::options(settings.admin.addr.port() == 0) {
        Some(o) => admin.add_tcp_with_settings(&admin_addr.to_string(), o),
        None => admin.add_tcp(&admin_addr.to_string()),
    }
    info!(addr = %admin_addr, "admin listening");
    if let Some(file) = &opts.bound_addrs_file {
        let json =
            serde_json::json!({ "listeners": bound.iter().map(|a| a.to_string()).collect::<Vec<_>>(), "admin": admin_addr.to_string() });
        // written whole, then renamed: a reader never sees half a file
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, json.to_string())
            .and_then(|()| std::fs::rename(&tmp, file))
            .with_context(|| format!("writing {}", file.display()))?;
    }

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("reloader", Reloader { state: state.clone(), poll_interval: opts.poll_interval }));
    server.add_service(background_service("health", HealthChecker { tables: state.table.clone(), health: state.health.clone(), clients }));
    server.add_service(background_service("shadow store", store));
    server.run(RunArgs::default());
    drop(holds);
    info!("stopped");
    Ok(())
}

/// The dry-run signing key from the environment variable `var`: `None` when it is unset, an
/// error when it is too short to be a secret.
pub fn dry_run_key(var: &str) -> anyhow::Result<Option<strangler_protocol::DryRunKey>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => {
            Ok(Some(strangler_protocol::DryRunKey::try_new(v.trim().as_bytes()).with_context(|| format!("${var}"))?))
        }
        _ => Ok(None),
    }
}

/// Records waiting for the store writer; beyond this they are dropped (`store_full`).
const STORE_QUEUE: usize = 1024;

/// The configured store's writer. For Postgres the URL's variable must be set now: a proxy
/// that silently stores nothing is worse than one that does not start. The database itself
/// may still be down; the writer reconnects.
fn store_writer(shadow: &crate::config::ShadowSettings, base: &Path) -> anyhow::Result<Box<dyn Sink>> {
    Ok(match shadow.store {
        StoreKind::Jsonl => {
            let dir = Path::new(&resolve_against(base, &shadow.store_dir)).to_path_buf();
            info!(dir = %dir.display(), "shadow store: jsonl");
            Box::new(StoreWriter { dir, max_bytes: shadow.store_max_bytes })
        }
        StoreKind::Postgres => {
            let Some(var) = &shadow.database_url_env else {
                bail!("[shadow] store = \"postgres\" needs database_url_env");
            };
            let db = postgres::Database::from_env(var).context("[shadow] database_url_env")?;
            let proxy = shadow.proxy_id.clone().unwrap_or_else(postgres::default_proxy_id);
            Box::new(PgWriter::new(db, proxy, shadow.store_max_rows))
        }
    })
}

fn server_conf(table: &RouteTable) -> ServerConf {
    let s = &table.server;
    ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.shutdown_timeout.as_secs()),
        // Pingora's keep-alive pool is one LRU shared by all peers: size it as the sum.
        upstream_keepalive_pool_size: table.upstreams.values().map(|u| u.pool_size).sum::<usize>().max(1),
        max_retries: MAX_RETRIES,
        // One single-threaded runtime per thread: no cross-thread task stealing on the hot path.
        work_stealing: false,
        ..ServerConf::default()
    }
}
