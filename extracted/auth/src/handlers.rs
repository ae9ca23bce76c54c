//! The auth endpoints, one function each, in the order of docs/api.md. Every outcome mirrors
//! `legacy/src/auth/*.ts`; comments name where this service deliberately differs (rate limits,
//! dry runs).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bm_common::dryrun::{DryRun, RequestTx};
use bm_common::jwt::{bearer, Verifier};
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgConnection;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::dto as validate;
use crate::limits;
use crate::tokens::{opaque_token, sha256_hex};
use crate::users::{UserRow, UserView};
use crate::AppState;
use bm_common::nest::{json as json_response, redirect, JsonBody, NestError};
use bm_common::validate::validate;

type Result<T, E = NestError> = std::result::Result<T, E>;

const CHALLENGE_TTL_SECS: u64 = 300;
const CHALLENGE_MAX_ATTEMPTS: i64 = 5;
const OAUTH_STATE_TTL_SECS: u64 = 600;
const RESET_TTL_SECS: i64 = 3600;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
    user: UserView,
}

fn ok<T: Serialize>(body: &T) -> Response {
    json_response(StatusCode::OK, body)
}

// ---- users and tokens ------------------------------------------------------------------------

async fn user_by_id(conn: &mut PgConnection, id: uuid::Uuid) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as("SELECT * FROM legacy.users WHERE id = $1").bind(id).fetch_optional(conn).await?)
}

async fn user_by_email(pool: &sqlx::PgPool, email: &str) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as("SELECT * FROM legacy.users WHERE lower(email) = lower($1)").bind(email).fetch_optional(pool).await?)
}

/// The authenticated caller's id: a valid bearer token (any issuer with our key: this service or
/// the monolith); anything else is Nest's bare 401.
async fn caller_id(headers: &HeaderMap, verifier: &Verifier) -> Result<uuid::Uuid> {
    let token = bearer(headers).ok_or_else(NestError::bare_unauthorized)?;
    let claims = verifier.verify(token).await.map_err(|e| {
        tracing::debug!(error = %e, "rejected access token");
        NestError::bare_unauthorized()
    })?;
    claims.sub.parse().map_err(|_| NestError::bare_unauthorized())
}

/// The caller's row, in the request's transaction (for handlers that then write); a token for a
/// deleted account is a 401.
async fn caller(headers: &HeaderMap, verifier: &Verifier, tx: &RequestTx) -> Result<UserRow> {
    let id = caller_id(headers, verifier).await?;
    user_by_id(&mut *tx.conn().await?, id).await?.ok_or_else(NestError::bare_unauthorized)
}

/// A new refresh token in `family` (a new session when `None`) and an access token for it.
/// A new token pair. In a dry run the refresh token's row is rolled back with the request and
/// the access token is signed with a throwaway key that no JWKS publishes: the answer has the
/// real shape, and neither token works anywhere.
async fn issue(
    s: &AppState,
    dry: DryRun,
    conn: &mut PgConnection,
    user: &UserRow,
    family: Option<uuid::Uuid>,
    replaces: Option<uuid::Uuid>,
) -> Result<TokenPair> {
    let family = family.unwrap_or_else(uuid::Uuid::new_v4);
    let refresh_token = opaque_token();
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO legacy.refresh_tokens (user_id, family_id, token_hash, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING id",
    )
    .bind(user.id)
    .bind(family)
    .bind(sha256_hex(&refresh_token))
    .bind(s.cfg.refresh_ttl_secs as f64)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(old) = replaces {
        sqlx::query("UPDATE legacy.refresh_tokens SET replaced_by = $1 WHERE id = $2").bind(id).bind(old).execute(&mut *conn).await?;
    }
    let access_token = if dry.0 {
        s.keys.sign_unusable(&user.id.to_string(), &user.email, &family.to_string(), s.cfg.access_ttl_secs)
    } else {
        s.keys.sign(&user.id.to_string(), &user.email, &family.to_string(), s.cfg.access_ttl_secs)
    };
    Ok(TokenPair { access_token, refresh_token, token_type: "Bearer", expires_in: s.cfg.access_ttl_secs, user: user.into() })
}

