//! What a change to `routes.toml` does to routing, as a pure value.
//!
//! `strangler check NEW --against OLD` prints it for a pull request, and every reload writes the
//! same diff to the log, so a reviewer and the on-call person read the same words.

use std::fmt;

use serde::Serialize;

use super::model::{Route, RouteTable};

/// One change, in words a reviewer reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    RouteAdded {
        route: String,
        summary: String,
    },
    RouteRemoved {
        route: String,
        summary: String,
    },
    RouteChanged {
        route: String,
        what: Vec<String>,
    },
    /// Same routes, different order: can change which route wins among routes on one path.
    RouteMoved {
        route: String,
        from: usize,
        to: usize,
    },
    UpstreamAdded {
        upstream: String,
        url: String,
    },
    UpstreamRemoved {
        upstream: String,
    },
    UpstreamChanged {
        upstream: String,
        what: Vec<String>,
    },
    DefaultUpstreamChanged {
        from: String,
        to: String,
    },
    /// A GraphQL root field changes owner (`None`: the default upstream).
    GraphQlFieldMoved {
        path: String,
        field: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// Listener, admin or thread settings: they apply only after a restart.
    NeedsRestart {
        what: String,
    },
}

/// Every change from one table to another, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoutingDiff {
    pub changes: Vec<Change>,
}

impl RoutingDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

pub fn route_summary(r: &Route) -> String {
    let mut s = format!("{} → {} ({}", r.matcher, r.target, r.mode);
    if r.mode == super::Mode::Canary {
        s.push_str(&format!(" {}%", r.percent.get()));
    }
    s.push(')');
    s
}

