//! Tests of the whole configuration stage: golden error messages (insta), the matcher against a
//! reference linear scan (proptest), and routing diffs.

use std::sync::Arc;

use http::{HeaderMap, Method};
use proptest::prelude::*;

use super::*;
use crate::routing::{conditions_hold, normalize_path, path_holds, specificity, RequestFacts};

const BASE: &str = r#"
[upstreams.legacy]
url = "http://127.0.0.1:3000"

[upstreams.auth]
url = "http://127.0.0.1:4001"
health = "/health"
"#;

fn compile(text: &str) -> Result<Compiled, ConfigErrors> {
    RouteTable::compile(Source::new("routes.toml", text))
}

fn errors(text: &str) -> String {
    match compile(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    }
}

fn route_for(table: &RouteTable, method: &str, path: &str, host: Option<&str>, headers: &[(&str, &str)]) -> Option<String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    // as the edge does: match the normalised path
    let path = crate::routing::normalize(path, crate::routing::EncodedSlash::Keep).unwrap();
    let facts = RequestFacts { method: &method, path: &path, host, headers: &map };
    table.find(&facts).map(|r| r.name.to_string())
}

#[test]
fn the_repository_routes_toml_is_valid() {
    let text = include_str!("../../../routes.toml");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compiled =
        RouteTable::compile_with(Source::new("routes.toml", text), &crate::reload::files_beside(&repo)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!compiled.table.routes.is_empty());
}

#[test]
fn the_deployment_routes_tomls_are_valid() {
    // compose and Kubernetes mount docs/api/chat.graphql beside the table as chat.graphql
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = |name: &str| match name {
        "chat.graphql" => std::fs::read_to_string(repo.join("docs/api/chat.graphql")).map_err(|e| e.to_string()),
        other => Err(format!("{other} is not mounted")),
    };
    for (name, text) in [
        ("deploy/compose/routes.toml", include_str!("../../../deploy/compose/routes.toml")),
        ("deploy/k8s/routes.toml", include_str!("../../../deploy/k8s/routes.toml")),
    ] {
        let compiled = RouteTable::compile_with(Source::new(name, text), &files).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled.table.routes.iter().any(|r| r.name.as_str() == "chat"), "{name}");
    }
}

#[test]
fn every_problem_is_reported_at_once_with_locations() {
    let text = format!(
        r#"{BASE}
[upstreams.chat]
url = "htp://127.0.0.1:4002"

[[routes]]
name = "auth"
match = {{ path_prefx = "/auth/" }}
target = "auth"
mdoe = "canary"

[[routes]]
name = "auth"
match = {{ path_prefix = "/users/" }}
target = "auht"

[[routes]]
name = "pay"
match = {{ path_prefix = "/pay/" }}
target = "auth"
mode = "canary"
percent = 140

[[routes]]
name = "pay-get"
match = {{ path_prefix = "/pay", methods = ["GET"] }}
target = "auth"
mode = "extracted"
"#
    );
    insta::assert_snapshot!("many_errors", errors(&text));
}

#[test]
fn syntax_error_points_at_the_place() {
    insta::assert_snapshot!("syntax_error", errors("[upstreams.legacy]\nurl = \"http://127.0.0.1:3000\n"));
}

#[test]
fn type_error_points_at_the_value() {
    let text = format!("{BASE}\n[[routes]]\nname = \"a\"\ntarget = \"auth\"\nmode = \"canary\"\npercent = \"25\"\n");
    insta::assert_snapshot!("type_error", errors(&text));
}

#[test]
fn missing_default_and_bad_values() {
    let text = r#"
[server]
threads = 0

[[listeners]]
addr = "localhost:8080"

[admin]
addr = "0.0.0.0:9901"

[upstreams.monolith]
url = "http://127.0.0.1:3000/api"

[[routes]]
name = "x y"
match = { path = "auth", methods = ["G T"], host = "a:80" }
target = "monolith"
sticky = "session"
"#;
    insta::assert_snapshot!("bad_values", errors(text));
}

#[test]
fn canary_needs_percent_and_unknown_mode() {
    let text = format!("{BASE}\n[[routes]]\nname = \"a\"\ntarget = \"auth\"\nmode = \"canary\"\n\n[[routes]]\nname = \"b\"\nmatch = {{ path = \"/b\" }}\ntarget = \"auth\"\nmode = \"extract\"\n");
    insta::assert_snapshot!("canary_and_mode", errors(&text));
}

