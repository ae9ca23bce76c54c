//! The key schema of `routes.toml`, checked before serde runs.
//!
//! serde stops at the first unknown field; a platform engineer with three typos wants three
//! errors. This walk visits the parsed (still untyped) document, reports every key that is not
//! part of the schema with its exact span and a "did you mean" suggestion, and removes it so the
//! typed stage can still run and report the semantic errors of the same file in one pass.
//! `tests::schema_matches_serde_types` keeps this table and `raw.rs` in step.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The expected shape of one value.
pub(crate) enum Shape {
    /// A table with a fixed set of keys.
    Table(&'static [(&'static str, &'static Shape)]),
    /// A table whose keys are free (names of upstreams) and whose values share one shape.
    MapOf(&'static Shape),
    /// An array whose elements share one shape.
    ArrayOf(&'static Shape),
    /// Anything: a leaf, or a table with free keys such as `headers`.
    Any,
}

static ANY: Shape = Shape::Any;
static TLS: Shape = Shape::Table(&[("cert", &ANY), ("key", &ANY)]);
static SERVER: Shape = Shape::Table(&[
    ("default_upstream", &ANY),
    ("threads", &ANY),
    ("grace_period_secs", &ANY),
    ("shutdown_timeout_secs", &ANY),
    ("h2c", &ANY),
    ("encoded_slash", &ANY),
]);
static LISTENER: Shape = Shape::Table(&[("addr", &ANY), ("tls", &TLS)]);
static LISTENERS: Shape = Shape::ArrayOf(&LISTENER);
static ADMIN: Shape = Shape::Table(&[("addr", &ANY), ("token_env", &ANY)]);
static UPSTREAM: Shape = Shape::Table(&[
    ("url", &ANY),
    ("health", &ANY),
    ("health_interval_secs", &ANY),
    ("connect_timeout_ms", &ANY),
    ("read_timeout_ms", &ANY),
    ("write_timeout_ms", &ANY),
    ("idle_timeout_secs", &ANY),
    ("pool_size", &ANY),
    ("dry_run", &ANY),
    ("ca_file", &ANY),
]);
static UPSTREAMS: Shape = Shape::MapOf(&UPSTREAM);
static MATCH: Shape =
    Shape::Table(&[("path", &ANY), ("path_prefix", &ANY), ("methods", &ANY), ("host", &ANY), ("headers", &ANY), ("graphql_fields", &ANY)]);
static GRAPHQL: Shape =
    Shape::Table(&[("schema", &ANY), ("max_body_bytes", &ANY), ("max_depth", &ANY), ("max_tokens", &ANY), ("mixed", &ANY)]);
static ROUTE_SHADOW: Shape = Shape::Table(&[
    ("writes", &ANY),
    ("reverse", &ANY),
    ("ignore", &ANY),
    ("types", &ANY),
    ("sort", &ANY),
    ("headers", &ANY),
    ("noise_sample_percent", &ANY),
    ("sample_percent", &ANY),
]);
static SHADOW: Shape = Shape::Table(&[
    ("max_in_flight", &ANY),
    ("timeout_ms", &ANY),
    ("max_body_bytes", &ANY),
    ("store_dir", &ANY),
    ("store_max_bytes", &ANY),
    ("store", &ANY),
    ("database_url_env", &ANY),
    ("store_max_rows", &ANY),
    ("proxy_id", &ANY),
    ("dry_run_secret_env", &ANY),
]);
static DEMOTE: Shape =
    Shape::Table(&[("max_error_percent", &ANY), ("max_mismatch_percent", &ANY), ("window_secs", &ANY), ("min_requests", &ANY)]);
static BREAKER: Shape = Shape::Table(&[("failures", &ANY), ("cooldown_secs", &ANY)]);
static ROUTE: Shape = Shape::Table(&[
    ("name", &ANY),
    ("match", &MATCH),
    ("target", &ANY),
    ("mode", &ANY),
    ("percent", &ANY),
    ("sticky", &ANY),
    ("fallback", &ANY),
    ("breaker", &BREAKER),
    ("shadow", &ROUTE_SHADOW),
    ("demote", &DEMOTE),
    ("stage", &ANY),
]);
static ROUTES: Shape = Shape::ArrayOf(&ROUTE);
static STAGE: Shape = Shape::Table(&[("name", &ANY), ("services", &ANY)]);
static STAGES: Shape = Shape::ArrayOf(&STAGE);
static PLAN: Shape = Shape::Table(&[("stages", &STAGES)]);
pub(crate) static ROOT: Shape = Shape::Table(&[
    ("server", &SERVER),
    ("listeners", &LISTENERS),
    ("admin", &ADMIN),
    ("upstreams", &UPSTREAMS),
    ("routes", &ROUTES),
    ("shadow", &SHADOW),
    ("graphql", &GRAPHQL),
    ("plan", &PLAN),
]);

/// A key that the schema does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownKey {
    pub key: String,
    /// Dotted path of the table it was found in (`routes[2].match`).
    pub section: String,
    pub span: Range<usize>,
    pub allowed: Vec<&'static str>,
}

/// Reports every unknown key under `table` and removes it.
pub(crate) fn prune_unknown_keys(table: &mut DeTable<'_>, shape: &Shape, section: &str) -> Vec<UnknownKey> {
    let mut found = Vec::new();
    walk_table(table, shape, section, &mut found);
    found.sort_by_key(|k| k.span.start);
    found
}

fn walk_table(table: &mut DeTable<'_>, shape: &Shape, section: &str, found: &mut Vec<UnknownKey>) {
    let Shape::Table(keys) = shape else {
        if let Shape::MapOf(inner) = shape {
            for (name, value) in table.iter_mut() {
                walk_value(value, inner, &join(section, name.get_ref()), found);
            }
        }
        return;
    };
    let unknown: Vec<(String, Range<usize>)> = table
        .iter()
        .filter(|(k, _)| !keys.iter().any(|(known, _)| *known == k.get_ref().as_ref()))
        .map(|(k, _)| (k.get_ref().to_string(), k.span()))
        .collect();
    for (key, span) in unknown {
        table.remove(key.as_str());
        found.push(UnknownKey { key, section: section.to_string(), span, allowed: keys.iter().map(|(k, _)| *k).collect() });
    }
    for (name, value) in table.iter_mut() {
        if let Some((_, inner)) = keys.iter().find(|(k, _)| *k == name.get_ref().as_ref()) {
            walk_value(value, inner, &join(section, name.get_ref()), found);
        }
    }
}

fn walk_value(value: &mut Spanned<DeValue<'_>>, shape: &Shape, section: &str, found: &mut Vec<UnknownKey>) {
    match (value.get_mut(), shape) {
        (DeValue::Table(t), Shape::Table(_) | Shape::MapOf(_)) => walk_table(t, shape, section, found),
        (DeValue::Array(items), Shape::ArrayOf(inner)) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk_value(item, inner, &format!("{section}[{}]", i + 1), found);
            }
        }
        // A value of the wrong type is left for serde to report with its span.
        _ => {}
    }
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// The allowed key closest to `key`, when it is close enough to be a typo.
pub(crate) fn suggest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(d, candidate)| *d <= 2.max(candidate.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance; keys are short, so the quadratic table is fine.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(src: &str) -> Vec<UnknownKey> {
        let mut doc = DeTable::parse(src).unwrap();
        prune_unknown_keys(doc.get_mut(), &ROOT, "")
    }

    #[test]
    fn finds_every_typo_at_once() {
        let src = "[server]\ndefault_upstrem = \"x\"\n[[routes]]\nname = \"a\"\ntarget = \"x\"\nmatch = { path_prefx = \"/a\" }\nmdoe = \"legacy\"\n";
        let found = unknown(src);
        let keys: Vec<_> = found.iter().map(|k| (k.section.as_str(), k.key.as_str())).collect();
        assert_eq!(keys, vec![("server", "default_upstrem"), ("routes[1].match", "path_prefx"), ("routes[1]", "mdoe")]);
        assert_eq!(&src[found[1].span.clone()], "path_prefx");
    }

    #[test]
    fn suggestions_for_typos_only() {
        assert_eq!(suggest("path_prefx", &["path", "path_prefix"]), Some("path_prefix"));
        assert_eq!(suggest("mdoe", &["mode", "name"]), Some("mode"));
        assert_eq!(suggest("completely_else", &["mode", "name"]), None);
    }

    /// Every key the schema allows must be one the serde types accept, and vice versa: a file
    /// using every key deserializes, and its pruning finds nothing.
    #[test]
    fn schema_matches_serde_types() {
        let src = include_str!("../../tests/data/every-key.toml");
        assert!(unknown(src).is_empty());
        let raw: Result<super::super::raw::RawConfig, _> = toml::from_str(src);
        assert!(raw.is_ok(), "{raw:?}");
    }
}
