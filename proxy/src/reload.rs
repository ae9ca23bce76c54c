//! The live route table and everything that replaces it.
//!
//! [`LiveState`] holds the table behind an `ArcSwap`: each request loads an `Arc` once and keeps
//! it, so requests in flight finish on the table they started with, and a swap never waits for
//! them. [`LiveState::reload`] reads the file, compiles it with the same function `strangler
//! check` uses, and swaps only on success; on failure the old table keeps serving and the errors
//! are logged, counted and shown on the admin API.
//!
//! [`Reloader`] is the Pingora background service that triggers reloads: file-system events on
//! the config file's folder (so an editor's write-then-rename and a Kubernetes ConfigMap's
//! `..data` symlink swap are both seen), a slow poll as a safety net, and SIGHUP. Events go
//! through a `channel(1)` with `try_send`, so a burst of events becomes one reload.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::breaker::Breakers;
use crate::clock::unix_secs;
use crate::config::{content_hash, Change, RouteTable, RoutingDiff, Source};
use crate::metrics as m;

/// Why the last reload failed, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    pub at_unix_secs: u64,
    pub trigger: &'static str,
    pub hash: Option<String>,
    pub errors: Vec<String>,
}

/// What a successful reload did.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Unchanged,
    Applied { diff: RoutingDiff, warnings: Vec<String> },
}

/// Reads and compiles a config file. Blocking (file and DNS): run it on a blocking thread.
pub fn load_file(path: &Path) -> Result<(RouteTable, Vec<String>), Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let name = path.display().to_string();
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let compiled = RouteTable::compile_with(Source::new(&name, &text), &files_beside(base))
        .map_err(|errs| errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let mut table = compiled.table;
    table.resolve(base).map_err(|e| vec![format!("{name}: {e}")])?;
    Ok((table, compiled.warnings.iter().map(|w| w.to_string()).collect()))
}

/// Reads the files a configuration names (its GraphQL schema), relative to its folder.
pub fn files_beside(base: &Path) -> impl Fn(&str) -> Result<String, String> + '_ {
    move |name: &str| std::fs::read_to_string(base.join(name)).map_err(|e| format!("{}: {e}", base.join(name).display()))
}

pub struct LiveState {
    /// Shared with the health checker, which reads the upstreams of the current table.
    pub table: Arc<ArcSwap<RouteTable>>,
    pub config_path: PathBuf,
    pub breakers: Breakers,
    /// Set when graceful shutdown starts: `/readyz` turns 503.
    pub draining: AtomicBool,
    loaded_at: Mutex<SystemTime>,
    last_error: Mutex<Option<ReloadFailure>>,
    /// Hash of the last file content a reload looked at, good or bad, so a broken file is
    /// reported once, not on every poll.
    last_seen_hash: Mutex<String>,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    pub health: Arc<crate::health::HealthTable>,
    /// Canary routes demoted at run time; any successful reload re-promotes them.
    pub demoter: Arc<crate::demote::Demoter>,
    /// Who answered each route's requests, and since when each route has its mode.
    pub progress: Arc<crate::progress::Progress>,
}

impl LiveState {
    pub fn new(table: RouteTable, config_path: PathBuf) -> Arc<Self> {
        let hash = table.hash.clone();
        metrics::gauge!(m::CONFIG_LOADED_TIMESTAMP_SECONDS).set(unix_secs(SystemTime::now()) as f64);
        metrics::gauge!(m::CONFIG_IN_SYNC).set(1.0);
        let progress = Arc::new(crate::progress::Progress::default());
        progress.adopt(&table, SystemTime::now());
        Arc::new(LiveState {
            progress,
            table: Arc::new(ArcSwap::from_pointee(table)),
            config_path,
            breakers: Breakers::default(),
            draining: AtomicBool::new(false),
            loaded_at: Mutex::new(SystemTime::now()),
            last_error: Mutex::new(None),
            last_seen_hash: Mutex::new(hash),
            reload_lock: tokio::sync::Mutex::new(()),
            health: Default::default(),
            demoter: Default::default(),
        })
    }