#[test]
fn shadow_rule_errors() {
    let text = format!("{BASE}\n[[routes]]\nname = \"a\"\ntarget = \"auth\"\nmode = \"shadow\"\nshadow = {{ writes = \"always\", ignore = [\"accessToken\"], types = {{ \"$.at\" = \"date\" }}, sort = [\"$.x[\"] }}\n");
    insta::assert_snapshot!("shadow_rules", errors(&text));
}

#[test]
fn shadow_store_errors() {
    // `postgres` without the variable that holds the URL; an unknown store kind; a URL (with
    // its password) where the variable's name belongs: never echoed, not even in the quoted line.
    let text = format!("{BASE}\n[shadow]\nstore = \"postgres\"\nstore_max_rows = 5\n");
    insta::assert_snapshot!("shadow_store_postgres", errors(&text));
    let text = format!("{BASE}\n[shadow]\nstore = \"sqlite\"\ndatabase_url_env = \"postgres://app:hunter2@db:5432/x\"\nproxy_id = \"\"\n");
    let text = errors(&text);
    assert!(!text.contains("hunter2"), "{text}");
    insta::assert_snapshot!("shadow_store_kind", text);
}

#[test]
fn shadow_store_settings() {
    let text = format!("{BASE}\n[shadow]\nstore = \"postgres\"\ndatabase_url_env = \"SHADOW_DB\"\nproxy_id = \"edge-1\"\n");
    let compiled = compile(&text).unwrap();
    let s = &compiled.table.server.shadow;
    assert_eq!((s.store, s.database_url_env.as_deref(), s.proxy_id.as_deref()), (StoreKind::Postgres, Some("SHADOW_DB"), Some("edge-1")));
    assert_eq!(s.store_max_rows, 1_000_000);
    assert!(compiled.warnings.is_empty());
    let d = compile(BASE).unwrap().table.server.shadow;
    assert_eq!((d.store, d.database_url_env, d.store_max_rows), (StoreKind::Jsonl, None, 1_000_000));
    // Keys of the other store kind are ignored, with a warning.
    let text = format!("{BASE}\n[shadow]\ndatabase_url_env = \"SHADOW_DB\"\nstore_max_rows = 5000\n");
    let warnings: Vec<String> = compile(&text).unwrap().warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings, ["routes.toml:9:1: warning: [shadow] database_url_env, store_max_rows only apply to store = \"postgres\""]);
    // A store change is not applied by a reload.
    let diff = RouteTable::diff(
        &compile(BASE).unwrap().table,
        &compile(&format!("{BASE}\n[shadow]\nstore = \"postgres\"\ndatabase_url_env = \"SHADOW_DB\"\n")).unwrap().table,
    );
    assert!(diff.to_string().contains("[shadow] settings"), "{diff}");
}

#[test]
fn valid_table_summary() {
    let text = format!(
        r#"{BASE}
[[routes]]
name = "auth"
match = {{ path_prefix = "/auth/" }}
target = "auth"
mode = "canary"
percent = 25

[[routes]]
name = "auth-me"
match = {{ path = "/auth/me", methods = ["GET"] }}
target = "auth"
mode = "extracted"

[[routes]]
name = "shadowed"
match = {{ path_prefix = "/chat" }}
target = "auth"
mode = "shadow"
percent = 10
"#
    );
    let compiled = compile(&text).unwrap();
    insta::assert_snapshot!("summary", compiled.table.summary());
    let warnings: Vec<String> = compiled.warnings.iter().map(|w| w.to_string()).collect();
    insta::assert_snapshot!("warnings", warnings.join("\n"));
}

