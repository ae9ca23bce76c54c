//! Access tokens (RS256 JWTs with the monolith's claims, header and key id) signed with the
//! configured key, the JWKS other services verify them with, and opaque refresh tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
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
    encoding: EncodingKey,
    header: Header,
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

    pub fn from_pem(pem: &str, kid: &str, issuer: &str, audience: &str) -> Result<Keys, String> {
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        // the public modulus and exponent, from jsonwebtoken's own RSA implementation
        let (n, e) = match Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(|e| e.to_string())?.algorithm {
            AlgorithmParameters::RSA(p) => (p.n, p.e),
            _ => return Err("not an RSA key".into()),
        };
        // the monolith's key order (node's JWK export, then kid/use/alg), so the bytes and ETag match
        #[derive(Serialize)]
        struct JwkOut<'a> {
            kty: &'a str,
            n: String,
            e: String,
            kid: &'a str,
            #[serde(rename = "use")]
            use_: &'a str,
            alg: &'a str,
        }
        #[derive(Serialize)]
        struct Jwks<'a> {
            keys: [JwkOut<'a>; 1],
        }
        let jwks =
            serde_json::to_string(&Jwks { keys: [JwkOut { kty: "RSA", n: n.clone(), e: e.clone(), kid, use_: "sig", alg: "RS256" }] })
                .map_err(|e| e.to_string())?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        Ok(Keys { encoding, header, public_n: n, public_e: e, jwks, issuer: issuer.into(), audience: audience.into() })
    }

    pub fn sign(&self, user_id: &str, email: &str, sid: &str, ttl_secs: u64) -> String {
        let iat = chrono::Utc::now().timestamp() as u64;
        let claims = AccessClaims { sub: user_id, email, sid, iat, exp: iat + ttl_secs, aud: &self.audience, iss: &self.issuer };
        encode(&self.header, &claims, &self.encoding).expect("an RSA key signs")
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
