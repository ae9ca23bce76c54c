//! Readable renderings of a compiled table: the text `strangler check` prints and the JSON the
//! admin API serves.

use std::fmt::Write;

use serde_json::{json, Value};

use super::model::RouteTable;
use super::Mode;

impl RouteTable {
    /// A table a reviewer can read: listeners, upstreams, then routes in precedence-relevant
    /// file order.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for l in &self.server.listeners {
            let proto = if l.tls.is_some() {
                "https (h2, http/1.1)"
            } else if self.server.h2c {
                "http (h2c, http/1.1)"
            } else {
                "http/1.1"
            };
            let _ = writeln!(s, "listen {} {proto}", l.addr);
        }
        let _ =
            writeln!(s, "admin  {}{}", self.server.admin.addr, if self.server.admin.token_env.is_some() { " (bearer token)" } else { "" });
        let _ = writeln!(s, "\nupstreams:");
        for u in self.upstreams.values() {
            let default = if u.name == self.default_upstream { "  [default]" } else { "" };
            let health = u.health.as_deref().map(|h| format!("  health {h}")).unwrap_or_default();
            let _ = writeln!(s, "  {:<14} {}{health}{default}", u.name.as_str(), u.url);
        }
        let _ = writeln!(s, "\nroutes ({}):", self.routes.len());
        let w = self.routes.iter().map(|r| r.name.as_str().len()).max().unwrap_or(0).max("(unmatched)".len());
        for r in &self.routes {
            let mode = match r.mode {
                Mode::Canary => format!("canary {}% (sticky {})", r.percent.get(), r.sticky),
                Mode::Extracted if r.fallback => "extracted (fallback to legacy)".to_string(),
                m => m.to_string(),
            };
            let _ = writeln!(s, "  {:<w$}  {:<40} → {:<10} {mode}", r.name.as_str(), r.matcher.to_string(), r.target.as_str());
        }
        let _ = write!(s, "  {:<w$}  {:<40} → {}", "(unmatched)", "anything else", self.default_upstream);
        if !self.plan.is_empty() {
            let _ = write!(s, "\n\nplan ({} stages):", self.plan.len());
            let unplanned: Vec<&str> = self.routes.iter().filter(|r| r.stage.is_none()).map(|r| r.name.as_str()).collect();
            let w =
                self.plan.iter().map(|st| st.name.chars().count()).chain(unplanned.first().map(|_| "(no stage)".len())).max().unwrap_or(0);
            for st in &self.plan {
                let routes: Vec<&str> =
                    self.routes.iter().filter(|r| r.stage.as_deref() == Some(&*st.name)).map(|r| r.name.as_str()).collect();
                let routes = if routes.is_empty() { "no routes yet".to_string() } else { format!("routes {}", routes.join(", ")) };
                let services = if st.services.is_empty() { "-".to_string() } else { st.services.join(", ") };
                let _ = write!(s, "\n  {:<w$}  {services:<24} {routes}", &*st.name);
            }
            if !unplanned.is_empty() {
                let _ = write!(s, "\n  {:<w$}  {:<24} routes {}", "(no stage)", "", unplanned.join(", "));
            }
        }
        s
    }

    pub fn to_json(&self) -> Value {
        json!({
            "hash": self.hash,
            "default_upstream": self.default_upstream.as_str(),
            "upstreams": self.upstreams.values().map(|u| json!({
                "name": u.name.as_str(),
                "url": u.url,
                "health": u.health,
            })).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(|r| json!({
                "name": r.name.as_str(),
                "match": r.matcher.to_string(),
                "target": r.target.as_str(),
                "mode": r.mode.as_str(),
                "percent": r.percent.get(),
                "sticky": r.sticky.to_string(),
                "fallback": r.fallback,
                "stage": r.stage.as_deref(),
                "line": r.line,
            })).collect::<Vec<_>>(),
            "plan": self.plan.iter().map(|st| json!({
                "stage": &*st.name,
                "services": st.services,
                "routes": self.routes.iter().filter(|r| r.stage.as_deref() == Some(&*st.name)).map(|r| r.name.as_str()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}
