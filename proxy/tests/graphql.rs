//! GraphQL-aware routes (issue 11, "At the edge"): one `/graphql` endpoint split by root field
//! between the monolith and a service, through a real proxy and real upstreams (the echo servers
//! answer with what they received, so the tests see who served a request and with what body).

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The chat fields of docs/api/chat.graphql, split as a cut-over does: reads and the
/// subscription first, writes later.
const READS: &str = r#"["chats", "chat", "messages", "messageAdded"]"#;

fn table(legacy: &TestUpstream, svc: &TestUpstream, dir: &std::path::Path, route_extra: &str, graphql_extra: &str) -> String {
    table_to(legacy, &svc.url(), dir, route_extra, graphql_extra)
}

fn table_to(legacy: &TestUpstream, svc_url: &str, dir: &std::path::Path, route_extra: &str, graphql_extra: &str) -> String {
    std::fs::write(dir.join("chat.graphql"), include_str!("../../docs/api/chat.graphql")).unwrap();
    format!(
        "[graphql]\nschema = \"{}\"\n{graphql_extra}\n{}",
        dir.join("chat.graphql").display(),
        Routes::new()
            .upstream("legacy", &legacy.url())
            .dry_run_upstream("chat", svc_url)
            .raw(&format!(
                "[[routes]]\nname = \"chat\"\nmatch = {{ path = \"/graphql\", graphql_fields = {READS} }}\ntarget = \"chat\"\nmode = \"extracted\"\n{route_extra}\n"
            ))
            .build()
    )
}

async fn post(proxy: &Proxy, body: Value) -> (String, Value) {
    let r = reqwest::Client::new().post(proxy.url("/graphql")).json(&body).send().await.unwrap();
    let by = r.headers().get("x-served-by").map(|v| v.to_str().unwrap().to_string()).unwrap_or_else(|| format!("status {}", r.status()));
    (by, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_go_to_the_owner_of_their_root_fields() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("chat").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&table(&legacy, &svc, dir.path(), "", "")).await;

    for (what, body, owner) in [
        ("a query on claimed fields", json!({ "query": "{ chats { id } }" }), "chat"),
        (
            "aliases and __typename",
            json!({ "query": "query Q($id: ID!) { a: chat(id: $id) { id } b: messages(chatId: $id) { pageInfo { hasNextPage } } __typename }", "variables": { "id": "x" } }),
            "chat",
        ),
        (
            "fragments on the root type",
            json!({ "query": "{ ...F } fragment F on Query { chats { id } ... on Query { chat(id: 1) { id } } }" }),
            "chat",
        ),
        (
            "the named operation of several",
            json!({ "query": "query A { chats { id } } mutation B { sendMessage(input: {}) { id } }", "operationName": "A" }),
            "chat",
        ),
        (
            "a mutation not moved yet",
            json!({ "query": "query A { chats { id } } mutation B { sendMessage(input: {}) { id } }", "operationName": "B" }),
            "legacy",
        ),
        ("fields of two owners", json!({ "query": "{ chats { id } createChat(input: {memberIds: []}) { id } }" }), "legacy"),
        ("introspection", json!({ "query": "{ __schema { queryType { name } } }" }), "legacy"),
        ("a syntax error", json!({ "query": "{ chats { id }" }), "legacy"),
        ("a batch", json!([{ "query": "{ chats { id } }" }]), "legacy"),
        ("a persisted query by hash", json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "ab" } } }), "legacy"),
    ] {
        let (by, echo) = post(&proxy, body.clone()).await;
        assert_eq!(by, owner, "{what}");
        // the body read at the edge reaches the upstream whole
        let sent = body.to_string();
        assert_eq!(echo["body_sha256"], sha256_hex(sent.as_bytes()), "{what}: the body changed on its way");
    }

    // GET: the query string
    let url = format!("{}?query={}", proxy.url("/graphql"), "%7B%20chats%20%7B%20id%20%7D%20%7D");
    assert_eq!(served_by(&reqwest::Client::new(), &url).await, "chat");
    // a body too large to read, or not JSON, goes to the monolith unread
    let big = json!({ "query": format!("{{ chats {{ id }} }} #{}", "x".repeat(70_000)) });
    assert_eq!(post(&proxy, big).await.0, "legacy");
    let r = reqwest::Client::new()
        .post(proxy.url("/graphql"))
        .header("content-type", "application/graphql")
        .body("{ chats { id } }")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-served-by"], "legacy");

    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    for series in [
        "strangler_graphql_operations_total{outcome=\"owned\",reason=\"\"} 5",
        "strangler_graphql_operations_total{outcome=\"mixed\",reason=\"\"} 1",
        "strangler_graphql_operations_total{outcome=\"unread\",reason=\"batch\"} 1",
        "strangler_graphql_operations_total{outcome=\"unread\",reason=\"too_large\"} 1",
        "strangler_graphql_operations_total{outcome=\"unread\",reason=\"not_graphql\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }

    // the subscription's WebSocket goes to the owner of the Subscription fields
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/graphql", proxy.addr)).await.unwrap();
    assert_eq!(resp.headers()["x-served-by"], "chat");
    ws.close(None).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
}

