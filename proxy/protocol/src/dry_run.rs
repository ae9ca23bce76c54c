//! The signed dry-run header.
//!
//! A shadow copy of an unsafe request is sent to a service that declared it honours dry runs,
//! with `x-strangler-dry-run: v1;t=<unix seconds>;s=<hex HMAC-SHA256>`. The MAC covers the
//! version, the time, the request id and the request's method and target (path and query), so a
//! captured header cannot be moved to another request, and it expires: a service accepts it
//! for [`MAX_SKEW_SECS`] either side of its own clock. The key is a secret shared by the proxy
//! and the services through their environment, never a file.
//!
//! A request that carries the header but fails verification is not a dry run and must not be
//! run as a real one either: the sender meant it to leave nothing behind. Services answer `400`
//! (see `bm_common::dryrun`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far the signing time may be from the verifier's clock, either way.
pub const MAX_SKEW_SECS: u64 = 30;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

const VERSION: &str = "v1";

/// The shared secret, checked at construction.
#[derive(Clone)]
pub struct DryRunKey(Hmac<Sha256>);

impl std::fmt::Debug for DryRunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DryRunKey(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the dry-run secret has {got} bytes; use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")]
pub struct ShortSecret {
    pub got: usize,
}

/// Why a dry-run header was not accepted. A label for metrics comes from [`Self::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DryRunRejection {
    #[error("malformed dry-run header")]
    Malformed,
    #[error("dry-run header signed {0} s ago (more than {MAX_SKEW_SECS} s)")]
    Stale(u64),
    #[error("dry-run header signed {0} s in the future (more than {MAX_SKEW_SECS} s)")]
    Future(u64),
    #[error("dry-run signature does not match")]
    BadSignature,
    #[error("no dry-run secret is configured, so no dry run can be verified")]
    NoKey,
}

impl DryRunRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            DryRunRejection::Malformed => "malformed",
            DryRunRejection::Stale(_) => "stale",
            DryRunRejection::Future(_) => "future",
            DryRunRejection::BadSignature => "bad_signature",
            DryRunRejection::NoKey => "no_key",
        }
    }
}

/// What a signature is about: one request.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// Path and query, as sent on the request line.
    pub target: &'a str,
}

impl DryRunKey {
    pub fn try_new(secret: &[u8]) -> Result<DryRunKey, ShortSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ShortSecret { got: secret.len() });
        }
        Ok(DryRunKey(Hmac::new_from_slice(secret).expect("HMAC takes keys of any length")))
    }

    fn mac(&self, at_unix_secs: u64, req: Signed<'_>) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        // fields separated by a byte that cannot occur in any of them (a newline is not valid
        // in a method, a header value or a request target)
        for part in [VERSION, &at_unix_secs.to_string(), req.request_id, req.method, req.target] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    /// The header value for `req`, signed at `now_unix_secs`.
    pub fn sign(&self, now_unix_secs: u64, req: Signed<'_>) -> String {
        let tag = self.mac(now_unix_secs, req).finalize().into_bytes();
        let mut out = format!("{VERSION};t={now_unix_secs};s=");
        for b in tag {
            out.push(char::from_digit(u32::from(b >> 4), 16).expect("a nibble"));
            out.push(char::from_digit(u32::from(b & 15), 16).expect("a nibble"));
        }
        out
    }

    /// Checks a header value for `req` at `now_unix_secs`. The comparison of tags is constant
    /// time.
    pub fn verify(&self, value: &str, now_unix_secs: u64, req: Signed<'_>) -> Result<(), DryRunRejection> {
        let (at, tag) = parse(value).ok_or(DryRunRejection::Malformed)?;
        if now_unix_secs > at && now_unix_secs - at > MAX_SKEW_SECS {
            return Err(DryRunRejection::Stale(now_unix_secs - at));
        }
        if at > now_unix_secs && at - now_unix_secs > MAX_SKEW_SECS {
            return Err(DryRunRejection::Future(at - now_unix_secs));
        }
        self.mac(at, req).verify_slice(&tag).map_err(|_| DryRunRejection::BadSignature)
    }
}

