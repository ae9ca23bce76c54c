//! Subscriptions (and any operation) over the WebSocket on `/graphql`, speaking
//! `graphql-transport-ws` as the monolith's server does (graphql-ws 5 under NestJS,
//! `legacy/src/chat/chat.module.ts`), message for message and close code for close code:
//!
//! * `connection_init` within 3 s (else close `4408`), once (else `4429`), with
//!   `{authorization: "Bearer <access token>"}` (else `4403 Forbidden`); then `connection_ack`;
//! * `subscribe` before the ack: `4401`; an id in use: `4409 Subscriber for <id> already exists`;
//!   a malformed message: `4400 Invalid message received`; a query that does not parse: `4500`;
//! * an operation that does not validate: one `error` message (graphql-js's errors, no codes);
//!   variables that do not coerce, or a subscription refused (not a member, unknown chat): one
//!   `next` with `errors` only, then `complete`; events: `next` with the data as selected;
//! * the client's `complete` stops a subscription silently; `ping` gets `pong`;
//! * a WebSocket ping every 12 s; a client that has not answered the previous one is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::parser::types::OperationType;
use async_graphql::Variables;
use axum::extract::ws::{CloseFrame, Message as Ws, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::answer::{format_errors, ran};
use crate::schema::Caller;
use crate::{graphqljs, shape, Endpoint};

const INIT_TIMEOUT: Duration = Duration::from_secs(3);
const KEEP_ALIVE: Duration = Duration::from_secs(12);
/// Frames waiting for a slow client before its subscriptions wait in turn.
const OUTBOX: usize = 64;

type Subscriptions = Arc<Mutex<HashMap<String, Option<AbortHandle>>>>;

/// The frames the server sends, in graphql-ws's key order.
fn frame(id: Option<&str>, kind: &str, payload: Option<&[u8]>) -> Ws {
    let mut s = String::from("{");
    if let Some(id) = id {
        s.push_str("\"id\":");
        s.push_str(&serde_json::to_string(id).expect("a string serialises"));
        s.push(',');
    }
    s.push_str("\"type\":\"");
    s.push_str(kind);
    s.push('"');
    if let Some(p) = payload {
        s.push_str(",\"payload\":");
        s.push_str(&String::from_utf8_lossy(p));
    }
    s.push('}');
    Ws::Text(s.into())
}

fn close(code: u16, reason: &str) -> Ws {
    // a close reason is at most 123 bytes (graphql-ws's limitCloseReason)
    let reason = if reason.len() > 123 { "Internal server error" } else { reason };
    Ws::Close(Some(CloseFrame { code, reason: reason.to_string().into() }))
}

/// A client message, checked as graphql-ws's `parseMessage` checks it.
enum ClientMessage {
    Init(Option<Value>),
    Ping(Option<Value>),
    Pong,
    Subscribe { id: String, query: String, variables: async_graphql::Value, operation_name: Option<String> },
    Complete(String),
}

fn parse_message(text: &str) -> Option<ClientMessage> {
    let v: Value = serde_json::from_str(text).ok()?;
    let obj = v.as_object()?;
    let kind = obj.get("type")?.as_str()?;
    let payload_object_or_nullish = |p: Option<&Value>| p.is_none_or(|p| p.is_null() || p.is_object());
    let id = || obj.get("id").and_then(Value::as_str).filter(|i| !i.is_empty()).map(str::to_string);
    Some(match kind {
        "connection_init" | "ping" | "pong" => {
            if !payload_object_or_nullish(obj.get("payload")) {
                return None;
            }
            let payload = obj.get("payload").filter(|p| p.is_object()).cloned();
            match kind {
                "connection_init" => ClientMessage::Init(payload),
                "ping" => ClientMessage::Ping(payload),
                _ => ClientMessage::Pong,
            }
        }
        "subscribe" => {
            let id = id()?;
            let p = obj.get("payload")?.as_object()?;
            let query = p.get("query")?.as_str()?.to_string();
            let nullish_or = |k: &str, ok: fn(&Value) -> bool| p.get(k).is_none_or(|v| v.is_null() || ok(v));
            if !nullish_or("variables", Value::is_object)
                || !nullish_or("operationName", Value::is_string)
                || !nullish_or("extensions", Value::is_object)
            {
                return None;
            }
            // again from the text: graphql-js quotes values in the client's key order
            #[derive(serde::Deserialize)]
            struct Ordered {
                #[serde(default)]
                payload: Option<OrderedPayload>,
            }
            #[derive(serde::Deserialize)]
            struct OrderedPayload {
                #[serde(default)]
                variables: Option<async_graphql::Value>,
            }
            let variables =
                serde_json::from_str::<Ordered>(text).ok().and_then(|o| o.payload?.variables).unwrap_or(async_graphql::Value::Null);
            let operation_name = p.get("operationName").and_then(Value::as_str).map(str::to_string);
            ClientMessage::Subscribe { id, query, variables, operation_name }
        }
        "complete" => ClientMessage::Complete(id()?),
        _ => return None,
    })
}

/// Serves one upgraded socket until either side closes it.
pub async fn serve(socket: WebSocket, s: Endpoint, offered: bool) {
    let (mut sink, mut stream) = socket.split();
    if !offered {
        let _ = sink.send(close(4406, "Subprotocol not acceptable")).await;
        return;
    }
    metrics::gauge!("chat_websockets_open").increment(1.0);
    let (out, mut outbox) = mpsc::channel::<Ws>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            let closing = matches!(frame, Ws::Close(_));
            if sink.send(frame).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let subs: Subscriptions = Arc::default();
    let mut caller = Caller(None);
    let mut init_received = false;
    let mut acknowledged = false;
    let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let mut awaiting_pong = false;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = &mut init_deadline, if !init_received => {
                let _ = out.send(close(4408, "Connection initialisation timeout")).await;
                break;
            }
            _ = keep_alive.tick() => {
                if awaiting_pong {
                    // the client is gone without a close: drop it
                    break;
                }
                awaiting_pong = true;
                if out.send(Ws::Ping(Default::default())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let text = match msg {
            None | Some(Err(_)) => break,
            Some(Ok(Ws::Close(frame))) => {
                // answer the close with its code, as the ws library does
                let code = frame.as_ref().map_or(1000, |f| f.code);
                let _ = out.send(Ws::Close(Some(CloseFrame { code, reason: Default::default() }))).await;
                break;
            }
            Some(Ok(Ws::Pong(_))) => {
                awaiting_pong = false;
                continue;
            }
            Some(Ok(Ws::Ping(_))) => continue, // answered by the WebSocket layer
            Some(Ok(Ws::Text(t))) => t.to_string(),
            Some(Ok(Ws::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
        };
        let Some(message) = parse_message(&text) else {
            let _ = out.send(close(4400, "Invalid message received")).await;
            break;
        };
        match message {
            ClientMessage::Init(payload) => {
                if init_received {
                    let _ = out.send(close(4429, "Too many initialisation requests")).await;
                    break;
                }
                init_received = true;
                match authenticate(&s, payload.as_ref()).await {
                    Some(id) => caller = Caller(Some(id)),
                    None => {
                        let _ = out.send(close(4403, "Forbidden")).await;
                        break;
                    }
                }
                acknowledged = true;
                let _ = out.send(frame(None, "connection_ack", None)).await;
            }
            ClientMessage::Ping(payload) => {
                let body = payload.map(|p| serde_json::to_vec(&p).expect("json"));
                let _ = out.send(frame(None, "pong", body.as_deref())).await;
            }
            ClientMessage::Pong => {}
            ClientMessage::Subscribe { id, query, variables, operation_name } => {
                if !acknowledged {
                    let _ = out.send(close(4401, "Unauthorized")).await;
                    break;
                }
                let taken = {
                    let mut map = subs.lock().unwrap_or_else(|e| e.into_inner());
                    let taken = map.contains_key(&id);
                    if !taken {
                        map.insert(id.clone(), None);
                    }
                    taken
                };
                if taken {
                    let _ = out.send(close(4409, &format!("Subscriber for {id} already exists"))).await;
                    break;
                }
                let doc = match async_graphql::parser::parse_query(&query) {
                    Ok(d) => d,
                    Err(e) => {
                        // graphql-js's parse throws inside graphql-ws: the socket closes 4500
                        let reason = if s.app.cfg.introspection { format!("Syntax Error: {e}") } else { "Internal server error".into() };
                        let _ = out.send(close(4500, &reason)).await;
                        break;
                    }
                };
                let op = Operation { id: id.clone(), query, variables, operation_name, doc, caller };
                let task = tokio::spawn(run(s.clone(), op, out.clone(), subs.clone()));
                if let Some(slot) = subs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
                    *slot = Some(task.abort_handle());
                }
            }
            ClientMessage::Complete(id) => {
                // stops the operation; nothing is sent back
                if let Some(Some(task)) = subs.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                    task.abort();
                }
            }
        }
    }
    for (_, task) in subs.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        if let Some(t) = task {
            t.abort();
        }
    }
    drop(out);
    let _ = writer.await;
    metrics::gauge!("chat_websockets_open").decrement(1.0);
}

/// The user of a `connection_init` payload's `authorization` (or `Authorization`) token.
async fn authenticate(s: &Endpoint, payload: Option<&Value>) -> Option<uuid::Uuid> {
    let p = payload?;
    let header = p.get("authorization").and_then(Value::as_str).or_else(|| p.get("Authorization").and_then(Value::as_str))?;
    let token = bm_common::jwt::bearer_token(header)?;
    s.app.verifier.verify(token).await.ok()?.sub.parse().ok()
}

struct Operation {
    id: String,
    query: String,
    variables: async_graphql::Value,
    operation_name: Option<String>,
    doc: async_graphql::parser::types::ExecutableDocument,
    caller: Caller,
}

/// One operation of a socket: a subscription's events, or a query's or mutation's one result.
async fn run(s: Endpoint, op: Operation, out: mpsc::Sender<Ws>, subs: Subscriptions) {
    let live = |subs: &Subscriptions, id: &str| subs.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id);
    let kind = shape::operation(&op.doc, op.operation_name.as_deref()).map(|o| o.node.ty);
    let model = shape::Model::recorded();
    let checks = graphqljs::Prechecks::new(model, &op.doc, op.operation_name.as_deref(), &op.variables);
    let query = op.query.clone();
    let mut request =
        async_graphql::Request::new(op.query).variables(Variables::from_value(op.variables.clone())).data(op.caller).data(checks);
    if let Some(name) = &op.operation_name {
        request = request.operation_name(name);
    }
    let shape_data = |data: &async_graphql::Value| {
        shape::shape(model, &op.doc, op.operation_name.as_deref(), &op.variables, data).unwrap_or_else(|| data.clone())
    };
    if kind == Some(OperationType::Subscription) {
        let mut responses = s.schema.execute_stream(request);
        let mut first = true;
        while let Some(r) = responses.next().await {
            if !live(&subs, &op.id) {
                return;
            }
            if first && !ran(&r) {
                match crate::answer::refused_ws(model, &query, r.errors) {
                    Ok(next) => {
                        let _ = out.send(frame(Some(&op.id), "next", Some(&next))).await;
                        break;
                    }
                    Err(errors) => {
                        // graphql-ws: an `error` message, and no `complete`
                        let _ = out.send(frame(Some(&op.id), "error", Some(&errors))).await;
                        subs.lock().unwrap_or_else(|e| e.into_inner()).remove(&op.id);
                        return;
                    }
                }
            }
            // the subscription was refused (its resolver failed): `errors` only, then `complete`
            let refused = first && r.data == async_graphql::Value::Null && !r.errors.is_empty();
            first = false;
            let data = (!refused).then(|| shape_data(&r.data));
            let body = crate::answer::render_payload(&format_errors(r.errors, None), data.as_ref());
            if out.send(frame(Some(&op.id), "next", Some(&body))).await.is_err() {
                return;
            }
            if refused {
                break;
            }
        }
    } else {
        // a query or mutation over the socket: its own transaction, as over HTTP
        let tx = bm_common::dryrun::RequestTx::new(s.app.pool.clone());
        let r = s.schema.execute(request.data(tx.clone())).await;
        if let Err(e) = tx.complete(true).await {
            tracing::error!(error = %e, "committing a WebSocket operation failed");
        }
        if !live(&subs, &op.id) {
            return;
        }
        let body = if !ran(&r) {
            match crate::answer::refused_ws(model, &query, r.errors) {
                Ok(next) => next,
                Err(errors) => {
                    let _ = out.send(frame(Some(&op.id), "error", Some(&errors))).await;
                    subs.lock().unwrap_or_else(|e| e.into_inner()).remove(&op.id);
                    return;
                }
            }
        } else {
            let data = shape_data(&r.data);
            crate::answer::render_payload(&format_errors(r.errors, None), Some(&data))
        };
        let _ = out.send(frame(Some(&op.id), "next", Some(&body))).await;
    }
    if subs.lock().unwrap_or_else(|e| e.into_inner()).remove(&op.id).is_some() {
        let _ = out.send(frame(Some(&op.id), "complete", None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_checked_as_graphql_ws_checks_them() {
        assert!(matches!(
            parse_message(r#"{"type":"connection_init","payload":{"authorization":"Bearer x"}}"#),
            Some(ClientMessage::Init(Some(_)))
        ));
        assert!(matches!(parse_message(r#"{"type":"connection_init"}"#), Some(ClientMessage::Init(None))));
        assert!(parse_message(r#"{"type":"connection_init","payload":"x"}"#).is_none());
        assert!(parse_message(r#"{"type":"subscribe","id":"","payload":{"query":"{a}"}}"#).is_none());
        assert!(parse_message(r#"{"type":"subscribe","id":"1","payload":{"query":"{a}","variables":"x"}}"#).is_none());
        assert!(matches!(
            parse_message(r#"{"type":"subscribe","id":"1","payload":{"query":"{a}","variables":null,"operationName":"A"}}"#),
            Some(ClientMessage::Subscribe { .. })
        ));
        assert!(matches!(parse_message(r#"{"type":"complete","id":"1"}"#), Some(ClientMessage::Complete(_))));
        assert!(parse_message(r#"{"type":"start","id":"1"}"#).is_none());
        assert!(parse_message("[1]").is_none());
        assert!(parse_message("not json").is_none());
    }

    #[test]
    fn frames_have_graphql_ws_key_order() {
        let Ws::Text(t) = frame(Some("1"), "next", Some(br#"{"data":{}}"#)) else { panic!() };
        assert_eq!(t.as_str(), r#"{"id":"1","type":"next","payload":{"data":{}}}"#);
        let Ws::Text(t) = frame(None, "connection_ack", None) else { panic!() };
        assert_eq!(t.as_str(), r#"{"type":"connection_ack"}"#);
    }
}
