//! The chat inputs' validation as the monolith's `ValidationPipe` runs it on GraphQL arguments
//! (`legacy/src/chat/chat.types.ts`, class-validator's rules and messages through
//! `bm_common::validate`). A violation is `BAD_USER_INPUT` with every message.

use async_graphql::ID;
use bm_common::nest::JsonBody;
use bm_common::validate::{f, validate, Field, Rule::*, Transform as T};
use serde_json::{json, Value};

use crate::errors::{ChatError, Result};

pub use bm_common::validate::js_trim;

/// `CreateChatInput`: `title` (optional, trimmed, 1..128), `memberIds` (1..200 UUIDs).
const CREATE_CHAT: &[Field] = &[
    f("title", T::Trim, &[Optional, Length(1, 128), IsString]),
    f("memberIds", T::None, &[EachIsUuid, ArrayMaxSize(200), ArrayMinSize(1), IsArray]),
];

/// `SendMessageInput`: `chatId` (UUID), `body` (1..4000, not blank), `clientMessageId` (1..128).
const SEND_MESSAGE: &[Field] = &[
    f("chatId", T::None, &[IsUuid]),
    f("body", T::None, &[NotBlank, Length(1, 4000), IsString]),
    f("clientMessageId", T::None, &[Length(1, 128), IsString]),
];

fn check(value: Value, fields: &[Field]) -> Result<()> {
    let keys = fields.iter().map(|f| f.name.to_string()).collect();
    validate(&JsonBody { value, keys }, fields).map(|_| ()).map_err(|e| match e.message {
        Value::Array(ms) => ChatError::Validation(ms.into_iter().filter_map(|m| m.as_str().map(str::to_string)).collect()),
        other => ChatError::BadRequest(other.as_str().unwrap_or_default().to_string()),
    })
}

pub fn create_chat(member_ids: &[ID], title: Option<&str>) -> Result<()> {
    let ids: Vec<&str> = member_ids.iter().map(|i| i.as_str()).collect();
    check(json!({ "title": title, "memberIds": ids }), CREATE_CHAT)
}

pub fn send_message(chat_id: &str, body: &str, client_message_id: &str) -> Result<()> {
    check(json!({ "chatId": chat_id, "body": body, "clientMessageId": client_message_id }), SEND_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(r: Result<()>) -> Vec<String> {
        match r {
            Err(ChatError::Validation(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    // Every expectation below was read from the running monolith (curl, 2026-12-06).
    #[test]
    fn messages_match_the_monolith() {
        assert_eq!(messages(create_chat(&[], None)), ["memberIds must contain at least 1 elements"]);
        assert_eq!(
            messages(create_chat(&[ID("x".into()), ID("y".into())], Some("   "))),
            ["title must be longer than or equal to 1 characters", "each value in memberIds must be a UUID"]
        );
        assert_eq!(
            messages(send_message("x", "", "")),
            [
                "chatId must be a UUID",
                "body must not be blank",
                "body must be longer than or equal to 1 characters",
                "clientMessageId must be longer than or equal to 1 characters"
            ]
        );
        assert_eq!(messages(send_message("x", "   ", "c")), ["chatId must be a UUID", "body must not be blank"]);
        let ids: Vec<ID> = (0..201).map(|_| ID("0e5b7d38-1f1d-4b86-9c52-3b6a1b8e4f10".into())).collect();
        assert_eq!(messages(create_chat(&ids, None)), ["memberIds must contain no more than 200 elements"]);
        assert!(create_chat(&[ID("0e5b7d38-1f1d-4b86-9c52-3b6a1b8e4f10".into())], None).is_ok());
        assert!(send_message("0e5b7d38-1f1d-4b86-9c52-3b6a1b8e4f10", "hi", "c-1").is_ok());
    }
}
