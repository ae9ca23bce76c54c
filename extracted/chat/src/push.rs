//! Push notifications for a new message, exactly as the monolith sends them today
//! (`NotificationsService.pushNewMessage`, docs/api/notifications.md): after the commit, off the
//! request path, one FCM HTTP v1 request per device of each recipient; a token FCM reports as
//! unregistered (404 or `UNREGISTERED`) is deleted. Failures are logged, never returned. (The
//! notification issue moves this job behind Kafka.)

use serde_json::json;

use crate::store::{preview, Device, NewMessage};
use crate::AppState;

pub async fn new_message(s: &AppState, m: &NewMessage) {
    let devices = &m.devices;
    if devices.is_empty() {
        return;
    }
    let body = preview(&m.message.body);
    let sender = &m.message.sender_display_name;
    let notification = match &m.chat_title {
        Some(title) => json!({ "title": title, "body": format!("{sender}: {body}") }),
        None => json!({ "title": sender, "body": body }),
    };
    // FCM `data` values must be strings
    let data = json!({ "kind": "message.new", "chatId": m.message.chat_id, "messageId": m.message.id, "senderId": m.message.sender_id });
    futures_util::future::join_all(devices.iter().map(|d| one(s, d, &notification, &data))).await;
}

async fn one(s: &AppState, device: &Device, notification: &serde_json::Value, data: &serde_json::Value) {
    let fcm = &s.cfg.fcm;
    let url = format!(
        "{}/v1/projects/{}/messages:send",
        fcm.base_url,
        url::form_urlencoded::byte_serialize(fcm.project_id.as_bytes()).collect::<String>()
    );
    let body = json!({ "message": { "token": device.token, "notification": notification, "data": data } });
    let r = match s.http.post(url).bearer_auth(&fcm.access_token).json(&body).send().await {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!("chat_pushes_total", "outcome" => "error").increment(1);
            tracing::warn!(user = %device.user_id, error = %e, "FCM request failed");
            return;
        }
    };
    let status = r.status().as_u16();
    if (200..300).contains(&status) {
        metrics::counter!("chat_pushes_total", "outcome" => "sent").increment(1);
        return;
    }
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    let unregistered = answer["error"]["details"].as_array().is_some_and(|ds| ds.iter().any(|d| d["errorCode"] == "UNREGISTERED"));
    if status == 404 || unregistered {
        // the app was uninstalled or the token expired: stop pushing to it (unless it moved meanwhile)
        metrics::counter!("chat_pushes_total", "outcome" => "unregistered").increment(1);
        let _ = sqlx::query("DELETE FROM legacy.devices WHERE token = $1 AND user_id = $2")
            .bind(&device.token)
            .bind(device.user_id)
            .execute(&s.pool)
            .await;
        tracing::info!(user = %device.user_id, "device token is unregistered: removed");
        return;
    }
    metrics::counter!("chat_pushes_total", "outcome" => "rejected").increment(1);
    tracing::warn!(user = %device.user_id, status, "FCM refused a push");
}