async fn bcrypt_hash(s: &AppState, password: String, cost: u32) -> Result<String> {
    let _slot = s.bcrypt_slots.acquire().await.map_err(|_| NestError::internal())?;
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost)).await.map_err(|_| NestError::internal())?.map_err(|e| {
        tracing::error!(error = %e, "bcrypt hash failed");
        NestError::internal()
    })
}

/// One bcrypt comparison, off the async threads. Hashes bcrypt cannot read count as a mismatch.
async fn bcrypt_verify(s: &AppState, password: String, hash: String) -> bool {
    let Ok(_slot) = s.bcrypt_slots.acquire().await else { return false };
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await.unwrap_or(false)
}

/// The client's address: the last `X-Forwarded-For` hop (the one the proxy appended), else the
/// peer. Earlier hops are the client's own claim and are not trusted.
fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> String {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| peer.ip().to_string())
}

fn totp_valid(secret: &str, code: &str) -> bool {
    let Ok(bytes) = Secret::Encoded(secret.to_string()).to_bytes() else { return false };
    // otplib's epochTolerance 30: the previous, current and next 30 s step
    TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes).check_current(code).unwrap_or(false)
}

// ---- endpoints -------------------------------------------------------------------------------

pub async fn register(State(s): State<AppState>, dry: DryRun, tx: RequestTx, body: JsonBody) -> Result<Response> {
    let dto = validate(&body, validate::REGISTER)?;
    let hash = bcrypt_hash(&s, dto.get("password").to_string(), s.cfg.bcrypt_cost).await?;
    let mut conn = tx.conn().await?;
    // the unique index is on lower(email): a taken address inserts nothing
    let user: Option<UserRow> = sqlx::query_as(
        "INSERT INTO legacy.users (email, password_hash, display_name) VALUES ($1, $2, $3)
         ON CONFLICT ((lower(email))) DO NOTHING RETURNING *",
    )
    .bind(dto.get("email"))
    .bind(&hash)
    .bind(dto.get("displayName"))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(user) = user else {
        return Err(NestError::conflict("Email is already registered"));
    };
    let pair = issue(&s, dry, &mut conn, &user, None, None).await?;
    metrics::counter!("auth_registrations_total").increment(1);
    Ok(json_response(StatusCode::CREATED, &pair))
}

pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    dry: DryRun,
    tx: RequestTx,
    body: JsonBody,
) -> Result<Response> {
    let dto = validate(&body, validate::LOGIN)?;
    let (email, password) = (dto.get("email"), dto.get("password"));
    let keys = limits::login_keys(email, &client_ip(&headers, peer), &s.cfg.limits);
    let window = s.cfg.limits.window_secs;
    // A dry run (a verified shadow copy of a real attempt) is limited and counted like the real
    // one: these keys are the service's own, so each client attempt is counted once whichever
    // side answered it, and a dry run is never a way around the limits.
    let limited = match limits::blocked(&s.redis, &keys[1..]).await? {
        Some(retry) => Some(retry),
        None => limits::attempt(&s.redis, &keys[0], window).await?,
    };
    if let Some(retry) = limited {
        metrics::counter!("auth_logins_total", "outcome" => "rate_limited").increment(1);
        return Err(NestError::too_many(retry));
    }
    let user = user_by_email(&s.pool, email).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone()).unwrap_or_else(|| s.dummy_hash.clone());
    let matches = bcrypt_verify(&s, password.to_string(), hash).await;
    let user = match user {
        Some(u) if u.password_hash.is_some() && matches => u,
        _ => {
            // the account's attempt is already counted
            limits::fail(&s.redis, &keys[1..], window).await?;
            metrics::counter!("auth_logins_total", "outcome" => "failure").increment(1);
            return Err(NestError::unauthorized("Invalid email or password"));
        }
    };
    limits::clear(&s.redis, &keys[0]).await?;
    if user.totp_enabled {
        let challenge = opaque_token();
        if !dry.0 {
            let mut r = s.redis.clone();
            let _: () = r.set_ex(format!("2fa:challenge:{}", sha256_hex(&challenge)), user.id.to_string(), CHALLENGE_TTL_SECS).await?;
        }
        metrics::counter!("auth_logins_total", "outcome" => "two_factor").increment(1);
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Challenge {
            two_factor_required: bool,
            challenge_token: String,
            expires_in: u64,
        }
        return Ok(ok(&Challenge { two_factor_required: true, challenge_token: challenge, expires_in: CHALLENGE_TTL_SECS }));
    }
    let pair = issue(&s, dry, &mut *tx.conn().await?, &user, None, None).await?;
    metrics::counter!("auth_logins_total", "outcome" => "success").increment(1);
    Ok(ok(&pair))
}