impl RouteTable {
    pub fn diff(old: &RouteTable, new: &RouteTable) -> RoutingDiff {
        let mut changes = Vec::new();
        if old.default_upstream != new.default_upstream {
            changes.push(Change::DefaultUpstreamChanged { from: old.default_upstream.to_string(), to: new.default_upstream.to_string() });
        }
        for (name, u) in &new.upstreams {
            match old.upstreams.get(name) {
                None => changes.push(Change::UpstreamAdded { upstream: name.to_string(), url: u.url.clone() }),
                Some(o) => {
                    let mut what = Vec::new();
                    if o.url != u.url {
                        what.push(format!("url {} → {}", o.url, u.url));
                    }
                    if o.health != u.health {
                        what.push(format!("health {:?} → {:?}", o.health, u.health));
                    }
                    if (o.connect_timeout, o.read_timeout, o.write_timeout, o.idle_timeout, o.pool_size, o.health_interval)
                        != (u.connect_timeout, u.read_timeout, u.write_timeout, u.idle_timeout, u.pool_size, u.health_interval)
                    {
                        what.push("timeouts or pool settings".to_string());
                    }
                    if !what.is_empty() {
                        changes.push(Change::UpstreamChanged { upstream: name.to_string(), what });
                    }
                }
            }
        }
        for name in old.upstreams.keys().filter(|n| !new.upstreams.contains_key(*n)) {
            changes.push(Change::UpstreamRemoved { upstream: name.to_string() });
        }

        let old_pos = |name: &str| old.routes.iter().position(|r| r.name.as_str() == name);
        let new_pos = |name: &str| new.routes.iter().position(|r| r.name.as_str() == name);
        for (i, r) in new.routes.iter().enumerate() {
            match old_pos(r.name.as_str()) {
                None => changes.push(Change::RouteAdded { route: r.name.to_string(), summary: route_summary(r) }),
                Some(j) => {
                    let o = &old.routes[j];
                    let mut what = Vec::new();
                    if o.target != r.target {
                        what.push(format!("target {} → {}", o.target, r.target));
                    }
                    if o.mode != r.mode {
                        what.push(format!("mode {} → {}", o.mode, r.mode));
                    }
                    if o.percent != r.percent && (o.mode == super::Mode::Canary || r.mode == super::Mode::Canary) {
                        what.push(format!("percent {} → {}", o.percent.get(), r.percent.get()));
                    }
                    if o.matcher != r.matcher {
                        what.push(format!("match {} → {}", o.matcher, r.matcher));
                    }
                    if o.sticky != r.sticky {
                        what.push(format!("sticky {} → {}", o.sticky, r.sticky));
                    }
                    if o.fallback != r.fallback {
                        what.push(format!("fallback {} → {}", o.fallback, r.fallback));
                    }
                    if o.breaker != r.breaker {
                        what.push("breaker settings".to_string());
                    }
                    if o.stage != r.stage {
                        let name = |s: &Option<std::sync::Arc<str>>| s.as_deref().map_or_else(|| "(none)".to_string(), str::to_string);
                        what.push(format!("stage {} → {}", name(&o.stage), name(&r.stage)));
                    }
                    if !what.is_empty() {
                        changes.push(Change::RouteChanged { route: r.name.to_string(), what });
                    }
                    // Only relative order among surviving routes matters.
                    let rank_old = old.routes[..j].iter().filter(|x| new_pos(x.name.as_str()).is_some()).count();
                    let rank_new = new.routes[..i].iter().filter(|x| old_pos(x.name.as_str()).is_some()).count();
                    if rank_old != rank_new {
                        changes.push(Change::RouteMoved { route: r.name.to_string(), from: j + 1, to: i + 1 });
                    }
                }
            }
        }
        for r in old.routes.iter().filter(|r| new_pos(r.name.as_str()).is_none()) {
            changes.push(Change::RouteRemoved { route: r.name.to_string(), summary: route_summary(r) });
        }

        // GraphQL fields that change owner, path by path, field by field
        let owner = |t: &RouteTable, path: &str, field: &str| {
            t.graphql_paths.get(path).and_then(|p| p.claims.get(field)).map(|&i| t.routes[i].name.to_string())
        };
        let mut fields: std::collections::BTreeSet<(String, String)> = Default::default();
        for t in [old, new] {
            for (path, p) in &t.graphql_paths {
                fields.extend(p.claims.keys().map(|f| (path.clone(), f.clone())));
            }
        }
        for (path, field) in fields {
            let (from, to) = (owner(old, &path, &field), owner(new, &path, &field));
            if from != to {
                changes.push(Change::GraphQlFieldMoved { path, field, from, to });
            }
        }
        if old.graphql != new.graphql {
            changes
                .push(Change::RouteChanged { route: "[graphql]".into(), what: vec!["schema, limits or mixed-operation handling".into()] });
        }

        if old.plan != new.plan {
            let list = |t: &RouteTable| {
                let stages: Vec<String> = t
                    .plan
                    .iter()
                    .map(
                        |st| if st.services.is_empty() { st.name.to_string() } else { format!("{} ({})", st.name, st.services.join(", ")) },
                    )
                    .collect();
                if stages.is_empty() {
                    "none".to_string()
                } else {
                    stages.join(", ")
                }
            };
            changes.push(Change::RouteChanged { route: "[plan]".into(), what: vec![format!("stages {} → {}", list(old), list(new))] });
        }

        let (os, ns) = (&old.server, &new.server);
        if os.listeners != ns.listeners {
            changes.push(Change::NeedsRestart { what: "listeners".into() });
        }
        if os.admin != ns.admin {
            changes.push(Change::NeedsRestart { what: "admin listener".into() });
        }
        if (os.threads, os.grace_period, os.shutdown_timeout, os.h2c) != (ns.threads, ns.grace_period, ns.shutdown_timeout, ns.h2c) {
            changes.push(Change::NeedsRestart { what: "[server] threads or shutdown settings".into() });
        }
        if os.shadow != ns.shadow {
            changes.push(Change::NeedsRestart { what: "[shadow] settings".into() });
        }
        RoutingDiff { changes }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::RouteAdded { route, summary } => write!(f, "+ route `{route}`: {summary}"),
            Change::RouteRemoved { route, summary } => {
                write!(f, "- route `{route}`: {summary} (its requests now go to the next matching route or the default upstream)")
            }
            Change::RouteChanged { route, what } => write!(f, "~ route `{route}`: {}", what.join("; ")),
            Change::RouteMoved { route, from, to } => write!(f, "~ route `{route}`: moved from position {from} to {to}"),
            Change::UpstreamAdded { upstream, url } => write!(f, "+ upstream `{upstream}`: {url}"),
            Change::UpstreamRemoved { upstream } => write!(f, "- upstream `{upstream}`"),
            Change::UpstreamChanged { upstream, what } => write!(f, "~ upstream `{upstream}`: {}", what.join("; ")),
            Change::DefaultUpstreamChanged { from, to } => write!(f, "~ default upstream: {from} → {to}"),
            Change::GraphQlFieldMoved { path, field, from, to } => {
                let who = |r: &Option<String>| r.as_ref().map_or_else(|| "the default upstream".to_string(), |r| format!("route `{r}`"));
                write!(f, "~ GraphQL field `{field}` on {path}: {} → {}", who(from), who(to))
            }
            Change::NeedsRestart { what } => write!(f, "! {what} changed: applies after a restart, not a reload"),
        }
    }
}

impl fmt::Display for RoutingDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return write!(f, "no routing changes");
        }
        for (i, c) in self.changes.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}