#[test]
fn precedence_exact_then_longest_prefix_then_file_order() {
    let text = format!(
        r#"{BASE}
[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
target = "auth"

[[routes]]
name = "api-users-post"
match = {{ path_prefix = "/api/users", methods = ["POST"] }}
target = "auth"

[[routes]]
name = "api-users-admin-host"
match = {{ path_prefix = "/api/users", host = "admin.example.com" }}
target = "auth"

[[routes]]
name = "api-users"
match = {{ path_prefix = "/api/users" }}
target = "auth"

[[routes]]
name = "api-users-me"
match = {{ path = "/api/users/me" }}
target = "auth"

[[routes]]
name = "beta"
match = {{ path_prefix = "/beta", headers = {{ "x-beta" = "1" }} }}
target = "auth"
"#
    );
    let t = compile(&text).unwrap().table;
    assert_eq!(route_for(&t, "GET", "/api/x", None, &[]).as_deref(), Some("api"));
    assert_eq!(route_for(&t, "GET", "/api", None, &[]).as_deref(), Some("api"));
    assert_eq!(route_for(&t, "GET", "/apix", None, &[]), None);
    assert_eq!(route_for(&t, "POST", "/api/users/7", None, &[]).as_deref(), Some("api-users-post"));
    assert_eq!(route_for(&t, "GET", "/api/users/7", Some("admin.example.com"), &[]).as_deref(), Some("api-users-admin-host"));
    assert_eq!(route_for(&t, "GET", "/api/users/7", None, &[]).as_deref(), Some("api-users"));
    assert_eq!(route_for(&t, "POST", "/api/users/me", None, &[]).as_deref(), Some("api-users-me"));
    assert_eq!(route_for(&t, "GET", "/api/users/me/", None, &[]).as_deref(), Some("api-users"));
    // Dot segments cannot dodge a route.
    assert_eq!(route_for(&t, "GET", "/beta/../api/users/me", None, &[]).as_deref(), Some("api-users-me"));
    assert_eq!(route_for(&t, "GET", "/beta/x", None, &[("x-beta", "1")]).as_deref(), Some("beta"));
    assert_eq!(route_for(&t, "GET", "/beta/x", None, &[("x-beta", "2")]), None);
}

#[test]
fn diff_names_what_moved() {
    let old = compile(&format!("{BASE}\n[[routes]]\nname = \"auth\"\nmatch = {{ path_prefix = \"/auth\" }}\ntarget = \"auth\"\nmode = \"shadow\"\n\n[[routes]]\nname = \"old\"\nmatch = {{ path = \"/old\" }}\ntarget = \"auth\"\n")).unwrap().table;
    let new = compile(&format!("{BASE}\n[upstreams.chat]\nurl = \"http://127.0.0.1:4002\"\n\n[[routes]]\nname = \"auth\"\nmatch = {{ path_prefix = \"/auth\" }}\ntarget = \"auth\"\nmode = \"canary\"\npercent = 5\n\n[[routes]]\nname = \"chat\"\nmatch = {{ path = \"/graphql\" }}\ntarget = \"chat\"\nmode = \"shadow\"\n")).unwrap().table;
    insta::assert_snapshot!("diff", RouteTable::diff(&old, &new).to_string());
    assert!(RouteTable::diff(&new, &new).is_empty());
}

#[test]
fn lookup_uses_the_trie_for_large_tables() {
    let mut text = String::from(BASE);
    for i in 0..2000 {
        text.push_str(&format!("\n[[routes]]\nname = \"r{i}\"\nmatch = {{ path_prefix = \"/svc{i}/v1\" }}\ntarget = \"auth\"\n"));
    }
    let t = compile(&text).unwrap().table;
    assert_eq!(route_for(&t, "GET", "/svc1999/v1/items/3", None, &[]).as_deref(), Some("r1999"));
    assert_eq!(route_for(&t, "GET", "/svc1999/v2", None, &[]), None);
}

// ---- properties ----

/// The specification the trie must agree with: among routes whose conditions hold, the most
/// specific path wins, then the earliest in the file.
fn reference(routes: &[Arc<Route>], req: &RequestFacts<'_>) -> Option<usize> {
    let path = normalize_path(req.path);
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| path_holds(&r.matcher.path, &path) && conditions_hold(&r.matcher, req))
        .max_by(|(i, a), (j, b)| specificity(&a.matcher.path).cmp(&specificity(&b.matcher.path)).then(j.cmp(i)))
        .map(|(i, _)| i)
}

fn arb_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "api", "users", ".."]), 0..4)
        .prop_map(|segs| format!("/{}", segs.join("/")))
}

#[derive(Debug, Clone)]
struct ArbRoute {
    exact: bool,
    path: String,
    method: Option<&'static str>,
    header: Option<&'static str>,
}

fn arb_route() -> impl Strategy<Value = ArbRoute> {
    (
        any::<bool>(),
        arb_path(),
        prop::option::of(prop::sample::select(vec!["GET", "POST"])),
        prop::option::of(prop::sample::select(vec!["1", "2"])),
    )
        .prop_map(|(exact, path, method, header)| ArbRoute { exact, path: path.replace("..", "x"), method, header })
}

