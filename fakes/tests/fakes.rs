//! Each fake answered over real HTTP on an ephemeral loopback port.

use std::sync::{Arc, Mutex};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

struct Fakes {
    base: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn start(webhook: Option<String>) -> Fakes {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = fakes::FakeState::new(fakes::Settings {
        public_base: base.clone(),
        stripe_webhook_url: webhook,
        stripe_webhook_secret: "whsec_test".into(),
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(fakes::run(listener, state, async {
        let _ = rx.await;
    }));
    Fakes { base, _shutdown: tx }
}

/// A webhook receiver that checks signatures with its own HMAC, as a Stripe client library does.
async fn receiver() -> (String, Arc<Mutex<Vec<(bool, Value)>>>) {
    let got: Arc<Mutex<Vec<(bool, Value)>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let g = g.clone();
            async move {
                let sig = headers["stripe-signature"].to_str().unwrap().to_string();
                let t = sig.split(',').find_map(|p| p.strip_prefix("t=")).unwrap();
                let v1 = sig.split(',').find_map(|p| p.strip_prefix("v1=")).unwrap();
                let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
                mac.update(format!("{t}.{body}").as_bytes());
                let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
                g.lock().unwrap().push((expected == v1, serde_json::from_str(&body).unwrap()));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn stripe_checkout_subscription_and_signed_webhooks() {
    let (hook, got) = receiver().await;
    let f = start(Some(hook)).await;
    let c = reqwest::Client::new();
    let r = c.post(format!("{}/v1/customers", f.base)).form(&[("email", "a@b.c")]).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let key = "sk_test_123";
    let cus: Value = c
        .post(format!("{}/v1/customers", f.base))
        .bearer_auth(key)
        .form(&[("email", "a@b.c"), ("metadata[user_id]", "u1")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(cus["id"].as_str().unwrap().starts_with("cus_"));
    assert_eq!(cus["metadata"]["user_id"], "u1");

    let r =
        c.post(format!("{}/v1/checkout/sessions", f.base)).bearer_auth(key).form(&[("success_url", "http://x/ok")]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "mode");

    let session: Value = c
        .post(format!("{}/v1/checkout/sessions", f.base))
        .bearer_auth(key)
        .form(&[
            ("mode", "subscription"),
            ("customer", cus["id"].as_str().unwrap()),
            ("success_url", "http://x/ok"),
            ("cancel_url", "http://x/no"),
            ("line_items[0][price]", "price_pro"),
            ("line_items[0][quantity]", "1"),
            ("client_reference_id", "u1"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["status"], "open");
    assert!(session["url"].as_str().unwrap().starts_with(&f.base));
    let sid = session["id"].as_str().unwrap();

    let done: Value =
        c.post(format!("{}/_fake/stripe/checkout/sessions/{sid}/complete", f.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(done["deliveries"].as_array().unwrap().len(), 2, "{done}");
    let events = got.lock().unwrap().clone();
    assert_eq!(
        events.iter().map(|(_, e)| e["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["checkout.session.completed", "customer.subscription.created"]
    );
    assert!(events.iter().all(|(valid, _)| *valid), "a signature did not verify");
    let sub_id = events[1].1["data"]["object"]["id"].as_str().unwrap().to_string();
    assert_eq!(events[0].1["data"]["object"]["subscription"], sub_id.as_str());

    let sub: Value = c.get(format!("{}/v1/subscriptions/{sub_id}", f.base)).bearer_auth(key).send().await.unwrap().json().await.unwrap();
    assert_eq!(sub["status"], "active");
    let sub: Value = c.delete(format!("{}/v1/subscriptions/{sub_id}", f.base)).bearer_auth(key).send().await.unwrap().json().await.unwrap();
    assert_eq!(sub["status"], "canceled");
    assert_eq!(got.lock().unwrap().last().unwrap().1["type"], "customer.subscription.deleted");

    // Redelivery of the same event (for idempotency tests on the receiver).
    let first = events[0].1["id"].as_str().unwrap();
    c.post(format!("{}/_fake/stripe/events/{first}/resend", f.base)).send().await.unwrap();
    assert_eq!(got.lock().unwrap().iter().filter(|(_, e)| e["id"] == first).count(), 2);

    let r = c.get(format!("{}/v1/subscriptions/sub_nope", f.base)).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "resource_missing");
}

#[tokio::test]
async fn fcm_send_records_and_rejects_unregistered_tokens() {
    let f = start(None).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/projects/brainmessenger/messages:send", f.base);
    let msg = json!({ "message": { "token": "device-1", "notification": { "title": "Ann", "body": "hi" }, "data": { "chatId": "c1" } } });
    assert_eq!(c.post(&url).json(&msg).send().await.unwrap().status(), 401);
    let r: Value = c.post(&url).bearer_auth("ya29.x").json(&msg).send().await.unwrap().json().await.unwrap();
    assert!(r["name"].as_str().unwrap().starts_with("projects/brainmessenger/messages/"));
    let r = c.post(&url).bearer_auth("ya29.x").json(&json!({ "message": { "token": "unregistered-7" } })).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["details"][0]["errorCode"], "UNREGISTERED");
    let r = c.post(&url).bearer_auth("ya29.x").json(&json!({ "message": {} })).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let got: Value = c.get(format!("{}/_fake/fcm/messages", f.base)).send().await.unwrap().json().await.unwrap();
    let items = got["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["message"]["data"]["chatId"], "c1");
    assert!(items[0]["received_at_ms"].as_u64().unwrap() > 0);
    c.post(format!("{}/_fake/reset", f.base)).send().await.unwrap();
    let got: Value = c.get(format!("{}/_fake/fcm/messages", f.base)).send().await.unwrap().json().await.unwrap();
    assert!(got["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn google_oauth_code_flow_and_userinfo() {
    let f = start(None).await;
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    c.post(format!("{}/_fake/google/users", f.base))
        .json(&json!({ "email": "ann@gmail.com", "sub": "109", "name": "Ann" }))
        .send()
        .await
        .unwrap();
    let r = c
        .get(format!("{}/o/oauth2/v2/auth?client_id=cid&redirect_uri=http%3A%2F%2Fapp%2Fcb&response_type=code&scope=openid%20email&state=s%201&login_hint=ann%40gmail.com", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("http://app/cb?code="), "{location}");
    assert!(location.ends_with("&state=s%201"), "{location}");
    let code = location.split("code=").nth(1).unwrap().split('&').next().unwrap().replace("%2F", "/");
    let form = [
        ("code", code.as_str()),
        ("client_id", "cid"),
        ("client_secret", "sec"),
        ("redirect_uri", "http://app/cb"),
        ("grant_type", "authorization_code"),
    ];
    let tok: Value = c.post(format!("{}/token", f.base)).form(&form).send().await.unwrap().json().await.unwrap();
    let access = tok["access_token"].as_str().unwrap();
    let me: Value = c.get(format!("{}/v1/userinfo", f.base)).bearer_auth(access).send().await.unwrap().json().await.unwrap();
    assert_eq!((me["sub"].as_str(), me["email"].as_str(), me["name"].as_str()), (Some("109"), Some("ann@gmail.com"), Some("Ann")));
    // Codes are single use.
    let r = c.post(format!("{}/token", f.base)).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(c.get(format!("{}/v1/userinfo", f.base)).bearer_auth("nope").send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn gmail_send_decodes_the_message() {
    let f = start(None).await;
    let c = reqwest::Client::new();
    let raw = "From: BrainMessenger <no-reply@brainmessenger.app>\r\nTo: ann@example.com\r\nSubject: Reset your password\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nOpen https://app/reset?token=abc\r\n";
    let body = json!({ "raw": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw) });
    let url = format!("{}/gmail/v1/users/me/messages/send", f.base);
    assert_eq!(c.post(&url).json(&body).send().await.unwrap().status(), 401);
    let r: Value = c.post(&url).bearer_auth("ya29.x").json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["labelIds"][0], "SENT");
    let got: Value = c.get(format!("{}/_fake/gmail/messages", f.base)).send().await.unwrap().json().await.unwrap();
    let m = &got["items"][0];
    assert_eq!(m["to"], "ann@example.com");
    assert_eq!(m["subject"], "Reset your password");
    assert!(m["body"].as_str().unwrap().contains("token=abc"));
    assert_eq!(c.post(&url).bearer_auth("x").json(&json!({ "raw": "!!" })).send().await.unwrap().status(), 400);
}