pub async fn verify_two_factor(State(s): State<AppState>, dry: DryRun, tx: RequestTx, body: JsonBody) -> Result<Response> {
    let dto = validate(&body, validate::TWO_FACTOR_VERIFY)?;
    let key = format!("2fa:challenge:{}", sha256_hex(dto.get("challengeToken")));
    let attempts_key = format!("{key}:attempts");
    let mut r = s.redis.clone();
    let expired = || NestError::unauthorized("Two-factor challenge is invalid or expired");
    let user_id: Option<String> = r.get(&key).await?;
    let Some(user_id) = user_id else { return Err(expired()) };
    let id: uuid::Uuid = user_id.parse().map_err(|_| expired())?;
    let limit = limits::two_factor_key(&user_id, &s.cfg.limits);
    // Each attempt is counted *before* the code is checked, so however many arrive at once, a
    // challenge gets at most CHALLENGE_MAX_ATTEMPTS codes and a user the configured number.
    // The challenge's own counter is shared with the monolith (which counts the real request a
    // dry run copies), so a dry run only reads it; the per-user limit is the service's own and
    // counts dry runs like real attempts.
    let attempt_no = if dry.0 {
        let seen: Option<i64> = r.get(&attempts_key).await?;
        if seen.unwrap_or(0) >= CHALLENGE_MAX_ATTEMPTS {
            return Err(expired());
        }
        0
    } else {
        let (n, _): (i64, ()) =
            redis::pipe().incr(&attempts_key, 1).expire(&attempts_key, CHALLENGE_TTL_SECS as i64).query_async(&mut r).await?;
        if n > CHALLENGE_MAX_ATTEMPTS {
            let _: () = r.del(&[&key, &attempts_key]).await?;
            return Err(expired());
        }
        n
    };
    let limited = limits::attempt(&s.redis, &limit, s.cfg.limits.window_secs).await?;
    if let Some(retry) = limited {
        return Err(NestError::too_many(retry));
    }
    let user = user_by_id(&mut *tx.conn().await?, id).await?;
    let good = user.as_ref().and_then(|u| u.totp_secret.as_deref()).is_some_and(|secret| totp_valid(secret, dto.get("code")));
    let Some(user) = user.filter(|_| good) else {
        if !dry.0 && attempt_no >= CHALLENGE_MAX_ATTEMPTS {
            // the fifth wrong code burns the challenge, as in the monolith
            let _: () = r.del(&[&key, &attempts_key]).await?;
        }
        return Err(NestError::unauthorized("Invalid two-factor code"));
    };
    if !dry.0 {
        // single use: of two concurrent verifies with the same challenge, one wins
        let deleted: i64 = r.del(&key).await?;
        if deleted != 1 {
            return Err(expired());
        }
        let _: () = r.del(&attempts_key).await?;
    }
    limits::clear(&s.redis, &limit).await?;
    let pair = issue(&s, dry, &mut *tx.conn().await?, &user, None, None).await?;
    Ok(ok(&pair))
}

