//! The REST side of the notification module (docs/api/notifications.md): push devices and the
//! in-app notification list, on the monolith's tables (`legacy.devices`,
//! `legacy.notifications`), answering as the monolith's `NotificationsController` does — the
//! same statuses, bodies, validation messages and order of checks (the bearer token first, then
//! the body or query, then the lookups).
//!
//! Writes run in the request's transaction ([`bm_common::dryrun`]), so the proxy's signed dry
//! runs leave nothing behind; reads go straight to the pool.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use bm_common::dryrun::{transaction_per_request, RequestTx, TxState};
use bm_common::jwt::AuthUser;
use bm_common::nest::{self, js_iso_string, json, JsonBody, NestError};
use bm_common::validate::{f, validate, Field, Rule::*, Transform};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use uuid::Uuid;

type Result<T> = std::result::Result<T, NestError>;

/// `RegisterDeviceDto`: `@IsString() @Length(1, 4096) token`, `@IsIn([...]) platform`.
const REGISTER_DEVICE: &[Field] =
    &[f("token", Transform::None, &[Length(1, 4096), IsString]), f("platform", Transform::None, &[IsIn(&["android", "ios", "web"])])];

/// `ListNotificationsQuery`: `@IsOptional() @Type(() => Number) @IsInt() @Min(1) @Max(100) limit`,
/// `@IsOptional() @IsUUID() before`.
const LIST_QUERY: &[Field] =
    &[f("limit", Transform::ToNumber, &[Optional, Max(100), Min(1), IsInt]), f("before", Transform::None, &[Optional, IsUuid])];

/// The routes, with the request transaction (the caller adds `Extension(verifier)` and serves
/// them inside [`nest::express_app`]).
pub fn router(pool: PgPool, dry_run_key: Option<bm_common::DryRunKey>) -> Router {
    let tx_state = TxState::new(pool.clone(), dry_run_key);
    Router::new()
        .route("/notifications", get(list))
        .route("/notifications/devices", post(register_device))
        .route("/notifications/devices/{token}", delete(remove_device))
        .route("/notifications/unread-count", get(unread_count))
        .route("/notifications/read-all", post(read_all))
        .route("/notifications/{id}/read", post(read))
        .fallback(nest::not_found)
        .method_not_allowed_fallback(nest::not_found)
        .with_state(pool)
        .layer(axum::middleware::from_fn_with_state(tx_state, transaction_per_request))
}

