//! Firebase Cloud Messaging HTTP v1: `POST /v1/projects/{project}/messages:send`.
//!
//! Needs `Authorization: Bearer …`; answers `{"name": "projects/{p}/messages/{id}"}`. A token
//! beginning with `unregistered` gets FCM's 404 with `errorCode: UNREGISTERED`, so clients can
//! test cleaning up dead devices. Every accepted message is recorded with the millisecond it
//! arrived (`GET /_fake/fcm/messages`), so tests can measure delivery time.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{bearer, error, id, list, now_ms, ok, FakeState};

pub(crate) fn router() -> Router<FakeState> {
    Router::new().route("/v1/projects/{project}/messages:send", post(send)).route("/_fake/fcm/messages", get(messages))
}

fn google_error(status: StatusCode, message: &str, error_code: Option<&str>) -> Response {
    let status_name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        404 => "NOT_FOUND",
        _ => "INTERNAL",
    };
    let mut e = json!({ "code": status.as_u16(), "message": message, "status": status_name });
    if let Some(code) = error_code {
        e["details"] = json!([{ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code }]);
    }
    error(status, json!({ "error": e }))
}

async fn send(State(s): State<FakeState>, Path(project): Path<String>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    if bearer(&headers).is_none() {
        return google_error(StatusCode::UNAUTHORIZED, "Request is missing required authentication credential.", None);
    }
    let Some(Json(body)) = body else {
        return google_error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.", Some("INVALID_ARGUMENT"));
    };
    let message = &body["message"];
    let target = ["token", "topic", "condition"].iter().find_map(|k| message[*k].as_str());
    let Some(target) = target else {
        return google_error(StatusCode::BAD_REQUEST, "Request contains an invalid argument.", Some("INVALID_ARGUMENT"));
    };
    if target.starts_with("unregistered") {
        return google_error(StatusCode::NOT_FOUND, "Requested entity was not found.", Some("UNREGISTERED"));
    }
    let name = format!("projects/{project}/messages/{}", id(""));
    s.with_db(|db| db.fcm.push(json!({ "name": name, "project": project, "received_at_ms": now_ms() as u64, "message": message })));
    ok(json!({ "name": name }))
}

async fn messages(State(s): State<FakeState>) -> Response {
    list(s.with_db(|db| db.fcm.clone()))
}
