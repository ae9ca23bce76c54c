//! Where a chat's rows are read and written: the chat data move's routing
//! (`bm_chatmove::routing`, in the control database beside the monolith's tables), followed by
//! every instance. A chat whose bucket the routing sends to a shard is read (and, once the move
//! has switched writes, written) there; everything else on the monolith's tables. While a move
//! pauses a bucket's writes (its switch), a write waits ([`Placement::write_target`]); a write
//! that meets the move's fence (the routing changed since it was read) reads the routing again
//! and runs where it now says (docs/chat-sharding.md).
//!
//! Each shard the routing names gets a pool and, with a broker configured, an outbox relay
//! (`chat.outbox`: the events of messages written there).
//!
//! The routing is loaded at start, again whenever the mover notifies `chat_routing`, and every
//! few seconds besides (a notification sent while the listener reconnected is not lost for long).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bm_chatmove::routing::Routing;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

/// How often the routing is read even without a notification.
const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// The longest a write waits for a move's switch to end (the pause measured in the rehearsal is
/// tens of milliseconds; past this the write fails, nothing written).
const PAUSE_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting write reads the routing.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Where a chat's writes go.
#[derive(Clone)]
pub enum Target {
    /// the monolith's tables, in the request's transaction
    Legacy,
    /// a shard: in the request's transaction on it ([`bm_common::dryrun::RequestTx::conn_on`])
    Shard { name: String, pool: PgPool },
}

struct Current {
    routing: Routing,
    /// a pool per shard the routing names (lazily connected); missing: its URL is not set
    pools: HashMap<String, PgPool>,
    /// shards the routing names whose URL variable is not set
    missing: Vec<String>,
}

