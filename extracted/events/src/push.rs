//! What a push for a new message says, exactly as the monolith words it
//! (`NotificationsService.pushNewMessage`, docs/api/notifications.md "Push"): shared by every
//! sender of pushes (the chat service's in-process pushes, the notification push job) so that
//! they cannot drift apart. Pure.

use serde_json::{json, Value};

/// A body cut for a notification or a push: the first 99 UTF-16 units and `…` past 100
/// (`body.slice(0, 99) + '…'`).
pub fn preview(body: &str) -> String {
    let units: Vec<u16> = body.encode_utf16().collect();
    if units.len() > 100 {
        format!("{}…", String::from_utf16_lossy(&units[..99]))
    } else {
        body.to_string()
    }
}

/// The `notification` and `data` of a new message's push.
#[derive(Debug, Clone, PartialEq)]
pub struct PushContent {
    pub notification: Value,
    pub data: Value,
}

/// A direct chat: the sender's name over the preview; a group: the title over `sender: preview`.
/// `data` values are strings, as FCM requires.
pub fn message_new(
    chat_title: Option<&str>,
    sender_name: &str,
    body: &str,
    chat_id: &str,
    message_id: &str,
    sender_id: &str,
) -> PushContent {
    let body = preview(body);
    let notification = match chat_title {
        Some(title) => json!({ "title": title, "body": format!("{sender_name}: {body}") }),
        None => json!({ "title": sender_name, "body": body }),
    };
    let data = json!({ "kind": "message.new", "chatId": chat_id, "messageId": message_id, "senderId": sender_id });
    PushContent { notification, data }
}

/// The push for a `message.sent` event.
pub fn for_event(e: &crate::MessageSent) -> PushContent {
    message_new(
        e.chat_title.as_deref(),
        &e.sender_name,
        &e.body,
        &e.chat_id.to_string(),
        &e.message_id.to_string(),
        &e.sender_id.to_string(),
    )
}

/// The FCM HTTP v1 request body for one device.
pub fn fcm_request(token: &str, c: &PushContent) -> Value {
    json!({ "message": { "token": token, "notification": c.notification, "data": c.data } })
}

/// Whether an FCM error answer says the token is gone (404, or `UNREGISTERED` in
/// `error.details[].errorCode`): the device is deleted, never retried.
pub fn is_unregistered(status: u16, answer: &Value) -> bool {
    status == 404 || answer["error"]["details"].as_array().is_some_and(|ds| ds.iter().any(|d| d["errorCode"] == "UNREGISTERED"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_cut_at_100_utf16_units() {
        assert_eq!(preview(&"a".repeat(100)), "a".repeat(100));
        assert_eq!(preview(&"a".repeat(101)), format!("{}…", "a".repeat(99)));
        // an emoji is two UTF-16 units: 49 of them and half of the 50th fill 99 units
        assert_eq!(preview(&"😀".repeat(60)).encode_utf16().count(), 100);
    }

    #[test]
    fn direct_and_group_wording() {
        let d = message_new(None, "Ann", "hi", "c", "m", "s");
        assert_eq!(d.notification, json!({"title": "Ann", "body": "hi"}));
        let g = message_new(Some("Ops"), "Ann", "hi", "c", "m", "s");
        assert_eq!(g.notification, json!({"title": "Ops", "body": "Ann: hi"}));
        assert_eq!(g.data, json!({"kind": "message.new", "chatId": "c", "messageId": "m", "senderId": "s"}));
        assert_eq!(fcm_request("t", &g)["message"]["token"], "t");
    }

    #[test]
    fn unregistered_answers() {
        assert!(is_unregistered(404, &Value::Null));
        assert!(is_unregistered(400, &json!({"error": {"details": [{"errorCode": "UNREGISTERED"}]}})));
        assert!(!is_unregistered(500, &json!({"error": {"details": [{"errorCode": "INTERNAL"}]}})));
    }
}