fn table_text(routes: &[ArbRoute]) -> String {
    let mut text = String::from(BASE);
    for (i, r) in routes.iter().enumerate() {
        let key = if r.exact { "path" } else { "path_prefix" };
        let mut m = format!("{key} = \"{}\"", r.path);
        if let Some(method) = r.method {
            m.push_str(&format!(", methods = [\"{method}\"]"));
        }
        if let Some(h) = r.header {
            m.push_str(&format!(", headers = {{ \"x-h\" = \"{h}\" }}"));
        }
        text.push_str(&format!("\n[[routes]]\nname = \"r{i}\"\nmatch = {{ {m} }}\ntarget = \"auth\"\n"));
    }
    text
}

proptest! {
    #[test]
    fn trie_agrees_with_reference_scan(routes in prop::collection::vec(arb_route(), 0..12), path in arb_path(), post in any::<bool>(), h in prop::option::of(prop::sample::select(vec!["1", "2"]))) {
        // Tables with dead routes are rejected by compile; those are tested elsewhere.
        let Ok(compiled) = compile(&table_text(&routes)) else { return Ok(()) };
        let t = compiled.table;
        let mut headers = HeaderMap::new();
        if let Some(h) = h { headers.insert("x-h", h.parse().unwrap()); }
        let method = if post { Method::POST } else { Method::GET };
        let path = crate::routing::normalize_path(&path);
        let facts = RequestFacts { method: &method, path: &path, host: None, headers: &headers };
        prop_assert_eq!(t.matcher.find(&t.routes, &facts), reference(&t.routes, &facts));
    }

    /// When no two routes share a path, file order cannot change the answer.
    #[test]
    fn answer_does_not_depend_on_order_of_distinct_paths(routes in prop::collection::vec(arb_route(), 1..10), path in arb_path(), seed in any::<u64>()) {
        let mut routes = routes;
        routes.sort_by(|a, b| (a.exact, &a.path).cmp(&(b.exact, &b.path)));
        routes.dedup_by(|a, b| a.exact == b.exact && a.path == b.path);
        let mut shuffled: Vec<(usize, ArbRoute)> = routes.iter().cloned().enumerate().collect();
        shuffled.sort_by_key(|(i, _)| (*i as u64).wrapping_mul(seed | 1).rotate_left(17));
        let a = compile(&table_text(&routes)).unwrap().table;
        let b_routes: Vec<ArbRoute> = shuffled.iter().map(|(_, r)| r.clone()).collect();
        let b = compile(&table_text(&b_routes)).unwrap().table;
        let headers = HeaderMap::new();
        let path = crate::routing::normalize_path(&path);
        let facts = RequestFacts { method: &Method::GET, path: &path, host: None, headers: &headers };
        let name_a = a.find(&facts).map(|r| {
            let i: usize = r.name.as_str()[1..].parse().unwrap();
            (routes[i].exact, routes[i].path.clone())
        });
        let name_b = b.find(&facts).map(|r| {
            let i: usize = r.name.as_str()[1..].parse().unwrap();
            (b_routes[i].exact, b_routes[i].path.clone())
        });
        prop_assert_eq!(name_a, name_b);
    }
}

/// See: issue 10, "Double writes on the monolith": copies of writes only go to upstreams that
/// declare `dry_run = true`, and check says where and why with the line of `writes`.
#[test]
fn dry_run_copies_only_to_upstreams_that_roll_them_back() {
    let route = |mode: &str, extra: &str| {
        format!("\n[[routes]]\nname = \"r\"\nmatch = {{ path_prefix = \"/r\" }}\ntarget = \"auth\"\nmode = \"{mode}\"\n{extra}\nshadow = {{ writes = \"dry-run\"{} }}\n", if mode == "extracted" { ", reverse = true" } else { "" })
    };
    let text = format!("{BASE}{}", route("canary", "percent = 5"));
    insta::assert_snapshot!("dry_run_unsupported", errors(&text));
    // the service declares it: shadow mode is fine; canary and reverse still copy to the monolith
    let declared = BASE.replace("health = \"/health\"", "health = \"/health\"\ndry_run = true");
    assert!(compile(&format!("{declared}{}", route("shadow", ""))).is_ok());
    for (mode, extra) in [("canary", "percent = 5"), ("extracted", "")] {
        let e = errors(&format!("{declared}{}", route(mode, extra)));
        assert!(e.contains("upstream `legacy`") && !e.contains("upstream `auth`"), "{mode}: {e}");
    }
    // reads only: nothing to declare
    assert!(compile(&format!(
        "{BASE}\n[[routes]]\nname = \"r\"\nmatch = {{ path_prefix = \"/r\" }}\ntarget = \"auth\"\nmode = \"canary\"\npercent = 5\n"
    ))
    .is_ok());
}