pub async fn refresh(State(s): State<AppState>, dry: DryRun, tx: RequestTx, body: JsonBody) -> Result<Response> {
    let dto = validate(&body, validate::REFRESH)?;
    let hash = sha256_hex(dto.get("refreshToken"));
    let mut conn = tx.conn().await?;
    let claimed: Option<(uuid::Uuid, uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "UPDATE legacy.refresh_tokens SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
          RETURNING id, user_id, family_id",
    )
    .bind(&hash)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((id, user_id, family)) = claimed {
        let user = user_by_id(&mut conn, user_id).await?.ok_or_else(NestError::internal)?;
        let pair = issue(&s, dry, &mut conn, &user, Some(family), Some(id)).await?;
        metrics::counter!("auth_refreshes_total", "outcome" => "rotated").increment(1);
        return Ok(ok(&pair));
    }
    let seen: Option<(uuid::Uuid, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as("SELECT family_id, used_at FROM legacy.refresh_tokens WHERE token_hash = $1")
            .bind(&hash)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((family, Some(_))) = seen {
        // a spent token presented again: stolen copy or replay; the whole session goes (the
        // request transaction commits this although the answer is a 401)
        sqlx::query("UPDATE legacy.refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL")
            .bind(family)
            .execute(&mut *conn)
            .await?;
        tracing::warn!(%family, "refresh token reuse: session revoked");
        metrics::counter!("auth_refreshes_total", "outcome" => "reuse").increment(1);
        return Err(NestError::unauthorized("Refresh token reuse detected"));
    }
    metrics::counter!("auth_refreshes_total", "outcome" => "invalid").increment(1);
    Err(NestError::unauthorized("Invalid refresh token"))
}

pub async fn logout(tx: RequestTx, body: JsonBody) -> Result<Response> {
    let dto = validate(&body, validate::REFRESH)?;
    sqlx::query(
        "UPDATE legacy.refresh_tokens SET revoked_at = now()
          WHERE revoked_at IS NULL AND family_id = (SELECT family_id FROM legacy.refresh_tokens WHERE token_hash = $1)",
    )
    .bind(sha256_hex(dto.get("refreshToken")))
    .execute(&mut *tx.conn().await?)
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A read: straight from the pool, no transaction (two fewer round trips on the busiest endpoint).
pub async fn me(State(s): State<AppState>, headers: HeaderMap, axum::Extension(v): axum::Extension<Verifier>) -> Result<Response> {
    let id = caller_id(&headers, &v).await?;
    let mut conn = s.pool.acquire().await?;
    let user = user_by_id(&mut conn, id).await?.ok_or_else(NestError::bare_unauthorized)?;
    Ok(ok(&UserView::from(&user)))
}

/// `encodeURIComponent`.
fn encode_uri_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn setup_two_factor(headers: HeaderMap, axum::Extension(v): axum::Extension<Verifier>, tx: RequestTx) -> Result<Response> {
    let user = caller(&headers, &v, &tx).await?;
    if user.totp_enabled {
        return Err(NestError::conflict("Two-factor authentication is already enabled"));
    }
    // otplib's generateSecret: 20 random bytes, base32 without padding
    let mut raw = [0u8; 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
    let secret = Secret::Raw(raw.to_vec()).to_encoded().to_string();
    sqlx::query("UPDATE legacy.users SET totp_secret = $2, updated_at = now() WHERE id = $1")
        .bind(user.id)
        .bind(&secret)
        .execute(&mut *tx.conn().await?)
        .await?;
    let url = format!(
        "otpauth://totp/BrainMessenger:{}?secret={}&issuer=BrainMessenger",
        encode_uri_component(&user.email),
        encode_uri_component(&secret)
    );
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Setup {
        secret: String,
        otpauth_url: String,
    }
    Ok(json_response(StatusCode::CREATED, &Setup { secret, otpauth_url: url }))
}

async fn set_two_factor(headers: HeaderMap, v: Verifier, tx: RequestTx, body: JsonBody, enabled: bool) -> Result<Response> {
    // the guard runs before validation, as in Nest
    let user = caller(&headers, &v, &tx).await?;
    let dto = validate(&body, validate::TOTP_CODE)?;
    let Some(secret) = user.totp_secret.as_deref() else {
        return Err(NestError::bad_request("Two-factor setup has not been started"));
    };
    if user.totp_enabled == enabled {
        return Err(NestError::conflict(&format!("Two-factor authentication is already {}", if enabled { "enabled" } else { "disabled" })));
    }
    if !totp_valid(secret, dto.get("code")) {
        return Err(NestError::bad_request("Invalid two-factor code"));
    }
    sqlx::query(
        "UPDATE legacy.users SET totp_enabled = $2, totp_secret = CASE WHEN $2 THEN totp_secret END, updated_at = now() WHERE id = $1",
    )
    .bind(user.id)
    .bind(enabled)
    .execute(&mut *tx.conn().await?)
    .await?;
    Ok(ok(&json!({ "twoFactorEnabled": enabled })))
}

pub async fn enable_two_factor(
    headers: HeaderMap,
    axum::Extension(v): axum::Extension<Verifier>,
    tx: RequestTx,
    body: JsonBody,
) -> Result<Response> {
    set_two_factor(headers, v, tx, body, true).await
}

pub async fn disable_two_factor(
    headers: HeaderMap,
    axum::Extension(v): axum::Extension<Verifier>,
    tx: RequestTx,
    body: JsonBody,
) -> Result<Response> {
    set_two_factor(headers, v, tx, body, false).await
}

// ---- Google sign-in ------------------------------------------------------------------------

/// Query parameters as Express parses them: a name given twice is an array, not a string.
fn single_values(raw: Option<&str>) -> std::collections::HashMap<String, Option<String>> {
    let mut out: std::collections::HashMap<String, Option<String>> = Default::default();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        out.entry(k.into_owned()).and_modify(|e| *e = None).or_insert(Some(v.into_owned()));
    }
    out
}

pub async fn google(State(s): State<AppState>, dry: DryRun, headers: HeaderMap, uri: axum::http::Uri) -> Result<Response> {
    let state = opaque_token();
    if !dry.0 {
        let mut r = s.redis.clone();
        let _: () = r.set_ex(format!("oauth:state:{state}"), "1", OAUTH_STATE_TTL_SECS).await?;
    }
    let g = &s.cfg.google;
    let q = single_values(uri.query());
    let mut params = url::form_urlencoded::Serializer::new(String::new());
    params
        .append_pair("client_id", &g.client_id)
        .append_pair("redirect_uri", &g.redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("state", &state)
        .append_pair("access_type", "online")
        .append_pair("prompt", "select_account");
    if let Some(Some(hint)) = q.get("login_hint").filter(|h| h.as_deref().is_some_and(|h| !h.is_empty())) {
        params.append_pair("login_hint", hint);
    }
    let url = format!("{}/o/oauth2/v2/auth?{}", g.accounts_base_url, params.finish());
    Ok(redirect(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()), &url))
}

#[derive(serde::Deserialize)]
struct GoogleProfile {
    sub: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
    picture: Option<String>,
}

async fn google_profile(s: &AppState, code: &str) -> anyhow::Result<GoogleProfile> {
    let g = &s.cfg.google;
    let token: Value = s
        .http
        .post(format!("{}/token", g.oauth2_base_url))
        .form(&[
            ("code", code),
            ("client_id", &g.client_id),
            ("client_secret", &g.client_secret),
            ("redirect_uri", &g.redirect_uri),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let access = token["access_token"].as_str().unwrap_or_default();
    Ok(s.http.get(format!("{}/v1/userinfo", g.openid_base_url)).bearer_auth(access).send().await?.error_for_status()?.json().await?)
}

pub async fn google_callback(State(s): State<AppState>, dry: DryRun, tx: RequestTx, uri: axum::http::Uri) -> Result<Response> {
    let q = single_values(uri.query());
    let get = |k: &str| q.get(k).cloned().flatten();
    let bad_state = || NestError::bad_request("Invalid OAuth state");
    let Some(state) = get("state").filter(|s| !s.is_empty()) else { return Err(bad_state()) };
    let mut r = s.redis.clone();
    let key = format!("oauth:state:{state}");
    // one-time: consumed here (a dry run only looks)
    let present: i64 = if dry.0 { r.exists(&key).await? } else { r.del(&key).await? };
    if present != 1 {
        return Err(bad_state());
    }
    let failed = || NestError::unauthorized("Google sign-in failed");
    let code = match (get("error").filter(|e| !e.is_empty()), get("code")) {
        (None, Some(code)) if !code.is_empty() => code,
        _ => return Err(failed()),
    };
    let profile = google_profile(&s, &code).await.map_err(|e| {
        tracing::warn!(error = %e, "Google sign-in failed");
        failed()
    })?;
    let (Some(sub), Some(email)) = (profile.sub.filter(|v| !v.is_empty()), profile.email.filter(|v| !v.is_empty())) else {
        return Err(failed());
    };
    let mut conn = tx.conn().await?;
    let mut user: Option<UserRow> =
        sqlx::query_as("SELECT * FROM legacy.users WHERE google_sub = $1").bind(&sub).fetch_optional(&mut *conn).await?;
    if user.is_none() && profile.email_verified == Some(true) {
        // link an existing password account with the same verified address
        user = sqlx::query_as(
            "UPDATE legacy.users SET google_sub = $2, updated_at = now() WHERE lower(email) = lower($1) AND google_sub IS NULL RETURNING *",
        )
        .bind(&email)
        .bind(&sub)
        .fetch_optional(&mut *conn)
        .await?;
    }
    let user = match user {
        Some(u) => u,
        None => {
            let name = profile.name.filter(|n| !n.is_empty()).unwrap_or_else(|| email.split('@').next().unwrap_or("").to_string());
            // JavaScript's slice(0, 64) counts UTF-16 units
            let name: String = String::from_utf16_lossy(&name.encode_utf16().take(64).collect::<Vec<_>>());
            sqlx::query_as("INSERT INTO legacy.users (email, display_name, avatar_url, google_sub) VALUES ($1, $2, $3, $4) RETURNING *")
                .bind(email.to_lowercase())
                .bind(name)
                .bind(profile.picture)
                .bind(&sub)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    let pair = issue(&s, dry, &mut conn, &user, None, None).await?;
    Ok(ok(&pair))
}

// ---- password reset ------------------------------------------------------------------------

fn reset_mail(from: &str, to: &str, display_name: &str, link: &str) -> String {
    let text = format!(
        "Hello {display_name},\r\n\r\nTo choose a new password, open {link}\r\nThe link is valid for one hour. If you did not ask for it, ignore this mail.\r\n"
    );
    [
        format!("From: {from}"),
        format!("To: {to}"),
        "Subject: Reset your BrainMessenger password".into(),
        "MIME-Version: 1.0".into(),
        "Content-Type: text/plain; charset=\"UTF-8\"".into(),
        String::new(),
        text,
    ]
    .join("\r\n")
}

async fn send_mail(s: AppState, to: String, raw: String) {
    let g = &s.cfg.gmail;
    let body = json!({ "raw": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw.as_bytes()) });
    let sent = async {
        let res: Value = s
            .http
            .post(format!("{}/gmail/v1/users/me/messages/send", g.base_url))
            .bearer_auth(&g.access_token)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::Ok(res)
    };
    match sent.await {
        Ok(v) => tracing::info!(message = %v["id"].as_str().unwrap_or(""), "sent password reset mail"),
        Err(e) => {
            metrics::counter!("auth_mail_failures_total").increment(1);
            tracing::error!(error = %e, to_hash = %sha256_hex(&to), "password reset mail failed")
        }
    }
}

/// Always the same answer, registered address or not (no enumeration); the mail goes out off
/// the request path once the reset row is committed.
pub async fn forgot_password(State(s): State<AppState>, dry: DryRun, tx: RequestTx, body: JsonBody) -> Result<Response> {
    let dto = validate(&body, validate::FORGOT)?;
    let answer = || json_response(StatusCode::ACCEPTED, &json!({ "message": "If the address is registered, a reset link has been sent" }));
    let Some(user) = user_by_email(&s.pool, dto.get("email")).await? else { return Ok(answer()) };
    let token = opaque_token();
    let hash = sha256_hex(&token);
    const INSERT: &str =
        "INSERT INTO legacy.password_resets (token_hash, user_id, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))";
    sqlx::query(INSERT).bind(&hash).bind(user.id).bind(RESET_TTL_SECS as f64).execute(&mut *tx.conn().await?).await?;
    if !dry.0 {
        // the mail leaves once the row it links to is committed, off the request path
        let link = format!("{}/reset-password?token={}", s.cfg.app_url, encode_uri_component(&token));
        let raw = reset_mail(&s.cfg.gmail.from, &user.email, &user.display_name, &link);
        tx.after_commit(send_mail(s.clone(), user.email, raw));
    }
    Ok(answer())
}

pub async fn reset_password(State(s): State<AppState>, tx: RequestTx, body: JsonBody) -> Result<Response> {
    let dto = validate(&body, validate::RESET)?;
    let hash = bcrypt_hash(&s, dto.get("password").to_string(), s.cfg.bcrypt_cost).await?;
    let mut conn = tx.conn().await?;
    let user_id: Option<uuid::Uuid> = sqlx::query_scalar(
        "UPDATE legacy.password_resets SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id",
    )
    .bind(sha256_hex(dto.get("token")))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(user_id) = user_id else {
        return Err(NestError::bad_request("Invalid or expired reset token"));
    };
    sqlx::query("UPDATE legacy.users SET password_hash = $2, updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE legacy.refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    Ok(ok(&json!({ "message": "Password has been reset" })))
}

pub async fn jwks(State(s): State<AppState>) -> Response {
    bm_common::nest::json_bytes(StatusCode::OK, s.keys.jwks().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_component_encoding_is_javascript_s() {
        assert_eq!(encode_uri_component("a+b@x.io"), "a%2Bb%40x.io");
        assert_eq!(encode_uri_component("ü (x)!"), "%C3%BC%20(x)!");
    }

    #[test]
    fn repeated_query_names_are_not_strings() {
        let q = single_values(Some("code=1&state=a&state=b"));
        assert_eq!(q["code"], Some("1".to_string()));
        assert_eq!(q["state"], None);
    }

    #[test]
    fn client_ip_trusts_only_the_proxy_hop() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(&h, peer), "127.0.0.1");
        h.insert("x-forwarded-for", "6.6.6.6, 10.0.0.7".parse().unwrap());
        assert_eq!(client_ip(&h, peer), "10.0.0.7");
    }

    #[test]
    fn totp_accepts_the_neighbouring_steps_only() {
        let secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
        let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, Secret::Encoded(secret.into()).to_bytes().unwrap());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(totp_valid(secret, &totp.generate(now)));
        assert!(totp_valid(secret, &totp.generate(now - 30)));
        assert!(!totp_valid(secret, &totp.generate(now - 120)));
        assert!(!totp_valid(secret, "abcdef"));
        assert!(!totp_valid("not base32!", "123456"));
    }
}
