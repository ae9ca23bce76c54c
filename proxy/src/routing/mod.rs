//! Routing decisions: which route a request belongs to and which side serves it.
//!
//! Pure: given a compiled table and the request's facts, [`decide`] returns the same answer
//! every time. The circuit breaker's run-time state is applied on top by the edge.

mod canary;
mod matcher;
pub mod path;

use std::net::IpAddr;
use std::sync::Arc;

pub use canary::{bucket, cookie, in_canary, jwt_sub, sticky_key, BUCKETS};
pub(crate) use matcher::Matcher;
pub use matcher::{conditions_hold, host_of, path_holds, prefix_segments, specificity, RequestFacts};
pub use path::{normalize, normalize_path, EncodedSlash, PathError};

use crate::config::{Mode, Route, RouteTable};

/// Which backend a request is meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    Extracted,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::Extracted => "extracted",
        }
    }
}

/// The route a request matched (if any) and the side it goes to.
#[derive(Debug, Clone)]
pub struct Decision {
    pub route: Option<Arc<Route>>,
    pub side: Side,
}

impl RouteTable {
    /// The route serving this request, by the precedence documented in `matcher.rs`.
    pub fn find(&self, req: &RequestFacts<'_>) -> Option<&Arc<Route>> {
        self.matcher.find(&self.routes, req).map(|i| &self.routes[i])
    }
}

/// Picks route and side for a request.
pub fn decide(table: &RouteTable, req: &RequestFacts<'_>, client: Option<IpAddr>) -> Decision {
    match table.find(req) {
        Some(route) => decide_for(route, req, client),
        None => Decision { route: None, side: Side::Legacy },
    }
}

/// The side a request goes to on a route already chosen (by the matcher, or by a GraphQL
/// operation's fields).
pub fn decide_for(route: &Arc<Route>, req: &RequestFacts<'_>, client: Option<IpAddr>) -> Decision {
    let side = match route.mode {
        Mode::Legacy | Mode::Shadow => Side::Legacy,
        Mode::Extracted => Side::Extracted,
        Mode::Canary => match sticky_key(&route.sticky, req.headers, client) {
            Some(key) if in_canary(bucket(key.as_bytes()), route.percent) => Side::Extracted,
            Some(_) => Side::Legacy,
            // No key at all (no address: a Unix socket client): stay on the safe side.
            None => Side::Legacy,
        },
    };
    Decision { route: Some(route.clone()), side }
}
