//! Access tokens (RS256 JWTs with the monolith's claims, header and key id) signed with the
//! configured key, the JWKS other services verify them with, and opaque refresh tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT_PRIVATE_KEY_FILE {0}: {1}")]
    Read(String, std::io::Error),
    #[error("JWT_PRIVATE_KEY_FILE {0}: an RSA private key in PEM (PKCS#8 or PKCS#1) is required (RS256): {1}")]
    NotRsa(String, String),
}

/// The signing key and what is derived from it.
pub struct Keys {
    key: PKey<Private>,
    /// a key of the same size made at start-up and never published: dry runs sign with it, so
    /// their tokens have the real shape and verify nowhere
    throwaway: PKey<Private>,
    /// base64url of the JOSE header, the same bytes the monolith's tokens start with
    header_b64: String,
    /// the public key's base64url modulus and exponent, for verifying our own tokens
    pub public_n: String,
    pub public_e: String,
    /// serialised once, in order
    jwks: String,
    issuer: String,
    audience: String,
}

/// The claims, in the monolith's order.
#[derive(Serialize)]
struct AccessClaims<'a> {
    sub: &'a str,
    email: &'a str,
    sid: &'a str,
    iat: u64,
    exp: u64,
    aud: &'a str,
    iss: &'a str,
}

impl Keys {
    pub fn from_file(path: &str, kid: &str, issuer: &str, audience: &str) -> Result<Keys, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|e| KeyError::Read(path.into(), e))?;
        Self::from_pem(&pem, kid, issuer, audience).map_err(|e| KeyError::NotRsa(path.into(), e))
    }

    /// Signing goes through OpenSSL (already linked for the proxy): an RS256 signature costs
    /// ≈ 3.3 ms with the pure-Rust RSA of jsonwebtoken's default backend and well under 1 ms here,
    /// and every login and refresh signs one.
    pub fn from_pem(pem: &str, kid: &str, issuer: &str, audience: &str) -> Result<Keys, String> {
        let key = PKey::private_key_from_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let rsa = key.rsa().map_err(|_| "not an RSA key".to_string())?;
        let (n, e) = (URL_SAFE_NO_PAD.encode(rsa.n().to_vec()), URL_SAFE_NO_PAD.encode(rsa.e().to_vec()));
        // the monolith's key order (node's JWK export, then kid/use/alg), so the bytes and ETag match
        #[derive(Serialize)]
        struct JwkOut<'a> {
            kty: &'a str,
            n: &'a str,
            e: &'a str,
            kid: &'a str,
            #[serde(rename = "use")]
            use_: &'a str,
            alg: &'a str,
        }
        #[derive(Serialize)]
        struct Jwks<'a> {
            keys: [JwkOut<'a>; 1],
        }
        let jwks = serde_json::to_string(&Jwks { keys: [JwkOut { kty: "RSA", n: &n, e: &e, kid, use_: "sig", alg: "RS256" }] })
            .map_err(|e| e.to_string())?;
        #[derive(Serialize)]
        struct JoseHeader<'a> {
            alg: &'a str,
            typ: &'a str,
            kid: &'a str,
        }
        let header = serde_json::to_vec(&JoseHeader { alg: "RS256", typ: "JWT", kid }).map_err(|e| e.to_string())?;
        let throwaway = openssl::rsa::Rsa::generate(rsa.size() * 8).and_then(PKey::from_rsa).map_err(|e| e.to_string())?;
        Ok(Keys {
            key,
            throwaway,
            header_b64: URL_SAFE_NO_PAD.encode(header),
            public_n: n,
            public_e: e,
            jwks,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    pub fn sign(&self, user_id: &str, email: &str, sid: &str, ttl_secs: u64) -> String {
        self.sign_with(&self.key, user_id, email, sid, ttl_secs)
    }

    /// A token like [`Self::sign`]'s whose signature no published key verifies (for dry runs).
    pub fn sign_unusable(&self, user_id: &str, email: &str, sid: &str, ttl_secs: u64) -> String {
        self.sign_with(&self.throwaway, user_id, email, sid, ttl_secs)
    }

    fn sign_with(&self, key: &PKey<Private>, user_id: &str, email: &str, sid: &str, ttl_secs: u64) -> String {
        let iat = chrono::Utc::now().timestamp() as u64;
        let claims = AccessClaims { sub: user_id, email, sid, iat, exp: iat + ttl_secs, aud: &self.audience, iss: &self.issuer };
        let payload = serde_json::to_vec(&claims).expect("claims serialise");
        let input = format!("{}.{}", self.header_b64, URL_SAFE_NO_PAD.encode(payload));
        let mut signer = Signer::new(MessageDigest::sha256(), key).expect("an RSA key signs");
        signer.update(input.as_bytes()).expect("signing");
        let signature = signer.sign_to_vec().expect("an RSA key signs");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    pub fn jwks(&self) -> &str {
        &self.jwks
    }
}

/// `randomBytes(32).toString('base64url')`: 43 characters.
pub fn opaque_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// What the database keeps of a token: SHA-256, hex.
pub fn sha256_hex(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_tokens_look_like_the_monolith_s() {
        let t = opaque_token();
        assert_eq!(t.len(), 43);
        assert_ne!(t, opaque_token());
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
#[cfg(test)]
mod signing {
    use super::*;

    fn keys() -> Keys {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pem = String::from_utf8(PKey::from_rsa(rsa).unwrap().private_key_to_pem_pkcs8().unwrap()).unwrap();
        Keys::from_pem(&pem, "brainmessenger-1", "https://iss", "aud").unwrap()
    }

    #[test]
    fn tokens_verify_with_the_shared_verifier_and_carry_the_monolith_header() {
        let k = keys();
        let token = k.sign("0b0e…user", "a@x.io", "sid-1", 900);
        let v = bm_common::jwt::Verifier::from_rsa_components(&k.public_n, &k.public_e, "https://iss", "aud").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let c = rt.block_on(v.verify(&token)).unwrap();
        assert_eq!((c.sub.as_str(), c.email.as_str(), c.sid.as_str(), c.exp - c.iat), ("0b0e…user", "a@x.io", "sid-1", 900));
        let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        assert_eq!(header, br#"{"alg":"RS256","typ":"JWT","kid":"brainmessenger-1"}"#);
        // another key's verifier rejects it
        let other = keys();
        let w = bm_common::jwt::Verifier::from_rsa_components(&other.public_n, &other.public_e, "https://iss", "aud").unwrap();
        assert!(rt.block_on(w.verify(&token)).is_err());
        assert!(k.jwks().starts_with(r#"{"keys":[{"kty":"RSA","n":""#));
        assert!(Keys::from_pem("not a key", "k", "i", "a").is_err());
    }
}
