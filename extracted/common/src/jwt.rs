//! Verification of BrainMessenger access tokens (RS256 JWTs signed by the auth service or the
//! monolith with the same configured key). Keys come from a JWKS URL (fetched at start and again
//! when a token names an unknown `kid`, at most every 30 s) or from a PEM public key.
//!
//! Handlers take [`AuthUser`]; install the verifier with `Router::layer(Extension(verifier))`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub email: String,
    /// the session (refresh-token family)
    pub sid: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token is malformed or its signature, issuer, audience or expiry is wrong: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("no key with kid {0:?}")]
    UnknownKey(Option<String>),
    #[error("fetching the JWKS from {url}: {reason}")]
    Jwks { url: String, reason: String },
}

enum Source {
    Static,
    Jwks { url: String, http: reqwest::Client },
}

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    /// used for tokens without a `kid`, and with a static PEM key
    default: Option<DecodingKey>,
    fetched: Option<Instant>,
}

/// Where a service gets the issuer's public keys ([`JwtSettings::from_env`]).
#[derive(Debug, Clone)]
pub enum JwtKeys {
    JwksUrl(String),
    PublicKeyFile(String),
}

/// A service's token settings: the keys and the issuer and audience tokens must name.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub keys: JwtKeys,
    pub issuer: String,
    pub audience: String,
}

impl JwtSettings {
    /// From the environment: `JWT_JWKS_URL` (the auth service's `/.well-known/jwks.json`) or
    /// `JWT_PUBLIC_KEY_FILE` (a PEM), exactly one; `JWT_ISSUER` and `JWT_AUDIENCE` with the
    /// monolith's defaults. Problems are recorded in `env`.
    pub fn from_env(env: &mut crate::config::Env) -> JwtSettings {
        let keys = match (env.optional("JWT_JWKS_URL"), env.optional("JWT_PUBLIC_KEY_FILE")) {
            (Some(url), None) => JwtKeys::JwksUrl(url),
            (None, Some(file)) => JwtKeys::PublicKeyFile(file),
            (Some(_), Some(_)) => {
                env.problem("set one of JWT_JWKS_URL and JWT_PUBLIC_KEY_FILE, not both");
                JwtKeys::JwksUrl(String::new())
            }
            (None, None) => {
                env.problem("JWT_JWKS_URL (the auth service's /.well-known/jwks.json) or JWT_PUBLIC_KEY_FILE is not set");
                JwtKeys::JwksUrl(String::new())
            }
        };
        JwtSettings {
            keys,
            issuer: env.or("JWT_ISSUER", "https://brainmessenger.local"),
            audience: env.or("JWT_AUDIENCE", "brainmessenger-api"),
        }
    }

    /// The verifier these settings describe (a JWKS URL is fetched now, so a wrong one fails at
    /// start); the error names the setting.
    pub async fn verifier(&self, tls: &crate::http::OutboundTls) -> anyhow::Result<Verifier> {
        use anyhow::Context;
        Ok(match &self.keys {
            JwtKeys::JwksUrl(url) => Verifier::from_jwks_url(url, &self.issuer, &self.audience, tls)
                .await
                .with_context(|| format!("reading the token keys from JWT_JWKS_URL={url}"))?,
            JwtKeys::PublicKeyFile(path) => {
                let pem = std::fs::read(path).with_context(|| format!("reading JWT_PUBLIC_KEY_FILE={path}"))?;
                Verifier::from_pem(&pem, &self.issuer, &self.audience).with_context(|| format!("JWT_PUBLIC_KEY_FILE={path}"))?
            }
        })
    }
}

/// Verifies access tokens; cheap to clone.
#[derive(Clone)]
pub struct Verifier(Arc<VerifierInner>);

struct VerifierInner {
    source: Source,
    keys: RwLock<Keys>,
    validation: Validation,
    /// Tokens already verified, by their SHA-256: a client sends the same access token with
    /// every request until it expires, and an RS256 check (pure-Rust RSA) was ~12% of the chat
    /// service's CPU under the 1000-user load (docs/benchmarks.md). A hit is the exact token
    /// bytes that passed; its expiry is checked again on every use; new keys clear it.
    verified: quick_cache::sync::Cache<[u8; 32], Claims>,
}

/// Verified tokens kept (a few hundred bytes each): more than the users active at once on one
/// instance; past it the least used are dropped and verified again when they come back.
const VERIFIED_TOKENS: usize = 16_384;

