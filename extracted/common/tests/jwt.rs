//! Access-token verification: RS256 with issuer, audience and expiry, keys from a JWKS URL or PEM.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Extension, Json, Router};
use bm_common::jwt::{AuthUser, Claims, Verifier};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const ISS: &str = "https://brainmessenger.local";
const AUD: &str = "brainmessenger-api";

struct Keys {
    private_pem: Vec<u8>,
    public_pem: Vec<u8>,
}

fn rsa_key(dir: &std::path::Path, name: &str) -> Keys {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&ok.stderr));
    let ok = Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public).output().unwrap();
    assert!(ok.status.success());
    Keys { private_pem: std::fs::read(key).unwrap(), public_pem: std::fs::read(public).unwrap() }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(exp_in: i64, aud: &str) -> Claims {
    let iat = now();
    Claims {
        sub: "user-1".into(),
        email: "a@x.io".into(),
        sid: "fam-1".into(),
        iss: ISS.into(),
        aud: aud.into(),
        iat,
        exp: (iat as i64 + exp_in) as u64,
    }
}

fn sign(keys: &Keys, kid: Option<&str>, c: &Claims) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_string);
    encode(&h, c, &EncodingKey::from_rsa_pem(&keys.private_pem).unwrap()).unwrap()
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn verifies_tokens_against_a_jwks_url() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rsa_key(dir.path(), "a");
    let other = rsa_key(dir.path(), "b");
    let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(&keys.private_pem).unwrap(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let set = JwkSet { keys: vec![jwk] };
    let issuer = serve(Router::new().route("/.well-known/jwks.json", get(move || std::future::ready(Json(set.clone()))))).await;

    let verifier = Verifier::from_jwks_url(&format!("{issuer}/.well-known/jwks.json"), ISS, AUD, &Default::default()).await.unwrap();
    let api = serve(
        Router::new()
            .route("/me", get(|AuthUser(c): AuthUser| async move { Json(json!({ "sub": c.sub, "sid": c.sid })) }))
            .layer(Extension(verifier.clone())),
    )
    .await;
    let http = reqwest::Client::new();
    let call = |token: Option<String>| {
        let mut r = http.get(format!("{api}/me"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let res = r.send().await.unwrap();
            (res.status().as_u16(), res.json::<serde_json::Value>().await.unwrap())
        }
    };

    let (status, body) = call(Some(sign(&keys, Some("k1"), &claims(900, AUD)))).await;
    assert_eq!((status, body), (200, json!({ "sub": "user-1", "sid": "fam-1" })));

    let unauthorized = json!({ "message": "Unauthorized", "statusCode": 401 });
    for (what, token) in [
        ("no token", None),
        ("expired", Some(sign(&keys, Some("k1"), &claims(-120, AUD)))),
        ("wrong audience", Some(sign(&keys, Some("k1"), &claims(900, "someone-else")))),
        ("unknown kid", Some(sign(&keys, Some("k9"), &claims(900, AUD)))),
        ("signed by another key", Some(sign(&other, Some("k1"), &claims(900, AUD)))),
        ("garbage", Some("not.a.jwt".into())),
    ] {
        assert_eq!(call(token).await, (401, unauthorized.clone()), "{what}");
    }
}

/// See: issue 10, "Outbound TLS": the JWKS over HTTPS, from a server whose certificate a
/// private CA signed. Trusted through `EXTRA_CA_CERTS`' CA it works; without it, it fails.
#[tokio::test]
async fn fetches_the_jwks_over_https_trusting_only_what_it_is_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rsa_key(dir.path(), "a");
    let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(&keys.private_pem).unwrap(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let set = JwkSet { keys: vec![jwk] };
    let pki = fakes::tls::TestPki::generate().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/.well-known/jwks.json", tcp.local_addr().unwrap());
    let listener = fakes::tls::TlsListener::new(tcp, pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let app = Router::new().route("/.well-known/jwks.json", get(move || std::future::ready(Json(set.clone()))));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let untrusting = Verifier::from_jwks_url(&url, ISS, AUD, &Default::default()).await;
    assert!(untrusting.is_err(), "a certificate from an unknown CA was accepted");
    // as the services read it: EXTRA_CA_CERTS names a PEM file
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let vars = std::collections::HashMap::from([("EXTRA_CA_CERTS", ca_file.display().to_string())]);
    let mut env = bm_common::config::Env::from_fn(|k| vars.get(k).cloned());
    let tls = bm_common::http::OutboundTls::from_env(&mut env);
    env.finish().unwrap();
    let verifier = Verifier::from_jwks_url(&url, ISS, AUD, &tls).await.unwrap();
    let c = claims(900, AUD);
    assert_eq!(verifier.verify(&sign(&keys, Some("k1"), &c)).await.unwrap(), c);

    // a file that is not a CA bundle is a configuration error, named
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let mut env = bm_common::config::Env::from_fn(|k| vars.get(k).cloned());
    let _ = bm_common::http::OutboundTls::from_env(&mut env);
    assert!(env.finish().unwrap_err().to_string().contains("EXTRA_CA_CERTS="));
}

#[tokio::test]
async fn verifies_tokens_with_a_pem_key_and_fails_fast_on_a_bad_jwks_url() {
    let dir = tempfile::tempdir().unwrap();
    let keys = rsa_key(dir.path(), "a");
    let v = Verifier::from_pem(&keys.public_pem, ISS, AUD).unwrap();
    let c = claims(900, AUD);
    assert_eq!(v.verify(&sign(&keys, None, &c)).await.unwrap(), c);
    assert_eq!(v.verify(&sign(&keys, Some("any"), &c)).await.unwrap(), c, "a single static key verifies any kid");
    assert!(Verifier::from_jwks_url("http://127.0.0.1:9/jwks.json", ISS, AUD, &Default::default()).await.is_err());
}