    pub fn loaded_at(&self) -> SystemTime {
        *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn last_error(&self) -> Option<ReloadFailure> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the file's content differs from what the last reload looked at.
    async fn file_changed(&self) -> bool {
        match tokio::fs::read(&self.config_path).await {
            Ok(bytes) => {
                let hash = content_hash(&bytes);
                *self.last_seen_hash.lock().unwrap_or_else(|e| e.into_inner()) != hash
            }
            // A missing file mid-rename: the next event will tell.
            Err(_) => false,
        }
    }

    /// Reloads the file now. `trigger` labels logs and metrics.
    pub async fn reload(&self, trigger: &'static str) -> Result<ReloadOutcome, ReloadFailure> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self.config_path.clone();
        let hash_now = tokio::fs::read(&path).await.ok().map(|b| content_hash(&b));
        if let Some(h) = &hash_now {
            *self.last_seen_hash.lock().unwrap_or_else(|e| e.into_inner()) = h.clone();
        }
        let current = self.table.load_full();
        if hash_now.as_deref() == Some(current.hash.as_str()) {
            self.set_error(None);
            self.demoter.reset();
            metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "unchanged", "trigger" => trigger).increment(1);
            info!(trigger, hash = %current.hash, "configuration unchanged");
            return Ok(ReloadOutcome::Unchanged);
        }
        let loaded =
            tokio::task::spawn_blocking(move || load_file(&path)).await.unwrap_or_else(|e| Err(vec![format!("reload task failed: {e}")]));
        match loaded {
            Ok((table, warnings)) => {
                let diff = RouteTable::diff(&current, &table);
                let hash = table.hash.clone();
                // the mode history first: a request that sees the new table finds its new routes
                self.progress.adopt(&table, SystemTime::now());
                self.table.store(Arc::new(table));
                self.demoter.reset();
                *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = SystemTime::now();
                self.set_error(None);
                metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "ok", "trigger" => trigger).increment(1);
                metrics::gauge!(m::CONFIG_LOADED_TIMESTAMP_SECONDS).set(unix_secs(SystemTime::now()) as f64);
                for w in &warnings {
                    warn!(trigger, warning = %w, "configuration warning");
                }
                for change in &diff.changes {
                    if matches!(change, Change::NeedsRestart { .. }) {
                        warn!(trigger, change = %change, "routing change needs a restart");
                    } else {
                        info!(trigger, change = %change, "routing change");
                    }
                }
                info!(trigger, hash = %hash, changes = diff.changes.len(), "configuration reloaded");
                Ok(ReloadOutcome::Applied { diff, warnings })
            }
            Err(errors) => {
                let failure = ReloadFailure { at_unix_secs: unix_secs(SystemTime::now()), trigger, hash: hash_now, errors };
                for e in &failure.errors {
                    error!(trigger, error = %e, "configuration error");
                }
                error!(trigger, count = failure.errors.len(), "error while reloading, continuing with previous configuration");
                metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "error", "trigger" => trigger).increment(1);
                self.set_error(Some(failure.clone()));
                Err(failure)
            }
        }
    }

    fn set_error(&self, e: Option<ReloadFailure>) {
        metrics::gauge!(m::CONFIG_IN_SYNC).set(if e.is_some() { 0.0 } else { 1.0 });
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// Background service that watches the config file and SIGHUP.
pub struct Reloader {
    pub state: Arc<LiveState>,
    /// How often the file is re-read in case an event was missed.
    pub poll_interval: Duration,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let _watcher = match watch(&self.state.config_path, tx) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch the configuration file; relying on polling and SIGHUP");
                None
            }
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.state.draining.store(true, Ordering::Relaxed);
                    info!("shutdown: draining connections");
                    break;
                }
                Some(()) = rx.recv() => {
                    // Let the writer finish (editors write, then rename), and merge the burst.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while rx.try_recv().is_ok() {}
                    if self.state.file_changed().await {
                        let _ = self.state.reload("file").await;
                    }
                }
                _ = async { hup.as_mut().expect("guarded").recv().await }, if hup.is_some() => {
                    info!("SIGHUP: reloading configuration");
                    let _ = self.state.reload("sighup").await;
                }
                _ = poll.tick() => {
                    if self.state.file_changed().await {
                        let _ = self.state.reload("poll").await;
                    }
                }
            }
        }
    }
}

/// Watches the folder holding the config file: renames into place and symlink swaps replace
/// the file's inode, which a watch on the file itself would miss.
fn watch(path: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if !event.kind.is_access() {
                // Full channel: a reload is already pending and will see this change too.
                let _ = tx.try_send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
