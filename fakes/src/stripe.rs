//! Stripe: Customers, Checkout Sessions and Subscriptions (API shapes as of API version
//! 2024-06-20), form-encoded requests with `Authorization: Bearer sk_…`, Stripe's error shape,
//! and webhook events signed with the `Stripe-Signature: t=…,v1=…` scheme.
//!
//! Test controls: `POST /_fake/stripe/checkout/sessions/{id}/complete` pays a session (creates
//! the subscription and delivers `checkout.session.completed` and
//! `customer.subscription.created`), `POST /_fake/stripe/events/{id}/resend` redelivers an
//! event, `GET /_fake/stripe/events` lists events with their deliveries.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{bearer, error, id, now_secs, ok, FakeState};

pub const API_VERSION: &str = "2024-06-20";

#[derive(Default)]
pub(crate) struct Store {
    customers: BTreeMap<String, Value>,
    sessions: BTreeMap<String, Value>,
    subscriptions: BTreeMap<String, Value>,
    events: Vec<Value>,
    deliveries: Vec<Value>,
}

pub(crate) fn router() -> Router<FakeState> {
    Router::new()
        .route("/v1/customers", post(create_customer))
        .route("/v1/customers/{id}", get(get_customer))
        .route("/v1/checkout/sessions", post(create_session))
        .route("/v1/checkout/sessions/{id}", get(get_session))
        .route("/v1/subscriptions", post(create_subscription))
        .route("/v1/subscriptions/{id}", get(get_subscription).delete(cancel_subscription))
        .route("/_fake/stripe/checkout/sessions/{id}/complete", post(complete_session))
        .route("/_fake/stripe/events/{id}/resend", post(resend))
        .route("/_fake/stripe/events", get(list_events))
}

