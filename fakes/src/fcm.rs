//! Firebase Cloud Messaging HTTP v1: `POST /v1/projects/{project}/messages:send`.
//!
//! Needs `Authorization: Bearer …`; answers `{"name": "projects/{p}/messages/{id}"}`. A token
//! beginning with `unregistered` gets FCM's 404 with `errorCode: UNREGISTERED`, so clients can
//! test cleaning up dead devices. Every accepted message is recorded with the millisecond it
//! arrived (`GET /_fake/fcm/messages`), so tests can measure delivery time.
//!
//! An outage: `POST /_fake/fcm/outage {"status": 500, "requests": 20}` makes the next 20 sends
//! answer 500 (FCM's `INTERNAL` error body) without recording them; `requests` omitted: until
//! `DELETE /_fake/fcm/outage`. `GET /_fake/fcm/outage` says how many were refused so far.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{bearer, error, id, list, now_ms, ok, FakeState};

pub(crate) fn router() -> Router<FakeState> {
    Router::new()
        .route("/v1/projects/{project}/messages:send", post(send))
        .route("/_fake/fcm/messages", get(messages))
        .route("/_fake/fcm/outage", post(start_outage).delete(end_outage).get(outage))
}

#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Outage {
    pub status: u16,
    /// sends still to refuse; `None`: until ended
    pub requests: Option<u64>,
    #[serde(default)]
    pub refused: u64,
}

async fn start_outage(State(s): State<FakeState>, Json(o): Json<Outage>) -> Response {
    if !(400..600).contains(&o.status) {
        return error(StatusCode::BAD_REQUEST, json!({ "error": "status must be an HTTP error status (400..599)" }));
    }
    s.with_db(|db| db.fcm_outage = Some(Outage { refused: 0, ..o }));
    ok(json!({ "outage": "started" }))
}

async fn end_outage(State(s): State<FakeState>) -> Response {
    let o = s.with_db(|db| db.fcm_outage.take());
    ok(json!({ "refused": o.map(|o| o.refused).unwrap_or(0) }))
}

async fn outage(State(s): State<FakeState>) -> Response {
    ok(json!({ "outage": s.with_db(|db| db.fcm_outage.clone()) }))
}

/// The status to refuse this send with, when an outage is on.
fn refused_by_outage(s: &FakeState) -> Option<u16> {
    s.with_db(|db| {
        let o = db.fcm_outage.as_mut()?;
        if o.requests == Some(0) {
            return None;
        }
        if let Some(n) = o.requests.as_mut() {
            *n -= 1;
        }
        o.refused += 1;
        Some(o.status)
    })
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
    if let Some(status) = refused_by_outage(&s) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return google_error(status, "Internal error encountered.", None);
    }
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
