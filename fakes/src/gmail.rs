//! Gmail API `users.messages.send`: `POST /gmail/v1/users/{userId}/messages/send` with
//! `{"raw": base64url(RFC 2822 message)}` and a bearer token. Sent messages are decoded and
//! recorded (`GET /_fake/gmail/messages`: to, from, subject, body), so tests can read the
//! password-reset link a user would receive.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use crate::{bearer, error, id, list, now_ms, ok, FakeState};

pub(crate) fn router() -> Router<FakeState> {
    Router::new().route("/gmail/v1/users/{user}/messages/send", post(send)).route("/_fake/gmail/messages", get(messages))
}

fn google_error(status: StatusCode, message: &str) -> Response {
    error(
        status,
        json!({ "error": { "code": status.as_u16(), "message": message, "status": if status == StatusCode::UNAUTHORIZED { "UNAUTHENTICATED" } else { "INVALID_ARGUMENT" } } }),
    )
}

/// Splits an RFC 2822 message into lowercase header names with values, and the body.
pub fn parse_message(text: &str) -> (Vec<(String, String)>, String) {
    let (head, body) = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n")).unwrap_or((text, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (headers, body.to_string())
}

async fn send(State(s): State<FakeState>, Path(user): Path<String>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if bearer(&headers).is_none() {
        return google_error(StatusCode::UNAUTHORIZED, "Request is missing required authentication credential.");
    }
    let raw = body.as_ref().and_then(|Json(b)| b["raw"].as_str()).unwrap_or("");
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Ok(bytes) = engine.decode(raw.trim_end_matches('=')) else {
        return google_error(StatusCode::BAD_REQUEST, "Invalid value for ByteString");
    };
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (hs, body) = parse_message(&text);
    let get = |k: &str| hs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(to) = get("to") else { return google_error(StatusCode::BAD_REQUEST, "Invalid To header") };
    let msg_id = id("");
    s.with_db(|db| {
        db.gmail.push(json!({ "id": msg_id, "user": user, "to": to, "from": get("from"), "subject": get("subject"),
            "body": body, "raw": text, "received_at_ms": now_ms() as u64 }))
    });
    ok(json!({ "id": msg_id, "threadId": msg_id, "labelIds": ["SENT"] }))
}

async fn messages(State(s): State<FakeState>) -> Response {
    list(s.with_db(|db| db.gmail.clone()))
}
