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

pub fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
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