pub struct Placement {
    main: PgPool,
    current: ArcSwap<Current>,
    url_of: UrlOf,
    /// with a broker: each shard's outbox relay, started with its pool
    relays: Option<(bm_events::KafkaConfig, tokio::sync::watch::Receiver<bool>)>,
    /// each shard's pool: as many connections as the main one (`DB_POOL_MAX`), the same wait
    pool_max: u32,
    acquire_timeout: Duration,
    relay_tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Reads a shard's database URL from its `url_env` variable.
type UrlOf = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl Placement {
    /// Everything on the monolith's tables, never reloaded (services and tests without moves).
    pub fn legacy(main: PgPool) -> Arc<Placement> {
        Arc::new(Placement {
            main,
            current: ArcSwap::from_pointee(Current { routing: Routing::legacy(), pools: HashMap::new(), missing: vec![] }),
            url_of: Box::new(|_| None),
            relays: None,
            relay_tasks: Default::default(),
            pool_max: 10,
            acquire_timeout: Duration::from_secs(30),
        })
    }

    /// Loads the routing and keeps it current until `stop`.
    pub async fn start(
        main: PgPool,
        db: &bm_common::config::Database,
        url_of: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
        kafka: Option<bm_events::KafkaConfig>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Placement>> {
        let p = Arc::new(Placement {
            main: main.clone(),
            current: ArcSwap::from_pointee(Current { routing: Routing::legacy(), pools: HashMap::new(), missing: vec![] }),
            url_of: Box::new(url_of),
            relays: kafka.map(|k| (k, stop.clone())),
            relay_tasks: Default::default(),
            pool_max: db.pool_max,
            acquire_timeout: db.acquire_timeout,
        });
        p.reload().await.map_err(|e| anyhow::anyhow!("reading the chat routing: {e}"))?;
        let me = p.clone();
        tokio::spawn(async move {
            let mut listener = match PgListener::connect_with(&main).await {
                Ok(mut l) => match l.listen(bm_chatmove::mover::ROUTING_CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "not listening for routing changes; reading it every {RELOAD_EVERY:?}");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "not listening for routing changes; reading it every {RELOAD_EVERY:?}");
                    None
                }
            };
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(RELOAD_EVERY) => {}
                    n = async {
                        match listener.as_mut() {
                            Some(l) => l.recv().await.map(|_| ()),
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Err(e) = n {
                            tracing::warn!(error = %e, "routing listener");
                        }
                    }
                }
                if let Err(e) = me.reload().await {
                    tracing::warn!(error = %e, "reading the chat routing; keeping the last one");
                }
            }
        });
        Ok(p)
    }

    /// Reads the routing again; pools for shards it names that are new.
    pub async fn reload(&self) -> Result<(), bm_chatmove::mover::MoveError> {
        let routing = Routing::load(&self.main).await?;
        let old = self.current.load();
        if old.routing == routing {
            return Ok(());
        }
        let mut pools = HashMap::new();
        let mut missing = Vec::new();
        for (name, url_env) in &routing.shards {
            if let Some(p) = old.pools.get(name) {
                pools.insert(name.clone(), p.clone());
                continue;
            }
            match (self.url_of)(url_env)
                .and_then(|u| bm_common::config::pool_options(self.pool_max, self.acquire_timeout).connect_lazy(&u).ok())
            {
                Some(p) => {
                    if let Some((kafka, stop)) = &self.relays {
                        let relay = bm_events::relay::Relay {
                            pool: p.clone(),
                            kafka: kafka.clone(),
                            cfg: Default::default(),
                            table: bm_events::outbox::CHAT_SHARD,
                            source: name.clone(),
                        };
                        let task = tokio::spawn(relay.run(stop.clone()));
                        self.relay_tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                    }
                    pools.insert(name.clone(), p);
                }
                None => missing.push(format!("{url_env} (shard `{name}`)")),
            }
        }
        tracing::info!(routing = %routing.describe, "chat routing");
        if !missing.is_empty() {
            tracing::error!(missing = %missing.join(", "), "the chat routing names shards whose database URL is not set");
        }
        self.current.store(Arc::new(Current { routing, pools, missing }));
        Ok(())
    }

    /// The shard to read `chat` from, or None for the monolith's tables. A shard whose URL is
    /// not set reads as an error (the readiness check names it).
    pub fn read_shard(&self, chat: &Uuid) -> Result<Option<PgPool>, crate::errors::ChatError> {
        let cur = self.current.load();
        match cur.routing.read_db(chat) {
            bm_chatmove::plan::LEGACY => Ok(None),
            name => cur.pools.get(name).cloned().map(Some).ok_or_else(|| {
                tracing::error!(shard = name, "chat routing: no database URL for this shard");
                crate::errors::ChatError::Internal
            }),
        }
    }

    /// Where `chat` is read from now: the database's name (a shard's, or the monolith's) and
    /// [`read_pool`](Self::read_pool)'s answer, both from one reading of the routing.
    pub fn read_source(&self, chat: &Uuid) -> Result<(String, bool, PgPool), crate::errors::ChatError> {
        let cur = self.current.load();
        match cur.routing.read_db(chat) {
            bm_chatmove::plan::LEGACY => Ok((bm_chatmove::plan::LEGACY.to_string(), false, self.main.clone())),
            name => match cur.pools.get(name) {
                Some(p) => Ok((name.to_string(), true, p.clone())),
                None => {
                    tracing::error!(shard = name, "chat routing: no database URL for this shard");
                    Err(crate::errors::ChatError::Internal)
                }
            },
        }
    }

    /// Whether every chat is written on the monolith's tables (no move has switched writes, none
    /// is switching them): mutations skip looking up where a message lives.
    pub fn writes_all_legacy(&self) -> bool {
        self.current.load().routing.writes.iter().all(|w| w.as_deref() == Some(bm_chatmove::plan::LEGACY))
    }

    /// Where `chat`'s writes go now. While a move pauses them (its switch), waits for the routing
    /// to change, up to [`PAUSE_WAIT`].
    pub async fn write_target(&self, chat: &Uuid) -> Result<Target, crate::errors::ChatError> {
        let deadline = tokio::time::Instant::now() + PAUSE_WAIT;
        let mut waited = false;
        loop {
            let cur = self.current.load();
            match cur.routing.write_db(chat) {
                Some(bm_chatmove::plan::LEGACY) => return Ok(Target::Legacy),
                Some(name) => {
                    return match cur.pools.get(name) {
                        Some(pool) => Ok(Target::Shard { name: name.to_string(), pool: pool.clone() }),
                        None => {
                            tracing::error!(shard = name, "chat routing: no database URL for this shard");
                            Err(crate::errors::ChatError::Internal)
                        }
                    }
                }
                None if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(chat = %chat, "a chat's writes stayed paused by a data move longer than {PAUSE_WAIT:?}");
                    return Err(crate::errors::ChatError::Internal);
                }
                None => {
                    if !waited {
                        metrics::counter!("chat_writes_paused_total").increment(1);
                        waited = true;
                    }
                    tokio::time::sleep(PAUSE_POLL).await;
                    if let Err(e) = self.reload().await {
                        tracing::warn!(error = %e, "reading the chat routing");
                    }
                }
            }
        }
    }

    /// The name of the shard `chat`'s writes go to, if a shard (no waiting: for reads that
    /// must see this request's own writes).
    pub fn write_shard_name(&self, chat: &Uuid) -> Option<String> {
        let cur = self.current.load();
        cur.routing.write_db(chat).filter(|n| *n != bm_chatmove::plan::LEGACY).map(str::to_string)
    }

    /// The pool of the shard `id`'s reads go to (for looking up a message by its id), if a shard.
    pub fn read_pool_of_bucket(&self, id: &Uuid) -> Option<PgPool> {
        let cur = self.current.load();
        cur.pools.get(cur.routing.read_db(id)).cloned()
    }

    /// The shard holding `user`'s inbox (`chat.inbox`: what `chats` lists), or None while the
    /// user's chats are written on the monolith's tables (then `chats` reads those). The inbox is
    /// where the user's bucket is written; while a move pauses that, where it is read.
    pub fn inbox_shard(&self, user: &Uuid) -> Option<(String, PgPool)> {
        let cur = self.current.load();
        let db = match cur.routing.write_db(user) {
            Some(db) => db,
            None => cur.routing.read_db(user),
        };
        if db == bm_chatmove::plan::LEGACY {
            return None;
        }
        cur.pools.get(db).map(|p| (db.to_string(), p.clone()))
    }

    /// Whether any bucket's writes go to a shard (inbox upkeep has work to do).
    pub fn any_shard_writes(&self) -> bool {
        !self.writes_all_legacy()
    }

    /// The pool to read `chat`'s truth from: its shard's or the monolith's (`main`).
    pub fn read_pool(&self, chat: &Uuid) -> Result<(bool, PgPool), crate::errors::ChatError> {
        Ok(match self.read_shard(chat)? {
            Some(p) => (true, p),
            None => (false, self.main.clone()),
        })
    }

    /// Waits for the shards' outbox relays to stop (after `stop`).
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *self.relay_tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// For `/ready`: the shards the routing names without a URL.
    pub fn problems(&self) -> Option<String> {
        let cur = self.current.load();
        (!cur.missing.is_empty()).then(|| format!("no database URL for {}", cur.missing.join(", ")))
    }

    pub fn describe(&self) -> String {
        self.current.load().routing.describe.clone()
    }
}
