//! JSON field paths (`$.messages[3].createdAt`) and the patterns rules are written in
//! (`$.messages[*].createdAt`, `$..accessToken`, `$.data.*.id`).
//!
//! A [`FieldPath`] names one concrete place in a document; a [`PathPattern`] names a set of
//! them. Pattern syntax: `$` root, `.key` or `["key"]`, `[3]` one index, `[*]` any index,
//! `.*` any key, `..key` the key at any depth below.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// One concrete place in a JSON document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        FieldPath(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        FieldPath(v)
    }
    /// The path with every index replaced by `[*]`: the unit in which noise is learned and
    /// mismatches are grouped (`$.messages[*].createdAt`).
    pub fn generalized(&self) -> String {
        generalize(self.0.iter().map(Seg::as_ref))
    }
}

/// A path's text with every index replaced by `[*]` ([`FieldPath::generalized`]).
pub fn generalize<'a>(segs: impl IntoIterator<Item = SegRef<'a>>) -> String {
    let mut s = String::from("$");
    for seg in segs {
        match seg {
            SegRef::Key(k) => push_key(&mut s, k),
            SegRef::Index(_) => s.push_str("[*]"),
        }
    }
    s
}

fn simple_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') && !k.starts_with(|c: char| c.is_ascii_digit())
}

fn push_key(s: &mut String, k: &str) {
    if simple_key(k) {
        s.push('.');
        s.push_str(k);
    } else {
        s.push_str("[\"");
        s.push_str(&k.replace('\\', "\\\\").replace('"', "\\\""));
        s.push_str("\"]");
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(self.0.iter().map(Seg::as_ref)))
    }
}

/// A [`Seg`] borrowed from the document being walked: a walk that keeps few of the places it
/// visits pushes and pops these, and renders a path's text only for a place it keeps (a
/// [`FieldPath`] per node cost a copy of every segment above it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegRef<'a> {
    Key(&'a str),
    Index(usize),
}

impl Seg {
    pub fn as_ref(&self) -> SegRef<'_> {
        match self {
            Seg::Key(k) => SegRef::Key(k),
            Seg::Index(i) => SegRef::Index(*i),
        }
    }
}

/// A path's segment, owned ([`Seg`], in a [`FieldPath`]) or borrowed from the document being
/// walked ([`SegRef`]): what a [`PathPattern`] is matched against.
pub trait PathSeg {
    fn seg(&self) -> SegRef<'_>;
}

impl PathSeg for Seg {
    fn seg(&self) -> SegRef<'_> {
        self.as_ref()
    }
}

impl PathSeg for SegRef<'_> {
    fn seg(&self) -> SegRef<'_> {
        *self
    }
}

