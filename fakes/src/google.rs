//! Google OAuth 2.0 for web server apps: the authorization endpoint
//! (`GET /o/oauth2/v2/auth`), the token endpoint (`POST /token`, form-encoded) and OpenID
//! Connect userinfo (`GET /v1/userinfo`).
//!
//! The authorization endpoint signs in the user named by `login_hint` (registered with
//! `POST /_fake/google/users`, or made up from the hint) without a consent screen and redirects
//! to `redirect_uri` with a single-use `code` and the caller's `state`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{bearer, error, id, list, now_secs, ok, FakeState};

#[derive(Default)]
pub(crate) struct Store {
    users: HashMap<String, Value>,
    /// code → (user, client_id, redirect_uri)
    codes: HashMap<String, (Value, String, String)>,
    /// access token → user
    tokens: HashMap<String, Value>,
    log: Vec<Value>,
}

pub(crate) fn router() -> Router<FakeState> {
    Router::new()
        .route("/o/oauth2/v2/auth", get(authorize))
        .route("/token", post(token))
        .route("/v1/userinfo", get(userinfo))
        .route("/_fake/google/users", post(add_user))
        .route("/_fake/google/requests", get(requests))
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    login_hint: Option<String>,
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    error(status, json!({ "error": code, "error_description": description }))
}

fn user_for(email: &str) -> Value {
    let local = email.split('@').next().unwrap_or(email);
    json!({ "sub": format!("1{:020}", email.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 10u64.pow(19)),
            "email": email, "email_verified": true, "name": local, "given_name": local, "picture": null })
}

async fn authorize(State(s): State<FakeState>, Query(q): Query<AuthorizeQuery>) -> Response {
    let (Some(client_id), Some(redirect_uri)) = (q.client_id, q.redirect_uri) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: client_id or redirect_uri");
    };
    if q.response_type.as_deref() != Some("code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_response_type", "response_type must be code");
    }
    if !q.scope.as_deref().unwrap_or("").split(' ').any(|sc| sc == "openid" || sc == "email" || sc.ends_with("userinfo.email")) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "Some requested scopes were invalid");
    }
    let email = q.login_hint.unwrap_or_else(|| "test.user@gmail.com".into());
    let code = format!("4/{}", id(""));
    s.with_db(|db| {
        let user = db.google.users.get(&email).cloned().unwrap_or_else(|| user_for(&email));
        db.google.log.push(json!({ "endpoint": "authorize", "client_id": client_id, "redirect_uri": redirect_uri, "email": email }));
        db.google.codes.insert(code.clone(), (user, client_id, redirect_uri.clone()));
    });
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut location = format!("{redirect_uri}{sep}code={}", urlencode(&code));
    if let Some(state) = q.state {
        location.push_str(&format!("&state={}", urlencode(&state)));
    }
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn token(State(s): State<FakeState>, Form(p): Form<HashMap<String, String>>) -> Response {
    if p.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Invalid grant_type");
    }
    if p.get("client_secret").is_none_or(|c| c.is_empty()) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "The OAuth client was not found.");
    }
    let code = p.get("code").cloned().unwrap_or_default();
    let found = s.with_db(|db| db.google.codes.remove(&code));
    let Some((user, client_id, redirect_uri)) = found else { return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request") };
    if p.get("client_id") != Some(&client_id) || p.get("redirect_uri") != Some(&redirect_uri) {
        return oauth_error(StatusCode::BAD_REQUEST, "redirect_uri_mismatch", "Bad Request");
    }
    let access = format!("ya29.{}", id(""));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({ "iss": "https://accounts.google.com", "aud": client_id, "sub": user["sub"], "email": user["email"],
        "email_verified": true, "iat": now_secs(), "exp": now_secs() + 3600 });
    // Signed with a key nobody has: clients must take identity from userinfo (or verify with
    // Google's JWKS, which a fake cannot offer).
    let id_token = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"RS256","kid":"fake","typ":"JWT"}"#),
        b64.encode(claims.to_string()),
        b64.encode("fake-signature")
    );
    s.with_db(|db| {
        db.google.tokens.insert(access.clone(), user);
        db.google.log.push(json!({ "endpoint": "token", "client_id": client_id }));
    });
    ok(json!({ "access_token": access, "expires_in": 3599, "token_type": "Bearer", "scope": "openid email profile", "id_token": id_token }))
}

async fn userinfo(State(s): State<FakeState>, headers: HeaderMap) -> Response {
    let user = bearer(&headers).and_then(|t| s.with_db(|db| db.google.tokens.get(&t).cloned()));
    match user {
        Some(u) => ok(u),
        None => error(StatusCode::UNAUTHORIZED, json!({ "error": "invalid_request", "error_description": "Invalid Credentials" })),
    }
}

async fn add_user(State(s): State<FakeState>, Json(u): Json<Value>) -> Response {
    let Some(email) = u["email"].as_str().map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, json!({ "error": "email required" }));
    };
    let mut user = user_for(&email);
    for k in ["sub", "name", "given_name", "picture", "email_verified"] {
        if !u[k].is_null() {
            user[k] = u[k].clone();
        }
    }
    s.with_db(|db| db.google.users.insert(email, user.clone()));
    (StatusCode::CREATED, Json(user)).into_response()
}

async fn requests(State(s): State<FakeState>) -> Response {
    list(s.with_db(|db| db.google.log.clone()))
}