/// `exp` as `jsonwebtoken` checks it: valid until `leeway` seconds after it.
fn unexpired(claims: &Claims, now: u64, leeway: u64) -> bool {
    claims.exp >= now.saturating_sub(leeway)
}

const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(30);

impl Verifier {
    fn validation(issuer: &str, audience: &str) -> Validation {
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 30;
        v
    }

    /// A verifier with one RSA public key (PEM, SPKI or PKCS#1).
    pub fn from_pem(pem: &[u8], issuer: &str, audience: &str) -> Result<Self, JwtError> {
        Ok(Self::with_key(DecodingKey::from_rsa_pem(pem)?, issuer, audience))
    }

    fn with_key(key: DecodingKey, issuer: &str, audience: &str) -> Self {
        Self::new(Source::Static, Some(key), issuer, audience)
    }

    /// A verifier of `source`'s keys (`default` until the first fetch), nothing verified yet.
    fn new(source: Source, default: Option<DecodingKey>, issuer: &str, audience: &str) -> Self {
        Verifier(Arc::new(VerifierInner {
            source,
            keys: RwLock::new(Keys { by_kid: HashMap::new(), default, fetched: None }),
            validation: Self::validation(issuer, audience),
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
        }))
    }

    /// A verifier with one RSA public key given by its JWK components (base64url `n` and `e`),
    /// e.g. the issuer's own key.
    pub fn from_rsa_components(n: &str, e: &str, issuer: &str, audience: &str) -> Result<Self, JwtError> {
        Ok(Self::with_key(DecodingKey::from_rsa_components(n, e)?, issuer, audience))
    }

    /// A verifier that reads keys from a JWKS URL (fetched now, so a wrong URL fails at start),
    /// over HTTPS checked with `tls`'s CAs.
    pub async fn from_jwks_url(url: &str, issuer: &str, audience: &str, tls: &crate::http::OutboundTls) -> Result<Self, JwtError> {
        let http = tls
            .client_builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| JwtError::Jwks { url: url.into(), reason: e.to_string() })?;
        let v = Self::new(Source::Jwks { url: url.into(), http }, None, issuer, audience);
        v.refresh().await?;
        Ok(v)
    }

    async fn refresh(&self) -> Result<(), JwtError> {
        let Source::Jwks { url, http } = &self.0.source else { return Ok(()) };
        let err = |reason: String| JwtError::Jwks { url: url.clone(), reason };
        let set: JwkSet = http
            .get(url)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?
            .error_for_status()
            .map_err(|e| err(e.to_string()))?
            .json()
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut by_kid = HashMap::new();
        let mut default = None;
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => default = Some(key),
            }
        }
        *self.0.keys.write().await = Keys { by_kid, default, fetched: Some(Instant::now()) };
        // a key the issuer withdrew must stop vouching for the tokens it signed
        self.0.verified.clear();
        Ok(())
    }

    /// Verifies a token: signature, `exp`, `iss`, `aud` — the signature once per token (then
    /// `exp` alone: verified tokens are kept by their SHA-256).
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp()).await
    }

    /// [`Verifier::verify`] with the cache's clock given (`now`, Unix seconds; the signature's
    /// check reads its own).
    async fn verify_at(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.0.verified.get(&digest) {
            if unexpired(&claims, now, self.0.validation.leeway) {
                return Ok(claims);
            }
            // the same bytes passed before: now they are only expired
            self.0.verified.remove(&digest);
            return Err(JwtError::Invalid(jsonwebtoken::errors::ErrorKind::ExpiredSignature.into()));
        }
        let claims = self.verify_signed(token).await?;
        self.0.verified.insert(digest, claims.clone());
        Ok(claims)
    }

    async fn verify_signed(&self, token: &str) -> Result<Claims, JwtError> {
        let kid = decode_header(token)?.kid;
        for attempt in 0..2 {
            {
                let keys = self.0.keys.read().await;
                let key = match &kid {
                    Some(k) => keys.by_kid.get(k).or(keys.default.as_ref().filter(|_| keys.by_kid.is_empty())),
                    None => keys.default.as_ref(),
                };
                if let Some(key) = key {
                    return Ok(decode::<Claims>(token, key, &self.0.validation)?.claims);
                }
                let stale = keys.fetched.is_none_or(|t| t.elapsed() >= REFETCH_AT_MOST_EVERY);
                if attempt == 1 || !stale || matches!(self.0.source, Source::Static) {
                    break;
                }
            }
            // an unknown kid: the issuer may have rotated its key
            self.refresh().await?;
        }
        Err(JwtError::UnknownKey(kid))
    }
}

