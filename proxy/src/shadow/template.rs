//! Endpoint templates: `GET /users/123/chats/5f1c…` → `GET /users/{id}/chats/{id}`, so results
//! group per endpoint rather than per URL. A segment is an id when it is a number, a UUID, a
//! long hex string, or a long token that mixes letters and digits.

use super::diff::is_uuid;

pub fn endpoint_template(method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<String> = path.split('/').map(|s| if is_id(s) { "{id}".to_string() } else { s.to_string() }).collect();
    let joined = segs.join("/");
    format!("{} {}", method.to_ascii_uppercase(), if joined.is_empty() { "/" } else { &joined })
}

/// FNV-1a (64-bit) of the text [`endpoint_template`] returns, computed without building it: the
/// edge counts requests per template on the request path (`crate::progress`), and builds a
/// template's text only the first time it is seen.
pub fn endpoint_template_key(method: &str, path: &str) -> u64 {
    let mut h = Fnv64::new();
    for b in method.bytes() {
        h.byte(b.to_ascii_uppercase());
    }
    h.byte(b' ');
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() {
        h.byte(b'/');
        return std::hash::Hasher::finish(&h);
    }
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            h.byte(b'/');
        }
        h.bytes(if is_id(seg) { b"{id}" } else { seg.as_bytes() });
    }
    std::hash::Hasher::finish(&h)
}

/// FNV-1a, 64-bit, fed piece by piece; also a `Hasher` for maps whose keys come from the
/// configuration, not from clients (it is not resistant to chosen keys).
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl std::hash::Hasher for Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        self.bytes(bytes);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv64 {
    pub fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    pub fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    pub fn bytes(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.byte(b));
    }
    pub fn of(bytes: &[u8]) -> u64 {
        let mut h = Fnv64::new();
        h.bytes(bytes);
        std::hash::Hasher::finish(&h)
    }
}

pub fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    // every kind of id but a number has at least 16 characters: a short segment is one only when
    // it is all digits (the edge asks this of every segment the monolith answers)
    if seg.len() < 16 {
        return seg.bytes().all(|b| b.is_ascii_digit());
    }
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    if digits == seg.len() || is_uuid(seg) {
        return true;
    }
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && seg.len() >= 16 {
        return true;
    }
    let token = seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    token && seg.len() >= 16 && digits > 0 && seg.bytes().any(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rule as it was first written, one test per kind of id.
    fn is_id_reference(seg: &str) -> bool {
        let digits = seg.bytes().filter(u8::is_ascii_digit).count();
        if seg.is_empty() {
            return false;
        }
        let token = seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        digits == seg.len()
            || is_uuid(seg)
            || (seg.bytes().all(|b| b.is_ascii_hexdigit()) && seg.len() >= 16)
            || (token && seg.len() >= 16 && digits > 0 && seg.bytes().any(|b| b.is_ascii_alphabetic()))
    }

    proptest! {
        /// The short-segment shortcut changes no answer.
        #[test]
        fn the_shortcut_agrees_with_the_rule(seg in prop_oneof!["[0-9]{0,20}", "[0-9a-f]{10,20}", "[a-zA-Z0-9_-]{0,20}", ".{0,20}"]) {
            prop_assert_eq!(is_id(&seg), is_id_reference(&seg), "{}", seg);
        }

        /// The key computed on the request path is the hash of the template's text.
        #[test]
        fn key_is_the_hash_of_the_template(
            method in prop::sample::select(vec!["GET", "post", "DELETE", "m-séarch"]),
            segs in prop::collection::vec(prop_oneof![
                Just(String::new()),
                "[a-z]{1,8}",
                "[0-9]{1,6}",
                "[0-9a-f]{16,24}",
                Just("5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f00".to_string()),
                "[a-zA-Z0-9_-]{14,20}",
            ], 0..6),
            query in prop::option::of("[a-z=&]{0,8}"),
        ) {
            let mut path = segs.join("/");
            if let Some(q) = query {
                path = format!("{path}?{q}");
            }
            for p in [path.clone(), format!("/{path}")] {
                prop_assert_eq!(endpoint_template_key(method, &p), Fnv64::of(endpoint_template(method, &p).as_bytes()), "{}", p);
            }
        }
    }

    #[test]
    fn ids_become_placeholders() {
        assert_eq!(endpoint_template("get", "/users/123"), "GET /users/{id}");
        assert_eq!(endpoint_template("GET", "/chats/5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f00/messages?first=20"), "GET /chats/{id}/messages");
        assert_eq!(endpoint_template("GET", "/files/65a1f0c2e4b0a1b2c3d4e5f6"), "GET /files/{id}");
        assert_eq!(endpoint_template("POST", "/auth/login"), "POST /auth/login");
        assert_eq!(endpoint_template("GET", "/"), "GET /");
        assert_eq!(endpoint_template("GET", "/users/me"), "GET /users/me");
        assert_eq!(endpoint_template("GET", "/auth/2fa/setup"), "GET /auth/2fa/setup");
    }
}