fn caller(user: &AuthUser) -> Result<Uuid> {
    // the monolith takes `sub` as it is and compares it with uuid columns: a token whose subject
    // is not a uuid fails there (500); the auth service only issues uuids
    user.0.sub.parse().map_err(|_| NestError::internal())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceView {
    token: String,
    platform: String,
    created_at: String,
    last_seen_at: String,
}

async fn register_device(user: AuthUser, tx: RequestTx, body: JsonBody) -> Result<Response> {
    let me = caller(&user)?;
    let dto = validate(&body, REGISTER_DEVICE)?;
    // an upsert keyed by the token: a token registered again (by anyone) now belongs to the caller
    let (token, platform, created, seen): (String, String, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO legacy.devices (token, user_id, platform) VALUES ($1, $2, $3)
         ON CONFLICT (token) DO UPDATE SET user_id = EXCLUDED.user_id, platform = EXCLUDED.platform, last_seen_at = now()
         RETURNING token, platform, created_at, last_seen_at",
    )
    .bind(dto.get("token"))
    .bind(me)
    .bind(dto.get("platform"))
    .fetch_one(&mut *tx.conn().await?)
    .await?;
    let view = DeviceView { token, platform, created_at: js_iso_string(created), last_seen_at: js_iso_string(seen) };
    Ok(json(StatusCode::CREATED, &view))
}

/// `DELETE /notifications/devices/:token`: the token as sent (its case matters), not as routed.
async fn remove_device(user: AuthUser, tx: RequestTx, sent: nest::ClientSegments) -> Result<Response> {
    let me = caller(&user)?;
    let token = sent.get(3).unwrap_or_default().to_string();
    let gone = sqlx::query("DELETE FROM legacy.devices WHERE token = $1 AND user_id = $2")
        .bind(&token)
        .bind(me)
        .execute(&mut *tx.conn().await?)
        .await?;
    if gone.rows_affected() == 0 {
        return Err(NestError::not_found("Device not found".into()));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A notification as the monolith renders it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationView {
    id: Uuid,
    kind: String,
    payload: Box<RawValue>,
    created_at: String,
    read_at: Option<String>,
}

/// Selected as `id, kind, payload::text, created_at, read_at`.
type NotificationRow = (Uuid, String, String, DateTime<Utc>, Option<DateTime<Utc>>);

impl NotificationView {
    fn from_row((id, kind, payload, created, read): NotificationRow) -> Result<NotificationView> {
        let payload = RawValue::from_string(crate::jsonb::compact(&payload)).map_err(|e| {
            tracing::error!(error = %e, %id, "a notification payload that is not JSON");
            NestError::internal()
        })?;
        Ok(NotificationView { id, kind, payload, created_at: js_iso_string(created), read_at: read.map(js_iso_string) })
    }
}

const COLUMNS: &str = "id, kind, payload::text, created_at, read_at";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<NotificationView>,
    next_before: Option<Uuid>,
}

async fn list(user: AuthUser, State(pool): State<PgPool>, RawQuery(query): RawQuery) -> Result<Response> {
    let me = caller(&user)?;
    let q = validate(&nest::query_object(query.as_deref()), LIST_QUERY)?;
    let limit = q.int("limit").unwrap_or(20);
    let before: Option<Uuid> = match q.get("before") {
        "" => None,
        s => Some(s.parse().map_err(|_| NestError::bad_request("before must be a UUID"))?),
    };
    let mut conn = pool.acquire().await?;
    if let Some(before) = before {
        let mine: Option<i32> = sqlx::query_scalar("SELECT 1 FROM legacy.notifications WHERE id = $1 AND user_id = $2")
            .bind(before)
            .bind(me)
            .fetch_optional(&mut *conn)
            .await?;
        if mine.is_none() {
            return Err(NestError::bad_request("before does not name one of your notifications"));
        }
    }
    // keyset pagination on (created_at, id), compared in SQL to keep microsecond precision
    let rows: Vec<NotificationRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM legacy.notifications n
          WHERE n.user_id = $1
            AND ($2::uuid IS NULL OR (n.created_at, n.id) < (SELECT created_at, id FROM legacy.notifications WHERE id = $2))
          ORDER BY n.created_at DESC, n.id DESC
          LIMIT $3"
    ))
    .bind(me)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?;
    let more = rows.len() as i64 > limit;
    let items = rows.into_iter().take(limit as usize).map(NotificationView::from_row).collect::<Result<Vec<_>>>()?;
    let next_before = if more { items.last().map(|n| n.id) } else { None };
    Ok(json(StatusCode::OK, &Page { items, next_before }))
}

#[derive(Serialize)]
struct Count {
    count: i64,
}

async fn unread_count(user: AuthUser, State(pool): State<PgPool>) -> Result<Response> {
    let me = caller(&user)?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy.notifications WHERE user_id = $1 AND read_at IS NULL")
        .bind(me)
        .fetch_one(&pool)
        .await?;
    Ok(json(StatusCode::OK, &Count { count }))
}

#[derive(Serialize)]
struct Updated {
    updated: u64,
}

async fn read_all(user: AuthUser, tx: RequestTx) -> Result<Response> {
    let me = caller(&user)?;
    let done = sqlx::query("UPDATE legacy.notifications SET read_at = now() WHERE user_id = $1 AND read_at IS NULL")
        .bind(me)
        .execute(&mut *tx.conn().await?)
        .await?;
    Ok(json(StatusCode::OK, &Updated { updated: done.rows_affected() }))
}

/// Nest's `ParseUUIDPipe()` (any version): 8-4-4-4-12 hex digits.
fn parse_uuid_pipe(id: &str) -> Result<Uuid> {
    if !bm_common::validate::is_uuid(id) {
        return Err(NestError::bad_request("Validation failed (uuid is expected)"));
    }
    id.parse().map_err(|_| NestError::bad_request("Validation failed (uuid is expected)"))
}

async fn read(user: AuthUser, tx: RequestTx, sent: nest::ClientSegments) -> Result<Response> {
    let me = caller(&user)?;
    let id = parse_uuid_pipe(sent.get(2).unwrap_or_default())?;
    // reading it again keeps the first read time
    let row: Option<NotificationRow> = sqlx::query_as(&format!(
        "UPDATE legacy.notifications SET read_at = COALESCE(read_at, now()) WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(me)
    .fetch_optional(&mut *tx.conn().await?)
    .await?;
    let row = row.ok_or_else(|| NestError::not_found("Notification not found".into()))?;
    Ok(json(StatusCode::OK, &NotificationView::from_row(row)?))
}
