//! The verify stage's comparison (docs/chat-sharding.md, "The move"), as pure logic: a chunk of
//! rows read from the source and the same key range read from the target, each row as its key
//! and a checksum of every column, compared by a merge of the two key-ordered lists — the way
//! Vitess VDiff and pt-table-checksum do it. What differs is named by key: missing on the target,
//! extra on the target, or changed.
//!
//! [`checksum_sql`] is the query both sides run for a chunk. Both must run it with the same
//! `TimeZone` (the mover sets UTC): a `timestamptz` is printed in the session's zone.

use std::cmp::Ordering;

/// One row: its key and the checksum of all its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSum<K> {
    pub key: K,
    pub sum: String,
}

/// What differs in one chunk, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDiff<K> {
    /// on the source, not on the target
    pub missing: Vec<K>,
    /// on the target, not on the source
    pub extra: Vec<K>,
    /// on both, with different columns
    pub changed: Vec<K>,
    pub source_rows: usize,
    pub target_rows: usize,
}

impl<K> ChunkDiff<K> {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.changed.is_empty()
    }
}

/// Compares two chunks, each in ascending key order (as `ORDER BY` the key returns them).
///
/// # Panics
/// When a side is not in strictly ascending key order: the comparison would be wrong, and that
/// is a bug in the query, not a difference in the data.
pub fn diff<K: Ord + Clone + std::fmt::Debug>(source: &[RowSum<K>], target: &[RowSum<K>]) -> ChunkDiff<K> {
    for side in [source, target] {
        assert!(side.windows(2).all(|w| w[0].key < w[1].key), "a chunk must be in strictly ascending key order");
    }
    let mut d = ChunkDiff { missing: vec![], extra: vec![], changed: vec![], source_rows: source.len(), target_rows: target.len() };
    let (mut i, mut j) = (0, 0);
    while i < source.len() || j < target.len() {
        let order = match (source.get(i), target.get(j)) {
            (Some(s), Some(t)) => s.key.cmp(&t.key),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                d.missing.push(source[i].key.clone());
                i += 1;
            }
            Ordering::Greater => {
                d.extra.push(target[j].key.clone());
                j += 1;
            }
            Ordering::Equal => {
                if source[i].sum != target[j].sum {
                    d.changed.push(source[i].key.clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    d
}

/// The checksum query of a chunk: `key` and `md5` of the row of `columns` (in this order on
/// both sides), for `$1 < key <= $2` (`$1` NULL: from the start), in key order. `filter` narrows
/// it further (a bucket range: [`crate::bucket_sql`]).
pub fn checksum_sql(table: &str, key: &str, columns: &[&str], filter: Option<&str>) -> String {
    let row = columns.join(", ");
    let extra = filter.map(|f| format!(" AND ({f})")).unwrap_or_default();
    format!("SELECT {key}, md5(ROW({row})::text) FROM {table} WHERE ($1::uuid IS NULL OR {key} > $1) AND {key} <= $2{extra} ORDER BY {key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(v: &[(u32, &str)]) -> Vec<RowSum<u32>> {
        v.iter().map(|(k, s)| RowSum { key: *k, sum: s.to_string() }).collect()
    }

    #[test]
    fn names_what_is_missing_extra_and_changed() {
        let source = rows(&[(1, "a"), (2, "b"), (3, "c"), (5, "e")]);
        let target = rows(&[(2, "b"), (3, "X"), (4, "d"), (5, "e"), (6, "f")]);
        let d = diff(&source, &target);
        assert_eq!((d.missing, d.extra, d.changed), (vec![1], vec![4, 6], vec![3]));
        assert_eq!((d.source_rows, d.target_rows), (4, 5));
        assert!(diff(&source, &source).is_clean());
        assert!(diff::<u32>(&[], &[]).is_clean());
    }

    #[test]
    #[should_panic(expected = "strictly ascending")]
    fn refuses_an_unordered_chunk() {
        diff(&rows(&[(2, "b"), (1, "a")]), &[]);
    }

    #[test]
    fn the_query_reads_one_chunk_in_key_order() {
        let q = checksum_sql("chat.messages", "id", &["id", "seq", "body"], Some("chat_id IS NOT NULL"));
        assert_eq!(
            q,
            "SELECT id, md5(ROW(id, seq, body)::text) FROM chat.messages WHERE ($1::uuid IS NULL OR id > $1) AND id <= $2 AND (chat_id IS NOT NULL) ORDER BY id"
        );
    }

    proptest! {
        /// Whatever is done to a copy, diff finds exactly what was done.
        #[test]
        fn finds_exactly_what_was_changed(
            keys in proptest::collection::btree_set(0u32..10_000, 0..200),
            drop_every in 2usize..9, change_every in 2usize..9, extra in proptest::collection::btree_set(10_000u32..20_000, 0..5),
        ) {
            let source: Vec<RowSum<u32>> = keys.iter().map(|k| RowSum { key: *k, sum: format!("s{k}") }).collect();
            let mut target = Vec::new();
            let (mut missing, mut changed) = (vec![], vec![]);
            for (i, r) in source.iter().enumerate() {
                if i % drop_every == 1 {
                    missing.push(r.key);
                } else if i % change_every == 0 {
                    changed.push(r.key);
                    target.push(RowSum { key: r.key, sum: "other".into() });
                } else {
                    target.push(r.clone());
                }
            }
            target.extend(extra.iter().map(|k| RowSum { key: *k, sum: "x".into() }));
            let d = diff(&source, &target);
            prop_assert_eq!(d.missing, missing);
            prop_assert_eq!(d.changed, changed);
            prop_assert_eq!(d.extra, extra.into_iter().collect::<Vec<_>>());
        }
    }
}