#[test]
fn edge_settings_errors() {
    let text = format!("[server]\nencoded_slash = \"decode\"\n\n[shadow]\ndry_run_secret_env = \"0123456789abcdef-secret\"\n{BASE}\n[upstreams.plain]\nurl = \"http://127.0.0.1:1\"\nca_file = \"ca.pem\"\n");
    let text = errors(&text);
    assert!(!text.contains("0123456789abcdef-secret"), "a secret pasted in the file was echoed: {text}");
    insta::assert_snapshot!("edge_settings", text);
    let warned = compile(&format!("{BASE}\n[upstreams.plain]\nurl = \"http://127.0.0.1:1\"\nca_file = \"ca.pem\"\n")).unwrap();
    assert!(warned.warnings.iter().any(|w| w.message.contains("ca_file` only applies to https")), "{:?}", warned.warnings);
}

fn compile_with_schema(text: &str) -> Result<Compiled, ConfigErrors> {
    let files = |name: &str| match name {
        "chat.graphql" => Ok(include_str!("../../../docs/api/chat.graphql").to_string()),
        other => Err(format!("{other}: No such file or directory")),
    };
    RouteTable::compile_with(Source::new("routes.toml", text), &files)
}

fn graphql_route(name: &str, fields: &str, extra: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\nmatch = {{ path = \"/graphql\", graphql_fields = {fields}{extra} }}\ntarget = \"auth\"\nmode = \"shadow\"\n")
}

/// See: issue 11, "`strangler check` validates field names against the schema".
#[test]
fn graphql_route_errors() {
    let text = format!(
        "[graphql]\nschema = \"chat.graphql\"\n{BASE}{}{}{}{}",
        graphql_route("reads", r#"["chats", "chatz", "messageAdded"]"#, ""),
        graphql_route("writes", r#"["chats", "sendMessage", "__schema"]"#, ""),
        graphql_route("more-subs", r#"["messageAdded"]"#, ""),
        "\n[[routes]]\nname = \"prefix\"\nmatch = { path_prefix = \"/graphql\", graphql_fields = [\"markRead\"], methods = [\"POST\"] }\ntarget = \"auth\"\n"
    );
    insta::assert_snapshot!("graphql_routes", errors_with_schema(&text));
    let missing = format!("[graphql]\nschema = \"nope.graphql\"\n{BASE}{}", graphql_route("r", r#"["chats"]"#, ""));
    assert!(errors_with_schema(&missing).contains("cannot use the GraphQL schema `nope.graphql`"));
}

fn errors_with_schema(text: &str) -> String {
    match compile_with_schema(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn graphql_routes_compile_to_claims_and_field_moves_show_in_diffs() {
    let before =
        format!("[graphql]\nschema = \"chat.graphql\"\n{BASE}{}", graphql_route("chat", r#"["chats", "chat", "messageAdded"]"#, ""));
    let after = format!(
        "[graphql]\nschema = \"chat.graphql\"\n{BASE}{}",
        graphql_route("chat", r#"["chats", "chat", "messageAdded", "sendMessage"]"#, "")
    );
    let (a, b) = (compile_with_schema(&before).unwrap().table, compile_with_schema(&after).unwrap().table);
    let p = &b.graphql_paths["/graphql"];
    assert_eq!(p.claims.len(), 4);
    assert_eq!(p.websocket, Some(0), "the route with the subscription field owns WebSocket upgrades");
    // a GraphQL route is not found by path alone
    let facts_path = "/graphql";
    let headers = HeaderMap::new();
    assert!(b.find(&RequestFacts { method: &Method::POST, path: facts_path, host: None, headers: &headers }).is_none());
    let diff = RouteTable::diff(&a, &b).to_string();
    assert!(diff.contains("~ GraphQL field `sendMessage` on /graphql: the default upstream → route `chat`"), "{diff}");
    // without a schema: a warning, and no WebSocket owner
    let plain = compile(&format!("{BASE}{}", graphql_route("chat", r#"["chats", "messageAdded"]"#, ""))).unwrap();
    assert!(plain.warnings.iter().any(|w| w.message.contains("without [graphql] schema")), "{:?}", plain.warnings);
    assert_eq!(plain.table.graphql_paths["/graphql"].websocket, None);
}

// ---- the migration plan ----

const PLAN: &str = r#"
[plan]
stages = [
  { name = "january", services = ["auth"] },
  { name = "february", services = ["chat", "notification"] },
  { name = "march", services = ["call", "payment"] },
]
"#;

#[test]
fn plan_labels_routes_and_lists_stages_in_order() {
    let text = format!(
        "{BASE}{PLAN}\n[[routes]]\nname = \"auth\"\nmatch = {{ path_prefix = \"/auth\" }}\ntarget = \"auth\"\nmode = \"extracted\"\nstage = \"january\"\n\n[[routes]]\nname = \"misc\"\nmatch = {{ path_prefix = \"/misc\" }}\ntarget = \"auth\"\n"
    );
    let compiled = compile(&text).unwrap();
    let t = &compiled.table;
    let stages: Vec<(&str, Vec<&str>)> = t.plan.iter().map(|s| (&*s.name, s.services.iter().map(String::as_str).collect())).collect();
    assert_eq!(stages, [("january", vec!["auth"]), ("february", vec!["chat", "notification"]), ("march", vec!["call", "payment"])]);
    assert_eq!(t.route("auth").unwrap().stage.as_deref(), Some("january"));
    assert_eq!(t.route("misc").unwrap().stage, None);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    insta::assert_snapshot!("plan_summary", t.summary());
    let json = t.to_json();
    assert_eq!(json["routes"][0]["stage"], "january");
    assert_eq!(json["plan"][0]["routes"][0], "auth");
    assert_eq!(json["plan"][2]["routes"].as_array().unwrap().len(), 0);
}

#[test]
fn plan_errors_point_at_the_stage() {
    // a typo'd stage (with a suggestion), a stage the plan lacks, a stage declared twice, bad
    // names, an unknown key in a stage
    let text = format!(
        r#"{BASE}
[plan]
stages = [
  {{ name = "january", services = ["auth"] }},
  {{ name = "february", services = ["chat", "no tification"] }},
  {{ name = "january" }},
  {{ name = " spaced", servcies = ["x"] }},
]

[[routes]]
name = "auth"
match = {{ path_prefix = "/auth" }}
target = "auth"
stage = "feburary"

[[routes]]
name = "other"
match = {{ path_prefix = "/other" }}
target = "auth"
stage = "june"
"#
    );
    insta::assert_snapshot!("plan_errors", errors(&text));
}

#[test]
fn a_stage_without_a_plan_and_an_empty_plan_are_errors() {
    let text = format!("{BASE}\n[[routes]]\nname = \"auth\"\ntarget = \"auth\"\nstage = \"january\"\n");
    insta::assert_snapshot!("stage_without_plan", errors(&text));
    let text = format!("{BASE}\n[plan]\nstages = []\n");
    insta::assert_snapshot!("empty_plan", errors(&text));
    // `[plan]` without `stages`: serde's message, at the table
    let text = format!("{BASE}\n[plan]\n");
    assert!(errors(&text).contains("missing field `stages`"), "{}", errors(&text));
}

#[test]
fn a_route_filed_under_another_month_than_its_service_warns() {
    let text = format!("{BASE}{PLAN}\n[[routes]]\nname = \"auth\"\ntarget = \"auth\"\nstage = \"march\"\n");
    let warnings: Vec<String> = compile(&text).unwrap().warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        ["routes.toml:19:9: warning: route `auth` is in stage `march`, but [plan] lists its target `auth` under stage `january`"]
    );
}

#[test]
fn diff_shows_stage_and_plan_changes() {
    let route = "\n[[routes]]\nname = \"auth\"\nmatch = { path_prefix = \"/auth\" }\ntarget = \"auth\"\nmode = \"extracted\"\n";
    let old = compile(&format!("{BASE}{route}")).unwrap().table;
    let new = compile(&format!("{BASE}{PLAN}{route}stage = \"january\"\n")).unwrap().table;
    assert_eq!(
        RouteTable::diff(&old, &new).to_string(),
        "~ route `auth`: stage (none) → january\n~ route `[plan]`: stages none → january (auth), february (chat, notification), march (call, payment)"
    );
    assert!(RouteTable::diff(&new, &new).is_empty());
}
