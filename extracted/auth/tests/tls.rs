//! Outbound TLS (issue 10, part 4): the auth service reaches Google over HTTPS, trusting a
//! private CA given by `EXTRA_CA_CERTS` — the fakes serve HTTPS with a certificate that CA
//! signed. Without the CA the same sign-in fails: certificates are checked, not waved through.
//! Real Postgres and Redis (DATABASE_URL, REDIS_URL, as scripts/test sets them).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use bm_auth::{app, config::Config, router, tokens::Keys, AppState};
use bm_common::config::Env;

struct Fakes {
    url: String,
    ca_pem: String,
}

/// The fakes over HTTPS, in this process.
async fn fakes_over_https() -> Fakes {
    let pki = fakes::tls::TestPki::generate().unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", tcp.local_addr().unwrap());
    let state = fakes::FakeState::new(fakes::Settings {
        public_base: url.clone(),
        stripe_webhook_url: None,
        stripe_webhook_secret: "whsec_test".into(),
    });
    let listener = fakes::tls::TlsListener::new(tcp, pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    tokio::spawn(fakes::run(listener, state, std::future::pending()));
    Fakes { url, ca_pem: pki.ca_pem }
}

/// The auth service, in this process, with every Google and Gmail URL on the fakes.
async fn auth_service(fakes: &Fakes, extra_ca: Option<&std::path::Path>) -> String {
    let key = openssl::rsa::Rsa::generate(2048).unwrap().private_key_to_pem().unwrap();
    let key = String::from_utf8(key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)")),
        ("REDIS_URL", std::env::var("REDIS_URL").expect("REDIS_URL (scripts/test sets it)")),
        ("JWT_PRIVATE_KEY_FILE", "unused: the key is given below".into()),
        ("PORT", addr.port().to_string()),
        ("BCRYPT_COST", "4".into()),
        ("GOOGLE_ACCOUNTS_BASE_URL", fakes.url.clone()),
        ("GOOGLE_OAUTH2_BASE_URL", fakes.url.clone()),
        ("GOOGLE_OPENID_BASE_URL", fakes.url.clone()),
        ("GMAIL_BASE_URL", fakes.url.clone()),
    ]);
    if let Some(ca) = extra_ca {
        vars.insert("EXTRA_CA_CERTS", ca.display().to_string());
    }
    let cfg = Config::from_env(Env::from_fn(|k| vars.get(k).cloned())).unwrap();
    let keys = Keys::from_pem(&key, &cfg.jwt_key_id, &cfg.jwt_issuer, &cfg.jwt_audience).unwrap();
    let pool = sqlx::PgPool::connect(&cfg.database_url).await.unwrap();
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(cfg.redis_url.as_str()).unwrap()).await.unwrap();
    let state = AppState::new(cfg, pool, redis, keys).unwrap();
    let service = app(Router::new().merge(router(state).unwrap()));
    tokio::spawn(async move { axum::serve(listener, service.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap() });
    format!("http://{addr}")
}

/// Google sign-in through the fakes: `/auth/google` → the fake's authorize page → the callback,
/// where the service exchanges the code at the token endpoint and reads userinfo (HTTPS).
async fn google_sign_in(auth: &str, fakes: &Fakes, email: &str) -> reqwest::Response {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(fakes.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = browser.get(format!("{auth}/auth/google?login_hint={email}")).header("accept", "application/json").send().await.unwrap();
    let to_google = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to_google.starts_with(&fakes.url), "{to_google}");
    let r = browser.get(&to_google).send().await.unwrap();
    let back = r.headers()["location"].to_str().unwrap().to_string();
    let callback = format!("{auth}/auth/google/callback?{}", back.split_once('?').unwrap().1);
    browser.get(callback).header("accept", "application/json").send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sign_in_over_https_trusts_the_extra_ca_and_nothing_else() {
    let fakes = fakes_over_https().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &fakes.ca_pem).unwrap();
    let email = format!("tls-{}@gmail.com", uuid::Uuid::new_v4().simple());

    let trusting = auth_service(&fakes, Some(&ca)).await;
    let r = google_sign_in(&trusting, &fakes, &email).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!((200..400).contains(&status), "sign-in over HTTPS failed: {status} {text}");
    assert!(!text.contains("Google sign-in failed"), "{text}");

    // the same service without the CA cannot verify the fake's certificate
    let untrusting = auth_service(&fakes, None).await;
    let r = google_sign_in(&untrusting, &fakes, &email).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 401, "a certificate from an unknown CA was accepted: {text}");
    assert!(text.contains("Google sign-in failed"), "{text}");
}