/// See docs/routes.md: once the monolith no longer serves a service's fields, operations that
/// span owners are refused with a GraphQL error instead of reaching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_operations_can_be_refused() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("chat").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&table(&legacy, &svc, dir.path(), "", "mixed = \"reject\"")).await;
    let r =
        reqwest::Client::new().post(proxy.url("/graphql")).json(&json!({ "query": "{ chats { id } me { id } }" })).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["extensions"]["code"], "OPERATION_SPANS_SERVICES", "{v}");
    let message = v["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("chats (`chat`)") && message.contains("me (the monolith)"), "{message}");
    assert_eq!(legacy.hits() + svc.hits(), 0);
}

/// Canary by user works for GraphQL as for REST: the JWT `sub` of the bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_user_holds_for_graphql() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("chat").await;
    let dir = tempfile::tempdir().unwrap();
    let body = table(&legacy, &svc, dir.path(), "", "").replace("mode = \"extracted\"", "mode = \"canary\"\npercent = 50");
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    let mut sides = std::collections::BTreeMap::new();
    for u in 0..40 {
        let token = jwt_for(&format!("user-{u}"));
        for _ in 0..3 {
            let r = c.post(proxy.url("/graphql")).bearer_auth(&token).json(&json!({ "query": "{ chats { id } }" })).send().await.unwrap();
            let by = r.headers()["x-served-by"].to_str().unwrap().to_string();
            assert_eq!(sides.entry(u).or_insert_with(|| by.clone()), &by, "user-{u} switched sides");
        }
    }
    let on_chat = sides.values().filter(|s| *s == "chat").count();
    assert!((8..=32).contains(&on_chat), "{on_chat} of 40 users on the canary at 50%");
}

/// A query is idempotent even over POST: when the service fails it falls back like a GET; a
/// mutation gets the service's answer; the proxy's own errors on a GraphQL path are GraphQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_fall_back_mutations_do_not_and_errors_are_graphql() {
    let legacy = TestUpstream::start("legacy").await;
    let svc = TestUpstream::start("chat").await;
    let dir = tempfile::tempdir().unwrap();
    // the service's "/graphql" answers come from the echo, whose /status/{code} answers that code:
    // claim the fields on /status/503 so the service answers 503 to everything there
    let body = table(&legacy, &svc, dir.path(), "", "").replace("path = \"/graphql\"", "path = \"/status/503\"");
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    let query = json!({ "query": "{ chats { id } }" });
    let r = c.post(proxy.url("/status/503")).json(&query).send().await.unwrap();
    assert_eq!(r.headers()["x-served-by"], "legacy", "a query answered 503 by the service is retried on the monolith");
    let r =
        c.post(proxy.url("/status/503")).json(&json!({ "query": "subscription { messageAdded(chatId: 1) { id } }" })).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-served-by"].to_str().unwrap()), (503, "chat"), "not a query: not replayed");

    // a dead service without fallback: the proxy's 502 is a GraphQL error
    let (dead, _keep_it_dead) = dead_addr();
    let strict = Proxy::start(&table_to(&legacy, &format!("http://{dead}"), dir.path(), "fallback = false", "")).await;
    let r = c.post(strict.url("/graphql")).json(&query).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["extensions"]["code"], "BAD_GATEWAY", "{v}");
    assert_eq!(v["data"], Value::Null);
}

/// A claimed mutation stays with its owner even when the service is down and never saw it (no
/// fallback to the monolith's store): the client gets a GraphQL error; a query on the same route
/// falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_for_a_dead_service_gets_a_graphql_error_not_the_monolith() {
    let legacy = TestUpstream::start("legacy").await;
    let dir = tempfile::tempdir().unwrap();
    let (dead, _keep_it_dead) = dead_addr();
    let body =
        table_to(&legacy, &format!("http://{dead}"), dir.path(), "", "").replace(r#""messageAdded"]"#, r#""messageAdded", "sendMessage"]"#);
    let proxy = Proxy::start(&body).await;
    let c = reqwest::Client::new();
    let r = c.post(proxy.url("/graphql")).json(&json!({ "query": "{ chats { id } }" })).send().await.unwrap();
    assert_eq!(r.headers()["x-served-by"], "legacy", "a query falls back");
    let m = json!({ "query": "mutation { sendMessage(input: {chatId: 1, body: \"hi\", clientMessageId: \"c\"}) { id } }" });
    let r = c.post(proxy.url("/graphql")).json(&m).send().await.unwrap();
    assert!(r.headers().get("x-served-by").is_none(), "the monolith did not get the mutation");
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["extensions"]["code"], "BAD_GATEWAY", "{v}");
    assert_eq!(legacy.hits(), 1, "only the query reached the monolith");
}