/// The authenticated caller of a request (`Authorization: Bearer <access token>`). Rejects with
/// NestJS's 401 body, as the monolith does.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Claims);

pub fn unauthorized() -> Response {
    let mut res = (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "message": "Unauthorized", "statusCode": 401 }))).into_response();
    // Express's res.json says so; the proxy's shadow diff compares content-type
    res.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json; charset=utf-8"));
    res
}

pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    bearer_token(headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization` value (a header, or a graphql-ws `connection_init` payload),
/// as the monolith's `/^Bearer\s+(\S+)$/i` reads it.
pub fn bearer_token(value: &str) -> Option<&str> {
    let v = value.trim();
    let (scheme, token) = v.split_once(|c: char| c.is_ascii_whitespace())?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(|c: char| c.is_ascii_whitespace())).then_some(token)
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(verifier) = parts.extensions.get::<Verifier>().cloned() else {
            tracing::error!("AuthUser used without a Verifier extension");
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        };
        let token = bearer(&parts.headers).ok_or_else(unauthorized)?;
        match verifier.verify(token).await {
            Ok(c) => Ok(AuthUser(c)),
            Err(e) => {
                tracing::debug!(error = %e, "rejected access token");
                Err(unauthorized())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn key_pair() -> (EncodingKey, Vec<u8>) {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let private = rsa.private_key_to_pem().unwrap();
        let public = rsa.public_key_to_pem().unwrap();
        (EncodingKey::from_rsa_pem(&private).unwrap(), public)
    }

    /// A fresh key's signer, a verifier of its tokens, and the time now.
    fn signer_and_verifier() -> (EncodingKey, Verifier, u64) {
        let (key, public) = key_pair();
        (key, Verifier::from_pem(&public, "https://iss", "aud").unwrap(), jsonwebtoken::get_current_timestamp())
    }

    fn token(key: &EncodingKey, exp: u64) -> String {
        token_of(key, exp, "u-1")
    }

    fn token_of(key: &EncodingKey, exp: u64, sub: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.into(),
            email: "a@x.io".into(),
            sid: "s-1".into(),
            iss: "https://iss".into(),
            aud: "aud".into(),
            iat: now,
            exp,
        };
        encode(&Header::new(Algorithm::RS256), &claims, key).unwrap()
    }

    #[test]
    fn expiry_is_checked_as_jsonwebtoken_checks_it() {
        let c = |exp| Claims {
            sub: String::new(),
            email: String::new(),
            sid: String::new(),
            iss: String::new(),
            aud: String::new(),
            iat: 0,
            exp,
        };
        assert!(unexpired(&c(1000), 1000, 30));
        assert!(unexpired(&c(970), 1000, 30), "within the leeway");
        assert!(!unexpired(&c(969), 1000, 30));
        assert!(unexpired(&c(0), 10, 30), "no underflow near the epoch");
    }

    #[tokio::test]
    async fn a_verified_token_is_kept_and_only_its_exact_bytes_are() {
        let (key, v, now) = signer_and_verifier();
        let t = token(&key, now + 600);
        let first = v.verify(&t).await.unwrap();
        assert_eq!(v.0.verified.len(), 1);
        assert_eq!(v.verify(&t).await.unwrap(), first, "the kept claims");
        // one character of the signature changed: not the kept token, and refused
        let mut forged = t.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(v.verify(&forged).await.is_err());
        // another user's claims under the kept token's signature: refused
        let other = token_of(&key, now + 600, "u-2");
        let spliced = format!("{}.{}", other.rsplit_once('.').unwrap().0, t.rsplit_once('.').unwrap().1);
        assert!(v.verify(&spliced).await.is_err());
        assert_eq!(v.0.verified.len(), 1, "refused tokens are not kept");
    }

    #[tokio::test]
    async fn a_kept_token_expires_like_any_other() {
        let (key, v, now) = signer_and_verifier();
        let t = token(&key, now + 60);
        v.verify(&t).await.unwrap();
        assert!(v.verify_at(&t, now + 60 + 30).await.is_ok(), "within the leeway");
        let late = v.verify_at(&t, now + 60 + 31).await.unwrap_err();
        assert!(matches!(&late, JwtError::Invalid(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature)), "{late}");
        assert_eq!(v.0.verified.len(), 0, "dropped once expired");
        v.verify(&t).await.unwrap();
        // a token that is expired when it first comes is refused by the full check
        let old = token(&key, now - 120);
        assert!(v.verify(&old).await.is_err());
        assert_eq!(v.0.verified.len(), 1, "the live token kept again, the expired one not kept");
    }
}