/// A concrete path's text (`$.messages[3].createdAt`): what [`FieldPath`] displays as.
pub fn render<'a>(segs: impl IntoIterator<Item = SegRef<'a>>) -> String {
    use fmt::Write as _;
    let mut s = String::from("$");
    for seg in segs {
        match seg {
            SegRef::Key(k) => push_key(&mut s, k),
            SegRef::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatSeg {
    Key(String),
    Index(usize),
    AnyIndex,
    AnyKey,
    /// `..`: zero or more segments.
    Descendant,
}

/// A set of field paths, parsed from rule syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    segs: Vec<PatSeg>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad path `{path}` at character {at}: {reason}")]
pub struct PathError {
    pub path: String,
    pub at: usize,
    pub reason: &'static str,
}

impl PathPattern {
    pub fn parse(src: &str) -> Result<Self, PathError> {
        let err = |at: usize, reason| PathError { path: src.to_string(), at, reason };
        let b: Vec<char> = src.chars().collect();
        if b.first() != Some(&'$') {
            return Err(err(0, "a path starts with `$`"));
        }
        let mut i = 1;
        let mut segs = Vec::new();
        while i < b.len() {
            match b[i] {
                '.' if b.get(i + 1) == Some(&'.') => {
                    segs.push(PatSeg::Descendant);
                    i += 2;
                    let start = i;
                    while i < b.len() && b[i] != '.' && b[i] != '[' {
                        i += 1;
                    }
                    if start == i {
                        return Err(err(start, "`..` must be followed by a key"));
                    }
                    let key: String = b[start..i].iter().collect();
                    segs.push(if key == "*" { PatSeg::AnyKey } else { PatSeg::Key(key) });
                }
                '.' => {
                    i += 1;
                    let start = i;
                    while i < b.len() && b[i] != '.' && b[i] != '[' {
                        i += 1;
                    }
                    if start == i {
                        return Err(err(start, "expected a key after `.`"));
                    }
                    let key: String = b[start..i].iter().collect();
                    segs.push(if key == "*" { PatSeg::AnyKey } else { PatSeg::Key(key) });
                }
                '[' => {
                    let close = b[i..].iter().position(|c| *c == ']').map(|p| p + i).ok_or_else(|| err(i, "unclosed `[`"))?;
                    let inner: String = b[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    segs.push(if inner == "*" {
                        PatSeg::AnyIndex
                    } else if let Ok(n) = inner.parse::<usize>() {
                        PatSeg::Index(n)
                    } else if inner.len() >= 2
                        && (inner.starts_with('"') && inner.ends_with('"') || inner.starts_with('\'') && inner.ends_with('\''))
                    {
                        PatSeg::Key(inner[1..inner.len() - 1].replace("\\\"", "\"").replace("\\\\", "\\"))
                    } else {
                        return Err(err(i + 1, "expected `[n]`, `[*]` or `[\"key\"]`"));
                    });
                    i = close + 1;
                }
                _ => return Err(err(i, "expected `.` or `[`")),
            }
        }
        Ok(PathPattern { segs, source: src.to_string() })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern names exactly this path (a [`FieldPath`]'s segments, or those of a
    /// walk that borrows them).
    pub fn matches<S: PathSeg>(&self, path: &[S]) -> bool {
        matches(&self.segs, path)
    }

    /// Whether the pattern names this path or one of its ancestors (an ignored object hides
    /// everything inside it).
    pub fn covers<S: PathSeg>(&self, path: &[S]) -> bool {
        (0..=path.len()).any(|n| matches(&self.segs, &path[..n]))
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn matches<S: PathSeg>(pat: &[PatSeg], path: &[S]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((PatSeg::Descendant, rest)) => (0..=path.len()).any(|skip| matches(rest, &path[skip..])),
        Some((p, rest)) => match path.split_first() {
            None => false,
            Some((s, tail)) => {
                let ok = match (p, s.seg()) {
                    (PatSeg::Key(a), SegRef::Key(b)) => a == b,
                    (PatSeg::Index(a), SegRef::Index(b)) => *a == b,
                    (PatSeg::AnyIndex, SegRef::Index(_)) | (PatSeg::AnyKey, SegRef::Key(_)) => true,
                    _ => false,
                };
                ok && matches(rest, tail)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn displays_and_generalizes() {
        let path = FieldPath::root().key("messages").index(3).key("createdAt");
        assert_eq!(path.to_string(), "$.messages[3].createdAt");
        assert_eq!(path.generalized(), "$.messages[*].createdAt");
        assert_eq!(FieldPath::root().key("a b").to_string(), "$[\"a b\"]");
    }

    #[test]
    fn patterns_match() {
        let path = FieldPath::root().key("data").key("messages").index(3).key("createdAt");
        assert!(p("$.data.messages[3].createdAt").matches(&path.0));
        assert!(p("$.data.messages[*].createdAt").matches(&path.0));
        assert!(p("$..createdAt").matches(&path.0));
        assert!(p("$.data.*[*].createdAt").matches(&path.0));
        assert!(!p("$.data.messages[2].createdAt").matches(&path.0));
        assert!(!p("$..id").matches(&path.0));
        assert!(p("$.data").covers(&path.0));
        assert!(!p("$.data").matches(&path.0));
        assert!(p("$[\"data\"].messages").covers(&path.0));
        // the same answers for the segments a walk borrows from the document
        let borrowed: Vec<SegRef<'_>> = path.0.iter().map(Seg::as_ref).collect();
        for pattern in [
            "$.data.messages[3].createdAt",
            "$.data.messages[*].createdAt",
            "$..createdAt",
            "$.data.*[*].createdAt",
            "$.data.messages[2].createdAt",
            "$..id",
            "$.data",
            "$[\"data\"].messages",
        ] {
            assert_eq!(p(pattern).matches(&borrowed), p(pattern).matches(&path.0), "{pattern}");
            assert_eq!(p(pattern).covers(&borrowed), p(pattern).covers(&path.0), "{pattern}");
        }
        assert_eq!(render(borrowed.iter().copied()), path.to_string());
        assert_eq!(generalize(borrowed.iter().copied()), path.generalized());
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(PathPattern::parse("data.x").unwrap_err().reason, "a path starts with `$`");
        assert!(PathPattern::parse("$.a[").is_err());
        assert!(PathPattern::parse("$.a[x]").is_err());
        assert!(PathPattern::parse("$..").is_err());
    }
}
