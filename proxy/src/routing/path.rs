//! Request paths as the proxy matches and forwards them.
//!
//! A route must claim exactly the requests whose path *means* its prefix, however the client
//! spelled it: `/%61pi/x` is `/api/x`, and `/api/%2E%2E/x` is `/x`. Before matching, the path is
//! normalised as RFC 3986 §6.2.2 says, and the normalised path is what the upstream receives, so
//! the path that was matched is the path that is served:
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the hex
//!   digits of every other escape are upper-cased (`%2f` → `%2F`);
//! - a `%` not followed by two hex digits is an error (`400`);
//! - runs of slashes are collapsed to one, and `.`/`..` segments are resolved (a `..` above the
//!   root stays at the root);
//! - an encoded slash or backslash (`%2F`, `%5C`) is not a separator: by default it stays encoded
//!   inside its segment and is forwarded as is ([`EncodedSlash::Keep`], what Express and most
//!   servers expect: `/files/a%2Fb` is one segment `a%2Fb`); `encoded_slash = "reject"` answers
//!   `400` instead.
//!
//! Pure; the common case (nothing to change) allocates nothing.

use std::borrow::Cow;

/// What an encoded `/` or `\` in a path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlash {
    /// Stays encoded, part of its segment, forwarded unchanged.
    #[default]
    Keep,
    /// The request is refused with `400`.
    Reject,
}

impl EncodedSlash {
    pub fn parse(s: &str) -> Option<EncodedSlash> {
        match s {
            "keep" => Some(EncodedSlash::Keep),
            "reject" => Some(EncodedSlash::Reject),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            EncodedSlash::Keep => "keep",
            EncodedSlash::Reject => "reject",
        }
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed percent-encoding in the path")]
    BadPercent,
    #[error("encoded slash in the path")]
    EncodedSlash,
    #[error("the path does not start with `/`")]
    NotAbsolute,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::BadPercent => "bad_percent_encoding",
            PathError::EncodedSlash => "encoded_slash",
            PathError::NotAbsolute => "relative_path",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether the path may need work: any escape, doubled slash or dot segment.
fn needs_work(p: &[u8]) -> bool {
    p.iter().enumerate().any(|(i, &b)| b == b'%' || (b == b'/' && matches!(p.get(i + 1), Some(b'/' | b'.'))))
}

/// The normalised form of a request path (no query). `*` (the `OPTIONS *` target) is returned
/// as is.
pub fn normalize(path: &str, slash: EncodedSlash) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. escapes: decode the unreserved ones, upper-case the rest
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) else {
            return Err(PathError::BadPercent);
        };
        let v = h << 4 | l;
        if is_unreserved(v) {
            decoded.push(v);
        } else {
            if (v == b'/' || v == b'\\') && slash == EncodedSlash::Reject {
                return Err(PathError::EncodedSlash);
            }
            decoded.push(b'%');
            decoded.extend_from_slice(format!("{v:02X}").as_bytes());
        }
        i += 3;
    }
    // 2. segments: collapse empty ones, resolve dots
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            b"" => trailing = n == last,
            b"." => trailing = n == last,
            b".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut s = Vec::with_capacity(decoded.len());
    for seg in &out {
        s.push(b'/');
        s.extend_from_slice(seg);
    }
    if trailing || s.is_empty() {
        s.push(b'/');
    }
    // only ASCII was decoded from escapes and the rest came from a &str
    let s = String::from_utf8(s).map_err(|_| PathError::BadPercent)?;
    Ok(if s == path { Cow::Borrowed(path) } else { Cow::Owned(s) })
}

/// [`normalize`] keeping encoded slashes, for paths written in `routes.toml`; a path that does
/// not normalise is returned as written (compile reports it).
pub fn normalize_path(path: &str) -> String {
    normalize(path, EncodedSlash::Keep).map(Cow::into_owned).unwrap_or_else(|_| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> String {
        normalize(p, EncodedSlash::Keep).unwrap().into_owned()
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/b"), "/a/b");
        assert_eq!(n("//a///b/"), "/a/b/");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/.b/..c"), "/a/.b/..c");
    }

    /// See: issue 10, "Encoded paths route differently from their decoded form".
    #[test]
    fn encoded_unreserved_characters_and_dots_are_decoded() {
        assert_eq!(n("/%61pi/x"), "/api/x");
        assert_eq!(n("/api/%2E%2E/x"), "/x");
        assert_eq!(n("/api/%2e%2E/%2e/x"), "/x");
        assert_eq!(n("/%7euser/%41%42"), "/~user/AB");
        assert_eq!(n("/a%20b/%c3%a9"), "/a%20b/%C3%A9");
    }

    #[test]
    fn encoded_slashes_stay_in_their_segment_or_are_refused() {
        assert_eq!(n("/files/a%2fb"), "/files/a%2Fb");
        assert_eq!(n("/api/..%2F..%2Fadmin"), "/api/..%2F..%2Fadmin");
        assert_eq!(n("/a%5cb"), "/a%5Cb");
        assert_eq!(normalize("/files/a%2Fb", EncodedSlash::Reject), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/files/a%5Cb", EncodedSlash::Reject), Err(PathError::EncodedSlash));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for bad in ["/a%", "/a%2", "/a%zz", "/%G1"] {
            assert_eq!(normalize(bad, EncodedSlash::Keep), Err(PathError::BadPercent), "{bad}");
        }
        assert_eq!(normalize("a/b", EncodedSlash::Keep), Err(PathError::NotAbsolute));
    }

    #[test]
    fn nothing_to_do_allocates_nothing() {
        assert!(matches!(normalize("/auth/login", EncodedSlash::Keep), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a.b/c", EncodedSlash::Keep), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("*", EncodedSlash::Keep), Ok(Cow::Borrowed("*"))));
    }

    /// Percent-encode every character of `p` that may be encoded without changing its meaning.
    fn encode_all(p: &str, upper: bool) -> String {
        p.bytes()
            .map(|b| {
                if b == b'/' {
                    "/".to_string()
                } else if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    proptest! {
        /// Normalising twice changes nothing.
        #[test]
        fn idempotent(p in "(/[a-z.%0-9A-F]{0,4}){0,6}") {
            if let Ok(once) = normalize(&p, EncodedSlash::Keep) {
                let twice = normalize(&once, EncodedSlash::Keep).unwrap();
                prop_assert_eq!(once.as_ref(), twice.as_ref());
            }
        }

        /// No spelling of a path matches differently from the path itself: encoding any of its
        /// unreserved characters gives the same normal form.
        #[test]
        fn encoding_does_not_change_meaning(p in "(/[a-zA-Z0-9._~-]{0,5}){1,5}", upper in any::<bool>()) {
            prop_assert_eq!(n(&encode_all(&p, upper)), n(&p));
        }

        /// The result never holds a dot segment or an empty segment (except a trailing slash).
        #[test]
        fn no_dot_or_empty_segments(p in "(/(\\.|\\.\\.|%2[eE]|[a-c]){0,3}){1,6}") {
            let out = n(&p);
            prop_assert!(out.starts_with('/'));
            let inner = out.trim_end_matches('/');
            for seg in inner.split('/').skip(1) {
                prop_assert!(!matches!(seg, "" | "." | ".."), "{} -> {}", p, out);
            }
        }
    }
}
