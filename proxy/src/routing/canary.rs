//! Sticky canary assignment.
//!
//! A request's sticky key (JWT `sub`, a header, a cookie, or the client address) is hashed to a
//! bucket in `0..10_000`; the request goes to the extracted service when `bucket < percent *
//! 100`. The bucket depends only on the key, never on the percent, so raising the percent only
//! moves users from legacy to extracted, never back, and a user stays on one side while the
//! percent is unchanged. The hash (FNV-1a with a murmur3 finaliser) is fixed here and documented,
//! so buckets survive proxy upgrades and restarts.

use std::net::IpAddr;

use base64::Engine;
use http::HeaderMap;

use crate::config::{Percent, StickyKey};

/// Number of buckets; one percent is 100 buckets.
pub const BUCKETS: u32 = 10_000;

/// The bucket of a sticky key, in `0..BUCKETS`.
pub fn bucket(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // murmur3 fmix64: spreads FNV's weak low bits over the whole word.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(BUCKETS)) as u32
}

/// Whether a bucket falls in the extracted share.
pub fn in_canary(bucket: u32, percent: Percent) -> bool {
    bucket < u32::from(percent.get()) * (BUCKETS / 100)
}

/// The key a request is bucketed by. Falls back to the client address when the configured
/// source is absent; `None` only when there is no address either.
pub fn sticky_key(sticky: &StickyKey, headers: &HeaderMap, client: Option<IpAddr>) -> Option<String> {
    let from_request = match sticky {
        StickyKey::JwtSub => {
            headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(jwt_sub).map(|sub| format!("sub:{sub}"))
        }
        StickyKey::ClientIp => None,
        StickyKey::Header(name) => headers.get(name).and_then(|v| v.to_str().ok()).map(|v| format!("h:{v}")),
        StickyKey::Cookie(name) => cookie(headers, name).map(|v| format!("c:{v}")),
    };
    from_request.or_else(|| client.map(|ip| format!("ip:{ip}")))
}

/// The `sub` claim of `Bearer <jwt>`, decoded without verification: it only chooses a bucket,
/// and a forged token only chooses which backend rejects it.
pub fn jwt_sub(authorization: &str) -> Option<String> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("sub")? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A cookie's value from the `Cookie` header(s).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jwt(payload: &str) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("Bearer {}.{}.sig", b.encode(r#"{"alg":"RS256"}"#), b.encode(payload))
    }

    #[test]
    fn reads_sub_from_bearer_tokens() {
        assert_eq!(jwt_sub(&jwt(r#"{"sub":"user-42","exp":1}"#)).as_deref(), Some("user-42"));
        assert_eq!(jwt_sub(&jwt(r#"{"sub":42}"#)).as_deref(), Some("42"));
        assert_eq!(jwt_sub(&jwt(r#"{"exp":1}"#)), None);
        assert_eq!(jwt_sub("Basic dXNlcjpwYXNz"), None);
        assert_eq!(jwt_sub("Bearer not-a-jwt"), None);
    }

    #[test]
    fn falls_back_to_client_address() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let headers = HeaderMap::new();
        assert_eq!(sticky_key(&StickyKey::JwtSub, &headers, Some(ip)).as_deref(), Some("ip:10.1.2.3"));
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; uid=abc".parse().unwrap());
        assert_eq!(sticky_key(&StickyKey::Cookie("uid".into()), &headers, Some(ip)).as_deref(), Some("c:abc"));
    }

    #[test]
    fn share_is_near_percent_over_10k_keys() {
        for pct in [1u8, 5, 25, 50, 99] {
            let n = 10_000;
            let hits =
                (0..n).filter(|i| in_canary(bucket(format!("sub:user-{i}").as_bytes()), Percent::try_new(pct as i64).unwrap())).count();
            let expected = n as f64 * pct as f64 / 100.0;
            // 4 standard deviations of a binomial: fails by chance about once in 15,000 runs,
            // and the keys are fixed, so it either always passes or always fails.
            let sd = (n as f64 * (pct as f64 / 100.0) * (1.0 - pct as f64 / 100.0)).sqrt();
            assert!((hits as f64 - expected).abs() <= 4.0 * sd, "{pct}%: {hits} of {n}");
        }
        assert!(!in_canary(0, Percent::try_new(0).unwrap()));
        assert!(in_canary(BUCKETS - 1, Percent::try_new(100).unwrap()));
    }

    proptest! {
        /// Raising the percent never moves a user from extracted back to legacy.
        #[test]
        fn raising_percent_only_moves_users_to_extracted(key in ".{0,40}", a in 0i64..=100, b in 0i64..=100) {
            let (lo, hi) = (a.min(b), a.max(b));
            let bk = bucket(key.as_bytes());
            if in_canary(bk, Percent::try_new(lo).unwrap()) {
                prop_assert!(in_canary(bk, Percent::try_new(hi).unwrap()));
            }
        }

        /// A user stays on one side across requests: tokens that differ in everything but
        /// `sub` (refreshed: new expiry, new signature), sent from different addresses, put the
        /// user on the same side at every percent. Fails if the key took in the token or the
        /// address.
        #[test]
        fn sticky(sub in "[a-z0-9-]{1,20}", exp in any::<[u32; 2]>(), sig in "[a-zA-Z0-9]{1,8}", ips in any::<[u32; 2]>(), pct in 0i64..=100) {
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let side = |exp: u32, sig: &str, ip: u32| {
                let token = format!("Bearer {}.{}.{sig}", b.encode(r#"{"alg":"RS256"}"#), b.encode(format!(r#"{{"sub":"{sub}","exp":{exp}}}"#)));
                let mut headers = HeaderMap::new();
                headers.insert(http::header::AUTHORIZATION, token.parse().unwrap());
                let key = sticky_key(&StickyKey::JwtSub, &headers, Some(IpAddr::from(ip.to_be_bytes()))).unwrap();
                in_canary(bucket(key.as_bytes()), Percent::try_new(pct).unwrap())
            };
            prop_assert_eq!(side(exp[0], &sig, ips[0]), side(exp[1], &format!("{sig}x"), ips[1]));
        }
    }
}