/// `v1` signature of a payload: hex HMAC-SHA256 of `"{t}.{payload}"` with the endpoint secret.
pub fn signature(secret: &str, timestamp: u64, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Stripe-Signature` header value for a payload sent at `timestamp`.
pub fn signature_header(secret: &str, timestamp: u64, payload: &str) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, payload))
}

type Params = Form<Vec<(String, String)>>;

fn param<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn metadata(p: &[(String, String)]) -> Value {
    let map: serde_json::Map<String, Value> = p
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata[").and_then(|r| r.strip_suffix(']')).map(|k| (k.to_string(), json!(v))))
        .collect();
    Value::Object(map)
}

fn stripe_error(status: StatusCode, message: String, param: Option<&str>, code: Option<&str>) -> Response {
    let mut e = json!({ "type": "invalid_request_error", "message": message });
    if let Some(p) = param {
        e["param"] = json!(p);
    }
    if let Some(c) = code {
        e["code"] = json!(c);
    }
    error(status, json!({ "error": e }))
}

fn missing(param: &str) -> Response {
    stripe_error(StatusCode::BAD_REQUEST, format!("Missing required param: {param}."), Some(param), Some("parameter_missing"))
}

fn not_found(kind: &str, id: &str) -> Response {
    stripe_error(StatusCode::NOT_FOUND, format!("No such {kind}: '{id}'"), Some("id"), Some("resource_missing"))
}

/// Stripe answers 401 without a `Bearer sk_…` key.
#[allow(clippy::result_large_err)] // the error is the response itself
fn authorize(headers: &HeaderMap) -> Result<(), Response> {
    match bearer(headers) {
        Some(k) if k.starts_with("sk_") => Ok(()),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            json!({ "error": { "type": "invalid_request_error", "message": "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')." } }),
        )),
    }
}

async fn create_customer(State(s): State<FakeState>, headers: HeaderMap, Form(p): Params) -> Response {
    if let Err(r) = authorize(&headers) {
        return r;
    }
    let c = json!({
        "id": id("cus_"), "object": "customer", "created": now_secs(), "livemode": false,
        "email": param(&p, "email"), "name": param(&p, "name"), "metadata": metadata(&p),
    });
    s.with_db(|db| db.stripe.customers.insert(c["id"].as_str().unwrap().to_string(), c.clone()));
    ok(c)
}

async fn get_customer(State(s): State<FakeState>, headers: HeaderMap, Path(cid): Path<String>) -> Response {
    if let Err(r) = authorize(&headers) {
        return r;
    }
    s.with_db(|db| db.stripe.customers.get(&cid).cloned()).map_or_else(|| not_found("customer", &cid), ok)
}

async fn create_session(State(s): State<FakeState>, headers: HeaderMap, Form(p): Params) -> Response {
    if let Err(r) = authorize(&headers) {
        return r;
    }
    let Some(mode) = param(&p, "mode") else { return missing("mode") };
    if !["payment", "setup", "subscription"].contains(&mode) {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "Invalid mode: must be one of payment, setup, or subscription".to_string(),
            Some("mode"),
            None,
        );
    }
    let Some(success_url) = param(&p, "success_url") else { return missing("success_url") };
    let Some(price) = param(&p, "line_items[0][price]") else { return missing("line_items") };
    let customer = param(&p, "customer");
    if let Some(c) = customer {
        if s.with_db(|db| !db.stripe.customers.contains_key(c)) {
            return not_found("customer", c);
        }
    }
    let sid = id("cs_test_");
    let session = json!({
        "id": sid, "object": "checkout.session", "created": now_secs(), "expires_at": now_secs() + 86_400, "livemode": false,
        "mode": mode, "status": "open", "payment_status": "unpaid",
        "customer": customer, "customer_email": param(&p, "customer_email"),
        "client_reference_id": param(&p, "client_reference_id"),
        "success_url": success_url, "cancel_url": param(&p, "cancel_url"),
        "url": format!("{}/_fake/stripe/pay/{sid}", s.settings.public_base),
        "subscription": null, "metadata": metadata(&p),
        "line_items_price": price,
        "quantity": param(&p, "line_items[0][quantity]").and_then(|q| q.parse::<u64>().ok()).unwrap_or(1),
    });
    s.with_db(|db| db.stripe.sessions.insert(sid.clone(), session.clone()));
    ok(public_session(&session))
}

/// The session as the API shows it (our bookkeeping fields removed).
fn public_session(session: &Value) -> Value {
    let mut v = session.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("line_items_price");
        o.remove("quantity");
    }
    v
}

async fn get_session(State(s): State<FakeState>, headers: HeaderMap, Path(sid): Path<String>) -> Response {
    if let Err(r) = authorize(&headers) {
        return r;
    }
    s.with_db(|db| db.stripe.sessions.get(&sid).map(public_session)).map_or_else(|| not_found("checkout.session", &sid), ok)
}

fn new_subscription(customer: &str, price: &str, quantity: u64, metadata: Value) -> Value {
    let now = now_secs();
    json!({
        "id": id("sub_"), "object": "subscription", "created": now, "livemode": false,
        "customer": customer, "status": "active", "cancel_at_period_end": false,
        "current_period_start": now, "current_period_end": now + 30 * 86_400,
        "items": { "object": "list", "data": [ { "id": id("si_"), "object": "subscription_item", "quantity": quantity,
            "price": { "id": price, "object": "price" } } ] },
        "metadata": metadata,
    })
}

async fn create_subscription(State(s): State<FakeState>, headers: HeaderMap, Form(p): Params) -> Response {
    if let Err(r) = authorize(&headers) {
        return r;
    }
    let Some(customer) = param(&p, "customer") else { return missing("customer") };
    let Some(price) = param(&p, "items[0][price]") else { return missing("items") };
    if s.with_db(|db| !db.stripe.customers.contains_key(customer)) {
        return not_found("customer", customer);
    }
    let sub = new_subscription(customer, price, 1, metadata(&p));
    s.with_db(|db| db.stripe.subscriptions.insert(sub["id"].as_str().unwrap().to_string(), sub.clone()));
    let event = record_event(&s, "customer.subscription.created", sub.clone());
    deliver(&s, &event).await;
    ok(sub)
}

async fn get_subscription(State(s): State<FakeState>, headers: HeaderMap, Path(sid): Path<String>) -> Response {
    if let Err(r) = authorize(&headers) {
        return r;
    }
    s.with_db(|db| db.stripe.subscriptions.get(&sid).cloned()).map_or_else(|| not_found("subscription", &sid), ok)
}

async fn cancel_subscription(State(s): State<FakeState>, headers: HeaderMap, Path(sid): Path<String>) -> Response {
    if let Err(r) = authorize(&headers) {
        return r;
    }
    let sub = s.with_db(|db| {
        let sub = db.stripe.subscriptions.get_mut(&sid)?;
        sub["status"] = json!("canceled");
        sub["canceled_at"] = json!(now_secs());
        Some(sub.clone())
    });
    let Some(sub) = sub else { return not_found("subscription", &sid) };
    let event = record_event(&s, "customer.subscription.deleted", sub.clone());
    deliver(&s, &event).await;
    ok(sub)
}

fn record_event(s: &FakeState, kind: &str, object: Value) -> Value {
    let event = json!({
        "id": id("evt_"), "object": "event", "api_version": API_VERSION, "created": now_secs(),
        "livemode": false, "pending_webhooks": 1, "type": kind, "data": { "object": object },
    });
    s.with_db(|db| db.stripe.events.push(event.clone()));
    event
}

/// Sends an event to the configured webhook, signed, and records the outcome.
async fn deliver(s: &FakeState, event: &Value) -> Value {
    let outcome = match &s.settings.stripe_webhook_url {
        None => json!({ "event": event["id"], "skipped": "no webhook url configured" }),
        Some(url) => {
            let payload = event.to_string();
            let header = signature_header(&s.settings.stripe_webhook_secret, now_secs(), &payload);
            let sent = s
                .http
                .post(url)
                .header("content-type", "application/json; charset=utf-8")
                .header("stripe-signature", header)
                .header("user-agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
                .body(payload)
                .send()
                .await;
            match sent {
                Ok(r) => json!({ "event": event["id"], "status": r.status().as_u16() }),
                Err(e) => json!({ "event": event["id"], "error": e.to_string() }),
            }
        }
    };
    s.with_db(|db| db.stripe.deliveries.push(outcome.clone()));
    outcome
}

async fn complete_session(State(s): State<FakeState>, Path(sid): Path<String>) -> Response {
    let done = s.with_db(|db| {
        let session = db.stripe.sessions.get(&sid)?.clone();
        if session["status"] != "open" {
            return Some(Err(session));
        }
        let customer = session["customer"].as_str().map(str::to_string).unwrap_or_else(|| {
            // Checkout creates the customer when none was passed.
            let c = json!({ "id": id("cus_"), "object": "customer", "created": now_secs(), "livemode": false,
                "email": session["customer_email"], "name": null, "metadata": {} });
            let cid = c["id"].as_str().unwrap().to_string();
            db.stripe.customers.insert(cid.clone(), c);
            cid
        });
        let sub = (session["mode"] == "subscription").then(|| {
            let sub = new_subscription(
                &customer,
                session["line_items_price"].as_str().unwrap_or(""),
                session["quantity"].as_u64().unwrap_or(1),
                session["metadata"].clone(),
            );
            db.stripe.subscriptions.insert(sub["id"].as_str().unwrap().to_string(), sub.clone());
            sub
        });
        let stored = db.stripe.sessions.get_mut(&sid)?;
        stored["status"] = json!("complete");
        stored["payment_status"] = json!("paid");
        stored["customer"] = json!(customer);
        stored["subscription"] = sub.as_ref().map_or(Value::Null, |s| s["id"].clone());
        Some(Ok((public_session(stored), sub)))
    });
    let (session, sub) = match done {
        None => return not_found("checkout.session", &sid),
        Some(Err(session)) => {
            return stripe_error(StatusCode::BAD_REQUEST, format!("session is {}, not open", session["status"]), None, None)
        }
        Some(Ok(x)) => x,
    };
    let mut events = vec![record_event(&s, "checkout.session.completed", session)];
    if let Some(sub) = sub {
        events.push(record_event(&s, "customer.subscription.created", sub));
    }
    let mut deliveries = Vec::new();
    for e in &events {
        deliveries.push(deliver(&s, e).await);
    }
    ok(json!({ "events": events, "deliveries": deliveries }))
}

async fn resend(State(s): State<FakeState>, Path(eid): Path<String>) -> Response {
    let Some(event) = s.with_db(|db| db.stripe.events.iter().find(|e| e["id"] == eid).cloned()) else { return not_found("event", &eid) };
    ok(deliver(&s, &event).await)
}

async fn list_events(State(s): State<FakeState>) -> Response {
    s.with_db(|db| ok(json!({ "events": db.stripe.events, "deliveries": db.stripe.deliveries })))
}
