//! The shard map: which shard holds each of the [`BUCKETS`] buckets, read from `shards.toml`
//! and validated as a whole. Every problem is reported at once, each with the file, line and
//! column it is about and what to do, and nothing is half-accepted: a map either assigns every
//! bucket exactly once or it is refused (the service keeps running on its last good one).

use std::fmt;
use std::ops::{Range, RangeInclusive};

use serde::Deserialize;
use toml::Spanned;

use crate::{bucket, BUCKETS};

/// Shards a map may have: new messages are numbered in steps of this many, with the shard's
/// index as the offset (docs/chat-sharding.md, "Sequence numbers").
pub const MAX_SHARDS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    version: Spanned<i64>,
    #[serde(default)]
    shards: Vec<Spanned<RawShard>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShard {
    name: Spanned<String>,
    url_env: Spanned<String>,
    buckets: Vec<Spanned<String>>,
}

/// One shard: its name, the environment variable holding its database URL, its buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub name: String,
    pub url_env: String,
    pub buckets: Vec<RangeInclusive<u16>>,
}

/// A valid map: every bucket has exactly one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    pub version: u64,
    pub shards: Vec<Shard>,
    /// bucket → index into `shards`
    owner: Vec<u8>,
}

/// One thing wrong with a map, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: &'static str,
}

/// Everything wrong with a map file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MapError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{} in the shard map", self.file, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            writeln!(f, "{}:{}:{}: {}", self.file, p.line, p.column, p.message)?;
            if !p.hint.is_empty() {
                writeln!(f, "  hint: {}", p.hint)?;
            }
        }
        Ok(())
    }
}

struct Check<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Check<'_> {
    fn at(&mut self, span: Range<usize>, message: String, hint: &'static str) {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..start].chars().count() + 1;
        self.problems.push(Problem { line, column, message, hint });
    }
}

const RANGE_HINT: &str = "write a bucket (\"17\") or an inclusive range (\"0-255\") within 0-1023";

