//! Push notifications for a new message, exactly as the monolith sends them today
//! (`NotificationsService.pushNewMessage`, docs/api/notifications.md): after the commit, off the
//! request path, one FCM HTTP v1 request per device of each recipient; a token FCM reports as
//! unregistered (404 or `UNREGISTERED`) is deleted. Failures are logged, never returned. Each
//! push is recorded in `legacy.push_log` for the notification push job's shadow. Only while
//! `legacy.push_owner` is `monolith`; otherwise the push job sends them (docs/events.md).

use bm_events::push::PushContent;

use crate::store::{Device, NewMessage};
use crate::AppState;

pub async fn new_message(s: &AppState, m: &NewMessage) {
    let devices = &m.devices;
    if devices.is_empty() {
        return;
    }
    let msg = &m.message;
    let content = bm_events::push::message_new(
        m.chat_title.as_deref(),
        &msg.sender_display_name,
        &msg.body,
        &msg.chat_id.to_string(),
        &msg.id.to_string(),
        &msg.sender_id.to_string(),
    );
    futures_util::future::join_all(devices.iter().map(|d| one(s, msg.id, d, &content))).await;
}

async fn one(s: &AppState, message: uuid::Uuid, device: &Device, content: &PushContent) {
    let fcm = &s.cfg.fcm;
    let url = format!(
        "{}/v1/projects/{}/messages:send",
        fcm.base_url,
        url::form_urlencoded::byte_serialize(fcm.project_id.as_bytes()).collect::<String>()
    );
    let body = bm_events::push::fcm_request(&device.token, content);
    let sent = s.http.post(url).bearer_auth(&fcm.access_token).json(&body).send().await;
    // what the notification push job's shadow compares with (legacy.push_log)
    let status = sent.as_ref().ok().map(|r| i32::from(r.status().as_u16()));
    let _ = sqlx::query("INSERT INTO legacy.push_log (message_id, user_id, request, status, sender) VALUES ($1, $2, $3, $4, 'chat')")
        .bind(message)
        .bind(device.user_id)
        .bind(&body["message"])
        .bind(status)
        .execute(&s.pool)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "recording a push in legacy.push_log"));
    let r = match sent {
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
    if bm_events::push::is_unregistered(status, &answer) {
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
