//! Route lookup over a compiled table, in time that does not grow with the number of routes.
//!
//! Precedence, as documented in `docs/routes.md`:
//! 1. an exact `path` beats any `path_prefix`;
//! 2. a longer prefix (more segments) beats a shorter one;
//! 3. among routes with the same path, the first in the file whose other conditions (methods,
//!    host, headers) hold wins;
//! 4. when no route's conditions hold at the most specific path, the next shorter prefix is
//!    tried, down to `/`; nothing matching means the default upstream.
//!
//! Exact paths live in a hash map; prefixes in a trie keyed by path segment, so a lookup costs
//! O(segments in the request path) plus the routes sharing one path, whatever the table's size.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use super::path::normalize_path;
use crate::config::{HostMatch, PathMatch, Route, RouteMatch};

/// What a route's conditions are checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// The request path, without query, normalised (see [`super::path::normalize`]).
    pub path: &'a str,
    /// Lowercase host without port, from `Host` or the URI authority.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    exact: HashMap<String, Vec<usize>>,
    prefixes: Node,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Routes whose prefix ends at this node, in file order.
    routes: Vec<usize>,
    children: HashMap<String, Node>,
}

impl Matcher {
    pub(crate) fn new(routes: &[Arc<Route>]) -> Matcher {
        let mut m = Matcher::default();
        // GraphQL routes are chosen by the operation's root fields (RouteTable::graphql_paths)
        for (i, r) in routes.iter().enumerate().filter(|(_, r)| r.matcher.graphql_fields.is_empty()) {
            match &r.matcher.path {
                PathMatch::Exact(p) => m.exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(segs) => {
                    let mut node = &mut m.prefixes;
                    for s in segs {
                        node = node.children.entry(s.clone()).or_default();
                    }
                    node.routes.push(i);
                }
            }
        }
        m
    }

    /// Index of the route that serves this request, if any.
    pub(crate) fn find(&self, routes: &[Arc<Route>], req: &RequestFacts<'_>) -> Option<usize> {
        let path = req.path;
        let first_match = |ids: &[usize]| ids.iter().copied().find(|&i| conditions_hold(&routes[i].matcher, req));
        if let Some(i) = self.exact.get(path).and_then(|ids| first_match(ids)) {
            return Some(i);
        }
        let mut trail: Vec<&Node> = Vec::with_capacity(8);
        let mut node = &self.prefixes;
        trail.push(node);
        for seg in path.split('/').skip(1) {
            match node.children.get(seg) {
                Some(child) => {
                    node = child;
                    trail.push(node);
                }
                None => break,
            }
        }
        trail.iter().rev().find_map(|n| first_match(&n.routes))
    }
}

/// Whether methods, host and headers of a route hold for the request.
pub fn conditions_hold(m: &RouteMatch, req: &RequestFacts<'_>) -> bool {
    if let Some(methods) = &m.methods {
        if !methods.contains(req.method) {
            return false;
        }
    }
    if let Some(host) = &m.host {
        match req.host {
            Some(h) if host.matches(h) => {}
            _ => return false,
        }
    }
    m.headers.iter().all(|(name, value)| req.headers.get_all(name).iter().any(|v| v.as_bytes() == value.as_bytes()))
}

/// Whether a route's path condition holds for an (already normalised) path.
pub fn path_holds(p: &PathMatch, normalized: &str) -> bool {
    match p {
        PathMatch::Exact(e) => e == normalized,
        PathMatch::Prefix(segs) => {
            let mut parts = normalized.split('/').skip(1);
            segs.iter().all(|s| parts.next() == Some(s.as_str()))
        }
    }
}

/// Specificity of a path condition: larger wins (exact beats every prefix).
pub fn specificity(p: &PathMatch) -> usize {
    match p {
        PathMatch::Exact(_) => usize::MAX,
        PathMatch::Prefix(segs) => segs.len(),
    }
}

/// Segments of a `path_prefix`: `/auth/` and `/auth` both give `["auth"]`, `/` gives none.
pub fn prefix_segments(prefix: &str) -> Vec<String> {
    normalize_path(prefix).split('/').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Lowercase host without port from a `Host` header value.
pub fn host_of(value: &str) -> String {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        v.rsplit_once(':').map_or(v, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { v })
    };
    host.to_ascii_lowercase()
}

impl HostMatch {
    pub fn parse_host_header(value: &str) -> String {
        host_of(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_segments_ignore_slashes() {
        assert_eq!(prefix_segments("/auth/"), vec!["auth"]);
        assert_eq!(prefix_segments("/"), Vec::<String>::new());
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("API.example.com:8443"), "api.example.com");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn prefixes_are_segment_aware() {
        let p = PathMatch::Prefix(prefix_segments("/auth"));
        assert!(path_holds(&p, "/auth"));
        assert!(path_holds(&p, "/auth/"));
        assert!(path_holds(&p, "/auth/login"));
        assert!(!path_holds(&p, "/authors"));
        assert!(path_holds(&PathMatch::Prefix(vec![]), "/anything"));
    }
}