/// `v1;t=<secs>;s=<64 hex>` → (secs, tag bytes).
fn parse(value: &str) -> Option<(u64, Vec<u8>)> {
    let rest = value.trim().strip_prefix(VERSION)?.strip_prefix(";t=")?;
    let (t, sig) = rest.split_once(";s=")?;
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) || sig.len() != 64 {
        return None;
    }
    let at = t.parse().ok()?;
    let tag = (0..32).map(|i| u8::from_str_radix(sig.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()?;
    Some((at, tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_796_000_000;

    fn key(s: &str) -> DryRunKey {
        DryRunKey::try_new(s.as_bytes()).unwrap()
    }

    fn req<'a>(id: &'a str, method: &'a str, target: &'a str) -> Signed<'a> {
        Signed { request_id: id, method, target }
    }

    #[test]
    fn a_signature_verifies_for_its_request_only() {
        let k = key("0123456789abcdef0123456789abcdef");
        let r = req("abc", "POST", "/auth/login");
        let v = k.sign(NOW, r);
        assert!(v.starts_with("v1;t=1796000000;s="), "{v}");
        assert_eq!(k.verify(&v, NOW, r), Ok(()));
        assert_eq!(k.verify(&v, NOW + MAX_SKEW_SECS, r), Ok(()));
        for other in [req("abd", "POST", "/auth/login"), req("abc", "PUT", "/auth/login"), req("abc", "POST", "/auth/login?x=1")] {
            assert_eq!(k.verify(&v, NOW, other), Err(DryRunRejection::BadSignature), "{other:?}");
        }
        assert_eq!(key("another secret of enough bytes!!").verify(&v, NOW, r), Err(DryRunRejection::BadSignature));
    }

    #[test]
    fn old_and_future_signatures_are_refused() {
        let k = key("0123456789abcdef0123456789abcdef");
        let r = req("abc", "POST", "/x");
        let v = k.sign(NOW, r);
        assert_eq!(k.verify(&v, NOW + MAX_SKEW_SECS + 1, r), Err(DryRunRejection::Stale(MAX_SKEW_SECS + 1)));
        assert_eq!(k.verify(&v, NOW - MAX_SKEW_SECS - 5, r), Err(DryRunRejection::Future(MAX_SKEW_SECS + 5)));
    }

    #[test]
    fn what_a_client_could_send_is_refused() {
        let k = key("0123456789abcdef0123456789abcdef");
        let r = req("abc", "POST", "/x");
        for forged in ["1", "true", "", "v1;t=1796000000;s=00", "v1;t=;s=", "v2;t=1796000000;s=", "v1;t=-1;s="] {
            assert_eq!(k.verify(forged, NOW, r), Err(DryRunRejection::Malformed), "{forged}");
        }
        let zeros = format!("v1;t={NOW};s={}", "0".repeat(64));
        assert_eq!(k.verify(&zeros, NOW, r), Err(DryRunRejection::BadSignature));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(DryRunKey::try_new(b"short").unwrap_err(), ShortSecret { got: 5 });
    }

    proptest! {
        /// Changing any one character of a signed value makes it fail.
        #[test]
        fn tampering_is_detected(pos in 0usize..80, by in 1u8..10) {
            let k = key("0123456789abcdef0123456789abcdef");
            let r = req("id-1", "DELETE", "/a/b?c=d");
            let v = k.sign(NOW, r);
            let mut bytes = v.clone().into_bytes();
            let i = pos % bytes.len();
            bytes[i] = bytes[i].wrapping_add(by);
            let tampered = String::from_utf8_lossy(&bytes).into_owned();
            prop_assume!(tampered != v);
            prop_assert!(k.verify(&tampered, NOW, r).is_err());
        }
    }
}
