//! The monolith's GraphQL error contract (`legacy/src/chat/graphql-errors.ts`): a failure is a
//! Nest `HttpException` rendered as a GraphQL error with a stable `extensions.code` and, in
//! `extensions.originalError`, Nest's REST error body of the same failure. Anything unexpected
//! is logged and masked as `INTERNAL_SERVER_ERROR`.

use async_graphql::indexmap::IndexMap;
use async_graphql::{ErrorExtensions, Name, Value};

/// A failure of a chat operation, as the monolith's service throws it.
///
/// Not `Display` on purpose: async-graphql turns any `Display` error into a bare message; this
/// type converts with its code and Nest body instead (`From<ChatError> for async_graphql::Error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// `BadRequestException(message)`
    BadRequest(String),
    /// class-validator's messages (`ValidationPipe`), joined with `; ` in the GraphQL message.
    Validation(Vec<String>),
    /// `UnauthorizedException()`
    Unauthorized,
    /// `ForbiddenException(message)`
    Forbidden(String),
    /// `NotFoundException(message)`
    NotFound(String),
    /// A bug or an outage: the client sees `Internal server error`; the cause is logged.
    Internal,
    /// The chat data move's write fence refused a write (SQLSTATE `BMMOV`): the chat's writes
    /// moved since the routing was read. The mutation reads the routing again and runs once more
    /// where it says; a client sees this only as `Internal server error` if that keeps failing.
    Moved,
}

impl ChatError {
    pub fn not_found_chat() -> Self {
        ChatError::NotFound("Chat not found".into())
    }
    pub fn not_found_message() -> Self {
        ChatError::NotFound("Message not found".into())
    }
    pub fn not_a_member() -> Self {
        ChatError::Forbidden("You are not a member of this chat".into())
    }

    /// The GraphQL error's `message`.
    pub fn message(&self) -> String {
        match self {
            ChatError::BadRequest(m) | ChatError::Forbidden(m) | ChatError::NotFound(m) => m.clone(),
            ChatError::Validation(ms) => ms.join("; "),
            ChatError::Unauthorized => "Unauthorized".into(),
            ChatError::Internal | ChatError::Moved => "Internal server error".into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ChatError::BadRequest(_) | ChatError::Validation(_) => "BAD_USER_INPUT",
            ChatError::Unauthorized => "UNAUTHENTICATED",
            ChatError::Forbidden(_) => "FORBIDDEN",
            ChatError::NotFound(_) => "NOT_FOUND",
            ChatError::Internal | ChatError::Moved => "INTERNAL_SERVER_ERROR",
        }
    }

    /// Nest's error body, keys in Nest's order: `{message, error, statusCode}` (a bare
    /// `UnauthorizedException()` has no `error`).
    fn original(&self) -> Option<Value> {
        let text = |m: &str| Value::String(m.to_string());
        let (message, error, status) = match self {
            ChatError::BadRequest(m) => (text(m), Some("Bad Request"), 400),
            ChatError::Validation(ms) => (Value::List(ms.iter().map(|m| text(m)).collect()), Some("Bad Request"), 400),
            ChatError::Unauthorized => (text("Unauthorized"), None, 401),
            ChatError::Forbidden(m) => (text(m), Some("Forbidden"), 403),
            ChatError::NotFound(m) => (text(m), Some("Not Found"), 404),
            ChatError::Internal | ChatError::Moved => return None,
        };
        let mut body = IndexMap::new();
        body.insert(Name::new("message"), message);
        if let Some(e) = error {
            body.insert(Name::new("error"), text(e));
        }
        body.insert(Name::new("statusCode"), Value::from(status));
        Some(Value::Object(body))
    }
}

impl ErrorExtensions for ChatError {
    fn extend(&self) -> async_graphql::Error {
        let code = self.code();
        let original = self.original();
        async_graphql::Error::new(self.message()).extend_with(move |_, e| {
            e.set("code", code);
            if let Some(o) = &original {
                e.set("originalError", o.clone());
            }
        })
    }
}

impl From<ChatError> for async_graphql::Error {
    fn from(e: ChatError) -> Self {
        e.extend()
    }
}

impl From<sqlx::Error> for ChatError {
    fn from(e: sqlx::Error) -> Self {
        if bm_chatmove::routing::is_fenced(&e) {
            // a chat data move switched this chat's writes elsewhere since the routing was read:
            // refused, nothing written; the mutation runs again where the routing now says
            tracing::info!(error = %e, "a write met the chat data move's fence: reading the routing again");
            return ChatError::Moved;
        }
        tracing::error!(error = %e, "database error");
        ChatError::Internal
    }
}

pub type Result<T> = std::result::Result<T, ChatError>;