/// Shows bucket ranges compactly: `3, 10-12`.
fn ranges(buckets: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < buckets.len() {
        let start = buckets[i];
        let mut end = start;
        while i + 1 < buckets.len() && buckets[i + 1] == end + 1 {
            i += 1;
            end = buckets[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    out.join(", ")
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bound = |t: &str| t.trim().parse::<u16>().map_err(|_| format!("`{s}` is not a bucket or a range of buckets"));
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (bound(a)?, bound(b)?),
        None => {
            let a = bound(s)?;
            (a, a)
        }
    };
    if a > b {
        return Err(format!("`{s}` is reversed: write `{b}-{a}`"));
    }
    if b >= BUCKETS {
        return Err(format!("`{s}` goes past the last bucket, {}", BUCKETS - 1));
    }
    Ok(a..=b)
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

impl ShardMap {
    /// Parses and validates `text` (the contents of `file`).
    pub fn parse(file: &str, text: &str) -> Result<ShardMap, MapError> {
        let mut check = Check { text, problems: Vec::new() };
        let raw: RawMap = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let hint = "keys are `version` and `[[shards]]` with `name`, `url_env` and `buckets`";
                check.at(span, e.message().trim_end().to_string(), hint);
                return Err(MapError { file: file.to_string(), problems: check.problems });
            }
        };
        let version = *raw.version.get_ref();
        if version < 1 {
            check.at(raw.version.span(), format!("version {version} must be 1 or more"), "increase it with every change to the map");
        }
        if raw.shards.is_empty() {
            check.at(0..0, "the map has no shards".into(), "add a [[shards]] table for each shard database");
        }
        if raw.shards.len() > MAX_SHARDS {
            check.at(
                raw.shards[MAX_SHARDS].span(),
                format!("{} shards; at most {MAX_SHARDS}", raw.shards.len()),
                "new messages are numbered in steps of 64 with the shard's index as offset",
            );
        }
        // bucket → (shard index, the span that claimed it)
        let mut claimed: Vec<Option<(usize, Range<usize>)>> = vec![None; BUCKETS as usize];
        let mut shards = Vec::with_capacity(raw.shards.len());
        for (i, s) in raw.shards.iter().enumerate() {
            let s = s.get_ref();
            let name = s.name.get_ref();
            let valid_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid_name {
                check.at(s.name.span(), format!("shard name `{name}` is not lowercase letters, digits, `-` or `_`"), "e.g. `s0`");
            }
            if let Some(first) = raw.shards[..i].iter().find(|o| o.get_ref().name.get_ref() == name) {
                let line = text[..first.span().start].matches('\n').count() + 1;
                check.at(s.name.span(), format!("shard `{name}` is named twice (first on line {line})"), "give each shard its own name");
            }
            let env = s.url_env.get_ref();
            if !valid_env_name(env) {
                check.at(s.url_env.span(), format!("`{env}` is not an environment variable name"), "e.g. `CHAT_SHARD_S0_URL`");
            }
            if raw.shards[..i].iter().any(|o| o.get_ref().url_env.get_ref() == env) {
                check.at(s.url_env.span(), format!("`{env}` is the URL of another shard too"), "each shard is its own database");
            }
            if s.buckets.is_empty() {
                check.at(
                    s.name.span(),
                    format!("shard `{name}` has no buckets"),
                    "give it buckets, or remove it once a move has emptied it",
                );
            }
            let mut mine = Vec::new();
            for b in &s.buckets {
                match parse_range(b.get_ref()) {
                    Ok(r) => {
                        let mut taken: Vec<u16> = Vec::new();
                        let mut other = None;
                        for n in r.clone() {
                            match &claimed[n as usize] {
                                Some((j, _)) => {
                                    taken.push(n);
                                    other.get_or_insert(*j);
                                }
                                None => claimed[n as usize] = Some((i, b.span())),
                            }
                        }
                        if let Some(j) = other {
                            let who = if j == i {
                                "this shard already".to_string()
                            } else {
                                format!("shard `{}` too", raw.shards[j].get_ref().name.get_ref())
                            };
                            check.at(
                                b.span(),
                                format!("buckets {} belong to {who}", ranges(&taken)),
                                "each bucket belongs to exactly one shard",
                            );
                        }
                        mine.push(r);
                    }
                    Err(m) => check.at(b.span(), m, RANGE_HINT),
                }
            }
            shards.push(Shard { name: name.clone(), url_env: env.clone(), buckets: mine });
        }
        let unassigned: Vec<u16> = (0..BUCKETS).filter(|n| claimed[*n as usize].is_none()).collect();
        if !unassigned.is_empty() && !raw.shards.is_empty() {
            check.at(
                0..0,
                format!("buckets {} are assigned to no shard: the users in them would have nowhere to live", ranges(&unassigned)),
                "every bucket 0-1023 belongs to exactly one shard",
            );
        }
        if !check.problems.is_empty() {
            check.problems.sort_by_key(|p| (p.line, p.column));
            return Err(MapError { file: file.to_string(), problems: check.problems });
        }
        let owner = claimed.into_iter().map(|c| c.map_or(0, |(i, _)| i as u8)).collect();
        Ok(ShardMap { version: version as u64, shards, owner })
    }

    /// The shard holding a bucket.
    pub fn shard_for_bucket(&self, b: u16) -> &Shard {
        &self.shards[self.owner[(b % BUCKETS) as usize] as usize]
    }

    /// The index (in `shards`) of the shard holding an id's bucket: a user's own shard, or a
    /// chat's home shard.
    pub fn index_of(&self, id: &uuid::Uuid) -> usize {
        self.owner[bucket(id) as usize] as usize
    }

    /// The shard holding an id's bucket.
    pub fn shard_of(&self, id: &uuid::Uuid) -> &Shard {
        &self.shards[self.index_of(id)]
    }

    /// Each shard's database URL from the environment (`lookup`), or every variable that is
    /// missing, at once.
    pub fn urls(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, Vec<String>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for s in &self.shards {
            match lookup(&s.url_env).filter(|v| !v.is_empty()) {
                Some(url) => out.push((s.name.clone(), url)),
                None => missing.push(format!("{} is not set (the database URL of shard `{}`)", s.url_env, s.name)),
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_repositorys_map_is_valid() {
        let text = include_str!("../../../shards.toml");
        let map = ShardMap::parse("shards.toml", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map.shards.len(), 4);
        assert_eq!(map.shard_for_bucket(1023).url_env, "CHAT_SHARD_S3_URL");
    }

    const FOUR: &str = r#"version = 1
[[shards]]
name = "s0"
url_env = "CHAT_SHARD_S0_URL"
buckets = ["0-255"]
[[shards]]
name = "s1"
url_env = "CHAT_SHARD_S1_URL"
buckets = ["256-511"]
[[shards]]
name = "s2"
url_env = "CHAT_SHARD_S2_URL"
buckets = ["512-767"]
[[shards]]
name = "s3"
url_env = "CHAT_SHARD_S3_URL"
buckets = ["768-1022", "1023"]
"#;

    #[test]
    fn a_good_map() {
        let m = ShardMap::parse("shards.toml", FOUR).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.shard_for_bucket(0).name, "s0");
        assert_eq!(m.shard_for_bucket(300).name, "s1");
        assert_eq!(m.shard_for_bucket(1023).name, "s3");
        let id: uuid::Uuid = "6f1c1a52-0000-4000-8000-00000000012c".parse().unwrap(); // bucket 300
        assert_eq!(m.shard_of(&id).name, "s1");
        let env = |k: &str| (k != "CHAT_SHARD_S2_URL").then(|| format!("postgres://{k}"));
        let missing = m.urls(env).unwrap_err();
        assert_eq!(missing, vec!["CHAT_SHARD_S2_URL is not set (the database URL of shard `s2`)"]);
    }

    #[test]
    fn every_problem_at_once_with_its_place() {
        let text = r#"version = 0
[[shards]]
name = "s0"
url_env = "CHAT_SHARD_S0_URL"
buckets = ["0-255", "250-260"]
[[shards]]
name = "s0"
url_env = "chat shard"
buckets = ["700-600", "x", "1000-1024"]
"#;
        let e = ShardMap::parse("shards.toml", text).unwrap_err();
        let shown = e.to_string();
        for want in [
            "shards.toml:1:11: version 0 must be 1 or more",
            "shards.toml:5:21: buckets 250-255 belong to this shard already",
            "shards.toml:7:8: shard `s0` is named twice (first on line 2)",
            "shards.toml:8:11: `chat shard` is not an environment variable name",
            "shards.toml:9:12: `700-600` is reversed: write `600-700`",
            "shards.toml:9:23: `x` is not a bucket or a range of buckets",
            "shards.toml:9:28: `1000-1024` goes past the last bucket, 1023",
            "buckets 261-1023 are assigned to no shard",
        ] {
            assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
        }
        assert_eq!(e.problems.len(), 8, "{shown}");
    }

    #[test]
    fn overlaps_name_the_other_shard_and_unknown_keys_are_refused() {
        let text = FOUR.replace(r#"buckets = ["256-511"]"#, r#"buckets = ["200-511"]"#);
        let e = ShardMap::parse("shards.toml", &text).unwrap_err().to_string();
        assert!(e.contains(r#"shards.toml:9:12: buckets 200-255 belong to shard `s0` too"#), "{e}");
        let text = FOUR.replace(r#"name = "s1""#, "name = \"s1\"\nweight = 2");
        let e = ShardMap::parse("shards.toml", &text).unwrap_err().to_string();
        assert!(e.contains("shards.toml:8:1: unknown field `weight`"), "{e}");
        let e = ShardMap::parse("shards.toml", "version = 3\n").unwrap_err().to_string();
        assert!(e.contains("the map has no shards"), "{e}");
    }

    proptest! {
        /// Any split of 0..1023 into consecutive ranges over up to 8 shards is accepted, and
        /// every bucket is found on the shard whose range holds it.
        #[test]
        fn any_partition_is_a_valid_map(cuts in proptest::collection::btree_set(1u16..1024, 0..7)) {
            let mut bounds: Vec<u16> = vec![0];
            bounds.extend(cuts.iter().copied());
            bounds.push(1024);
            let mut text = String::from("version = 2\n");
            for (i, w) in bounds.windows(2).enumerate() {
                text.push_str(&format!("[[shards]]\nname = \"s{i}\"\nurl_env = \"S{i}_URL\"\nbuckets = [\"{}-{}\"]\n", w[0], w[1] - 1));
            }
            let m = ShardMap::parse("p.toml", &text).unwrap();
            for b in 0..BUCKETS {
                let i = bounds.windows(2).position(|w| (w[0]..w[1]).contains(&b)).unwrap();
                prop_assert_eq!(&m.shard_for_bucket(b).name, &format!("s{i}"));
            }
        }
    }
}
