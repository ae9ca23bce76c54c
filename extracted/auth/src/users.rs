//! The `legacy.users` row and the views of it the API returns.

use bm_common::nest::js_iso_string;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::Row;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: uuid::Uuid,
    pub email: String,
    pub password_hash: Option<String>,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub totp_secret: Option<String>,
    pub totp_enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl<'r> sqlx::FromRow<'r, PgRow> for UserRow {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(UserRow {
            id: r.try_get("id")?,
            email: r.try_get("email")?,
            password_hash: r.try_get("password_hash")?,
            display_name: r.try_get("display_name")?,
            avatar_url: r.try_get("avatar_url")?,
            bio: r.try_get("bio")?,
            totp_secret: r.try_get("totp_secret")?,
            totp_enabled: r.try_get("totp_enabled")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

/// The account as its owner sees it (`userView` in the monolith).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub two_factor_enabled: bool,
    pub created_at: String,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        UserView {
            id: u.id.to_string(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            avatar_url: u.avatar_url.clone(),
            bio: u.bio.clone(),
            two_factor_enabled: u.totp_enabled,
            created_at: js_iso_string(u.created_at),
        }
    }
}
