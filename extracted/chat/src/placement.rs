//! Where a chat's rows are read: the chat data move's routing (`bm_chatmove::routing`, in the
//! control database beside the monolith's tables), followed by every instance. Reads of a chat
//! whose bucket the routing sends to a shard come from that shard; everything else from the
//! monolith's tables. Writes still go to the monolith's tables only: after a move has switched a
//! bucket's writes, the move's write fence refuses them (an error the client sees, never a lost
//! write) — so a move must not switch writes until this service writes to the shards
//! (docs/chat-sharding.md).
//!
//! The routing is loaded at start, again whenever the mover notifies `chat_routing`, and every
//! few seconds besides (a notification sent while the listener reconnected is not lost for long).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bm_chatmove::routing::Routing;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

/// How often the routing is read even without a notification.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

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
        })
    }

    /// Loads the routing and keeps it current until `stop`.
    pub async fn start(
        main: PgPool,
        url_of: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Placement>> {
        let p = Arc::new(Placement {
            main: main.clone(),
            current: ArcSwap::from_pointee(Current { routing: Routing::legacy(), pools: HashMap::new(), missing: vec![] }),
            url_of: Box::new(url_of),
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
            match (self.url_of)(url_env).and_then(|u| PgPoolOptions::new().max_connections(10).connect_lazy(&u).ok()) {
                Some(p) => {
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

    /// For `/ready`: the shards the routing names without a URL.
    pub fn problems(&self) -> Option<String> {
        let cur = self.current.load();
        (!cur.missing.is_empty()).then(|| format!("no database URL for {}", cur.missing.join(", ")))
    }

    pub fn describe(&self) -> String {
        self.current.load().routing.describe.clone()
    }
}
