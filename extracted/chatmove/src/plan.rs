//! What a move does, as pure logic: which buckets leave which database for which shard, and the
//! SQL each stage runs for them. A move goes from the monolith's tables (`legacy.*`, the first
//! move) or from one shard map to the next (adding a shard), to a new map; every bucket whose
//! owner changes moves, the others stay where they are.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use bm_shards::{bucket_sql, ShardMap, BUCKETS};
use thiserror::Error;

/// The source name of the monolith's tables (its database is DATABASE_URL, schema `legacy`).
pub const LEGACY: &str = "legacy";

/// A table the move carries, in the order it copies them (parents first: on a shard, members and
/// messages reference their chat).
#[derive(Debug)]
pub struct TableSpec {
    pub name: &'static str,
    /// every column, in the shard table's order (`migrations/chat/`; the same as legacy's)
    pub columns: &'static [&'static str],
    /// the primary key
    pub pk: &'static [&'static str],
    /// the uuid column copy and verify walk in chunks (the first primary-key column)
    pub range_key: &'static str,
    /// the column whose bucket places the row: a chat's rows go where the chat goes
    pub bucket_col: &'static str,
    /// rows of a chat: only written when their chat is there (see [`upsert_sql`])
    pub child: bool,
}

pub const TABLES: [TableSpec; 3] = [
    TableSpec {
        name: "chats",
        columns: &["id", "title", "is_group", "created_by", "created_at", "updated_at"],
        pk: &["id"],
        range_key: "id",
        bucket_col: "id",
        child: false,
    },
    TableSpec {
        name: "chat_members",
        columns: &["chat_id", "user_id", "role", "joined_at", "last_read_seq"],
        pk: &["chat_id", "user_id"],
        range_key: "chat_id",
        bucket_col: "chat_id",
        child: true,
    },
    TableSpec {
        name: "messages",
        columns: &["id", "seq", "chat_id", "sender_id", "body", "client_message_id", "created_at", "edited_at", "deleted_at"],
        pk: &["id"],
        range_key: "id",
        bucket_col: "chat_id",
        child: true,
    },
];

pub fn table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}

/// Where the rows are before the move.
#[derive(Debug, Clone)]
pub enum Origin {
    /// the monolith's tables, all buckets
    Legacy,
    /// the shards of a map
    Map(ShardMap),
}

/// One database buckets leave, and where each goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// [`LEGACY`] or a shard's name
    pub name: String,
    /// `legacy` or `chat`
    pub schema: &'static str,
    /// the environment variable holding its URL (DATABASE_URL for the monolith's)
    pub url_env: String,
    /// every bucket leaving it
    pub buckets: Vec<RangeInclusive<u16>>,
    /// target shard name → the buckets it receives from here
    pub targets: BTreeMap<String, Vec<RangeInclusive<u16>>>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub sources: Vec<Source>,
    pub to: ShardMap,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("nothing to move: every bucket is already on the shard the new map gives it (is --to the map the service runs on?)")]
    NothingMoves,
    #[error("shard `{name}` reads its URL from {old} in the old map and from {new} in the new one: a shard's name is its identity — rename the shard or keep its url_env")]
    UrlEnvChanged { name: String, old: String, new: String },
    #[error("the new map's version {new} is not above the old map's {old}: bump `version` in the new map")]
    VersionNotIncreased { old: u64, new: u64 },
}

/// Consecutive buckets as ranges.
pub fn ranges(buckets: impl IntoIterator<Item = u16>) -> Vec<RangeInclusive<u16>> {
    let mut out: Vec<RangeInclusive<u16>> = Vec::new();
    for b in buckets {
        match out.last_mut() {
            Some(r) if *r.end() + 1 == b => *r = *r.start()..=b,
            _ => out.push(b..=b),
        }
    }
    out
}

/// Ranges shown as the shard map writes them: `0-255, 300`.
pub fn show_ranges(r: &[RangeInclusive<u16>]) -> String {
    r.iter()
        .map(|r| if r.start() == r.end() { r.start().to_string() } else { format!("{}-{}", r.start(), r.end()) })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn plan(from: &Origin, to: &ShardMap) -> Result<Plan, PlanError> {
    if let Origin::Map(old) = from {
        if to.version <= old.version {
            return Err(PlanError::VersionNotIncreased { old: old.version, new: to.version });
        }
        for o in &old.shards {
            if let Some(n) = to.shards.iter().find(|n| n.name == o.name && n.url_env != o.url_env) {
                return Err(PlanError::UrlEnvChanged { name: o.name.clone(), old: o.url_env.clone(), new: n.url_env.clone() });
            }
        }
    }
    // source name → (url_env, target name → buckets)
    let mut moving: BTreeMap<String, (String, BTreeMap<String, Vec<u16>>)> = BTreeMap::new();
    for b in 0..BUCKETS {
        let target = to.shard_for_bucket(b);
        let (source, url_env) = match from {
            Origin::Legacy => (LEGACY.to_string(), "DATABASE_URL".to_string()),
            Origin::Map(old) => {
                let s = old.shard_for_bucket(b);
                (s.name.clone(), s.url_env.clone())
            }
        };
        if source == target.name {
            continue;
        }
        let entry = moving.entry(source).or_insert_with(|| (url_env, BTreeMap::new()));
        entry.1.entry(target.name.clone()).or_default().push(b);
    }
    if moving.is_empty() {
        return Err(PlanError::NothingMoves);
    }
    let sources = moving
        .into_iter()
        .map(|(name, (url_env, targets))| {
            let mut all: Vec<u16> = targets.values().flatten().copied().collect();
            all.sort_unstable();
            Source {
                schema: if name == LEGACY { "legacy" } else { "chat" },
                name,
                url_env,
                buckets: ranges(all),
                targets: targets.into_iter().map(|(t, b)| (t, ranges(b))).collect(),
            }
        })
        .collect();
    Ok(Plan { sources, to: to.clone() })
}

/// `col`'s bucket is in `ranges`: built-ins only, so it serves as a publication's row filter.
pub fn bucket_filter(col: &str, ranges: &[RangeInclusive<u16>]) -> String {
    if ranges.len() == 1 && *ranges[0].start() == 0 && *ranges[0].end() == BUCKETS - 1 {
        return "true".into();
    }
    let expr = bucket_sql(col);
    let parts: Vec<String> =
        ranges
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    format!("{expr} = {}", r.start())
                } else {
                    format!("{expr} BETWEEN {} AND {}", r.start(), r.end())
                }
            })
            .collect();
    format!("({})", parts.join(" OR "))
}

/// The publication a follow stage reads: the three tables of `schema`, rows of `buckets` only
/// (PG 15 row filters), inserts, updates and deletes (a TRUNCATE of chat tables is not something
/// a move can follow: it stops with an error).
pub fn publication_sql(name: &str, schema: &str, buckets: &[RangeInclusive<u16>]) -> String {
    let mut tables = Vec::new();
    for t in &TABLES {
        let filter = bucket_filter(t.bucket_col, buckets);
        if filter == "true" {
            tables.push(format!("{schema}.{}", t.name));
        } else {
            tables.push(format!("{schema}.{} WHERE {}", t.name, filter));
        }
    }
    format!("CREATE PUBLICATION {name} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')", tables.join(", "))
}

/// The schema of a database's chat tables: the monolith's are `legacy`, a shard's `chat`.
pub fn schema_of(db: &str) -> &'static str {
    if db == LEGACY {
        "legacy"
    } else {
        "chat"
    }
}

/// The write fence of a database's chat tables, installed by prepare: a row trigger that
/// refuses (SQLSTATE `BMMOV`) every write to a chat whose bucket is fenced, after taking a
/// transaction-scoped **shared advisory lock** ([`FENCE_LOCK_KEY`]) — so closing the fence (that
/// lock taken exclusively, the buckets added) waits for every write in flight and no write lands
/// after it. An advisory lock lives in the lock manager's memory: the first version share-locked
/// one row instead, which writes the row (a multixact per new locker) and serialised every writer
/// of the database on one tuple (docs/benchmarks.md). Every writer meets it, the monolith
/// included. The mover's own sessions run with `session_replication_role = replica`: ordinary
/// triggers do not fire for them.
/// One statement each (run on their own: a trigger's lock on one table is never held while
/// waiting for the next, which would deadlock with writers touching them in another order).
pub fn fence_install_sql(schema: &str) -> Vec<String> {
    let bucket = bucket_sql("k");
    let mut s = vec![
        format!("CREATE TABLE IF NOT EXISTS {schema}.chat_move_fence (lo int NOT NULL, hi int NOT NULL, move_tag text NOT NULL, PRIMARY KEY (lo, hi))"),
    ];
    s.push(format!(
        "CREATE OR REPLACE FUNCTION {schema}.chat_move_fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
DECLARE
    k uuid;
    b int;
BEGIN
    IF TG_TABLE_NAME = 'chats' THEN
        IF TG_OP = 'DELETE' THEN k := OLD.id; ELSE k := NEW.id; END IF;
    ELSE
        IF TG_OP = 'DELETE' THEN k := OLD.chat_id; ELSE k := NEW.chat_id; END IF;
    END IF;
    PERFORM pg_advisory_xact_lock_shared({FENCE_LOCK_KEY});
    b := {bucket};
    IF EXISTS (SELECT 1 FROM {schema}.chat_move_fence WHERE b BETWEEN lo AND hi) THEN
        RAISE EXCEPTION 'chat % (bucket %) is being moved or has moved to another database: write it where the chat routing says', k, b
            USING ERRCODE = 'BMMOV';
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$fence$"
    ));
    for t in &TABLES {
        s.push(format!(
            "CREATE OR REPLACE TRIGGER chat_move_fence BEFORE INSERT OR UPDATE OR DELETE ON {schema}.{n} FOR EACH ROW EXECUTE FUNCTION {schema}.chat_move_fence()",
            n = t.name
        ));
    }
    // the lock row of the first version, unused once the function above replaced its own
    s.push(format!("DROP TABLE IF EXISTS {schema}.chat_move_fence_lock"));
    s
}

/// The advisory lock every write takes shared and closing the fence takes exclusively: the bytes
/// of "fence" (the move lock is "chatmo", the relay's "outbox").
pub const FENCE_LOCK_KEY: i64 = 0x66_656e_6365;

/// The SQLSTATE the fence raises.
pub const FENCE_SQLSTATE: &str = "BMMOV";

/// The upper key of the chunk after `$1` (NULL: from the start): the `$2`-th key, or none when
/// fewer are left (the last chunk reaches the end).
pub fn chunk_end_sql(schema: &str, t: &TableSpec) -> String {
    format!(
        "SELECT {k} FROM {schema}.{n} WHERE ($1::uuid IS NULL OR {k} > $1) ORDER BY {k} OFFSET $2 - 1 LIMIT 1",
        k = t.range_key,
        n = t.name
    )
}

/// A chunk's rows as JSON with their bucket, for `$1 < key <= $2` (`$1` NULL: from the start).
pub fn copy_select_sql(schema: &str, t: &TableSpec, buckets: &[RangeInclusive<u16>]) -> String {
    let filter = bucket_filter(t.bucket_col, buckets);
    format!(
        "SELECT {b}::int2, row_to_json(r)::text FROM (SELECT {cols} FROM {schema}.{n} WHERE ($1::uuid IS NULL OR {k} > $1) AND {k} <= $2 AND {filter}) r",
        b = bucket_sql(&format!("r.{}", t.bucket_col)),
        cols = t.columns.join(", "),
        n = t.name,
        k = t.range_key,
    )
}

fn chat_exists(schema: &str, t: &TableSpec) -> String {
    if t.child {
        format!(" WHERE EXISTS (SELECT 1 FROM {schema}.chats c WHERE c.id = r.chat_id)")
    } else {
        String::new()
    }
}

/// The copy's insert on a target: a JSON array of rows, the ones already there left alone (the
/// follow stage brings them up to date), rows whose chat is not there skipped (the chat was
/// created after the copy read the chats, so the follow stage brings both).
pub fn copy_insert_sql(t: &TableSpec) -> String {
    format!(
        "INSERT INTO chat.{n} SELECT r.* FROM json_populate_recordset(NULL::chat.{n}, $1::json) r{e} ON CONFLICT DO NOTHING",
        n = t.name,
        e = chat_exists("chat", t)
    )
}

/// The follow stage's insert-or-replace of one whole row (a JSON object of every column) in
/// `schema` (`chat` on a shard; `legacy` when syncing back, where `seq` is an identity column:
/// the shard's value is kept).
pub fn upsert_sql(schema: &str, t: &TableSpec) -> String {
    let set: Vec<String> = t.columns.iter().filter(|c| settable(t, c)).map(|c| format!("{c} = EXCLUDED.{c}")).collect();
    format!(
        "INSERT INTO {schema}.{n} OVERRIDING SYSTEM VALUE SELECT r.* FROM json_populate_record(NULL::{schema}.{n}, $1::json) r{e} ON CONFLICT ({pk}) DO UPDATE SET {set}",
        n = t.name,
        e = chat_exists(schema, t),
        pk = t.pk.join(", "),
        set = set.join(", ")
    )
}

/// A column an update may set: not the key, and not `seq` (a message keeps its number for
/// life; in the monolith's table it is an identity column that refuses updates).
fn settable(t: &TableSpec, c: &str) -> bool {
    !t.pk.contains(&c) && c != "seq"
}

/// An update that left some columns out (unchanged TOASTed values): only the columns sent, only
/// if the row is there (when it is not, it was deleted before the copy read it and its delete
/// follows in the stream).
pub fn update_sql(schema: &str, t: &TableSpec, columns: &[&str]) -> String {
    let set: Vec<String> = columns.iter().filter(|c| settable(t, c)).map(|c| format!("{c} = r.{c}")).collect();
    let keys: Vec<String> = t.pk.iter().map(|k| format!("t.{k} = r.{k}")).collect();
    format!(
        "UPDATE {schema}.{n} t SET {} FROM json_populate_record(NULL::{schema}.{n}, $1::json) r WHERE {}",
        set.join(", "),
        keys.join(" AND "),
        n = t.name
    )
}

/// A delete by primary key (from a JSON object holding at least the key).
pub fn delete_sql(schema: &str, t: &TableSpec) -> String {
    let keys: Vec<String> = t.pk.iter().map(|k| format!("t.{k} = r.{k}")).collect();
    format!(
        "DELETE FROM {schema}.{n} t USING json_populate_record(NULL::{schema}.{n}, $1::json) r WHERE {}",
        keys.join(" AND "),
        n = t.name
    )
}

/// The first value of shard `index`'s message sequence above `max`: the smallest number above
/// it that is `index` modulo [`bm_shards::MAX_SHARDS`] (docs/chat-sharding.md, "Sequence numbers").
pub fn first_seq_above(max: i64, index: usize) -> i64 {
    let step = bm_shards::MAX_SHARDS as i64;
    let next = max + 1;
    next + (index as i64 - next).rem_euclid(step)
}

/// The verify query for a chunk `$1 < range key <= $2` of a table in `schema`, rows of
/// `buckets`: each row's key (composite keys joined with `/`: uuids print in their sort order,
/// so the text keys sort as the rows do) and an md5 of every column.
pub fn checksum_sql(schema: &str, t: &TableSpec, buckets: &[RangeInclusive<u16>]) -> String {
    let key = if t.pk.len() == 1 { format!("{}::text", t.pk[0]) } else { format!("concat_ws('/', {})", t.pk.join(", ")) };
    format!(
        "SELECT {key}, md5(ROW({cols})::text) FROM {schema}.{n} WHERE ($1::uuid IS NULL OR {k} > $1) AND {k} <= $2 AND {f} ORDER BY {pk}",
        cols = t.columns.join(", "),
        n = t.name,
        k = t.range_key,
        f = bucket_filter(t.bucket_col, buckets),
        pk = t.pk.join(", ")
    )
}

/// [`checksum_sql`] for the rows of some keys (`$1`: the keys as [`checksum_sql`] prints them),
/// whatever their bucket: verify reads the rows that differed again.
pub fn checksum_keys_sql(schema: &str, t: &TableSpec) -> String {
    let (key, filter) = if t.pk.len() == 1 {
        (format!("{}::text", t.pk[0]), format!("{} = ANY($1::uuid[])", t.pk[0]))
    } else {
        let parts: Vec<String> = (1..=t.pk.len()).map(|i| format!("split_part(k, '/', {i})::uuid")).collect();
        (
            format!("concat_ws('/', {})", t.pk.join(", ")),
            format!("({}) IN (SELECT {} FROM unnest($1::text[]) k)", t.pk.join(", "), parts.join(", ")),
        )
    };
    format!(
        "SELECT {key}, md5(ROW({cols})::text) FROM {schema}.{n} WHERE {filter} ORDER BY {pk}",
        cols = t.columns.join(", "),
        n = t.name,
        pk = t.pk.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn map(version: u64, shards: &[(&str, &str)]) -> ShardMap {
        let mut s = format!("version = {version}\n");
        for (name, buckets) in shards {
            let _ = write!(s, "[[shards]]\nname = \"{name}\"\nurl_env = \"URL_{}\"\nbuckets = [{buckets}]\n", name.to_uppercase());
        }
        ShardMap::parse("test.toml", &s).unwrap()
    }

    fn four() -> ShardMap {
        map(1, &[("s0", "\"0-255\""), ("s1", "\"256-511\""), ("s2", "\"512-767\""), ("s3", "\"768-1023\"")])
    }

    #[test]
    fn the_first_move_takes_every_bucket_from_the_monolith() {
        let p = plan(&Origin::Legacy, &four()).unwrap();
        assert_eq!(p.sources.len(), 1);
        let s = &p.sources[0];
        assert_eq!((s.name.as_str(), s.schema, s.url_env.as_str()), ("legacy", "legacy", "DATABASE_URL"));
        assert_eq!(s.buckets, vec![0..=1023]);
        assert_eq!(s.targets["s2"], vec![512..=767]);
        assert_eq!(
            publication_sql("chat_move_1", s.schema, &s.buckets),
            "CREATE PUBLICATION chat_move_1 FOR TABLE legacy.chats, legacy.chat_members, legacy.messages WITH (publish = 'insert, update, delete, truncate')"
        );
    }

    #[test]
    fn a_fifth_shard_takes_a_share_from_each_of_the_four() {
        let five = map(
            2,
            &[
                ("s0", "\"0-204\""),
                ("s1", "\"256-460\""),
                ("s2", "\"512-716\""),
                ("s3", "\"768-972\""),
                ("s4", "\"205-255\", \"461-511\", \"717-767\", \"973-1023\""),
            ],
        );
        let p = plan(&Origin::Map(four()), &five).unwrap();
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s0", "s1", "s2", "s3"]);
        assert_eq!(p.sources[1].buckets, vec![461..=511]);
        assert_eq!(p.sources[1].targets.keys().collect::<Vec<_>>(), ["s4"]);
        assert_eq!(p.sources[1].schema, "chat");
        assert_eq!(bucket_filter("chat_id", &p.sources[1].buckets), format!("({} BETWEEN 461 AND 511)", bucket_sql("chat_id")));
        assert!(publication_sql("m", "chat", &p.sources[1].buckets).contains("chat.messages WHERE (((get_byte(uuid_send(chat_id), 14)"));
    }

    #[test]
    fn refuses_a_move_that_moves_nothing_or_renames_or_goes_back_in_version() {
        assert_eq!(
            plan(
                &Origin::Map(four()),
                &map(2, &[("s0", "\"0-255\""), ("s1", "\"256-511\""), ("s2", "\"512-767\""), ("s3", "\"768-1023\"")])
            )
            .unwrap_err(),
            PlanError::NothingMoves
        );
        assert_eq!(
            plan(&Origin::Map(four()), &map(1, &[("s0", "\"0-1023\"")])).unwrap_err(),
            PlanError::VersionNotIncreased { old: 1, new: 1 }
        );
        let renamed =
            ShardMap::parse("t", "version = 2\n[[shards]]\nname = \"s0\"\nurl_env = \"OTHER\"\nbuckets = [\"0-1023\"]\n").unwrap();
        assert!(matches!(plan(&Origin::Map(four()), &renamed), Err(PlanError::UrlEnvChanged { .. })));
    }

    #[test]
    fn new_sequence_numbers_start_above_the_old_ones_in_the_shards_residue() {
        assert_eq!(first_seq_above(0, 0), 64);
        assert_eq!(first_seq_above(0, 3), 3);
        assert_eq!(first_seq_above(100, 3), 131);
        assert_eq!(first_seq_above(131, 3), 195);
        assert_eq!(first_seq_above(127, 63), 191);
        for max in [0i64, 1, 63, 64, 65, 1_000_003] {
            for i in 0..64 {
                let v = first_seq_above(max, i);
                assert!(v > max && v - max <= 64 && v % 64 == i as i64, "{max} {i} {v}");
            }
        }
    }

    #[test]
    fn ranges_group_consecutive_buckets() {
        assert_eq!(ranges([1, 2, 3, 7, 9, 10]), vec![1..=3, 7..=7, 9..=10]);
        assert_eq!(show_ranges(&ranges([1, 2, 3, 7])), "1-3, 7");
        assert!(ranges([]).is_empty());
    }

    #[test]
    fn the_statements_name_every_column_and_key() {
        let m = table("chat_members").unwrap();
        assert_eq!(
            upsert_sql("chat", m),
            "INSERT INTO chat.chat_members OVERRIDING SYSTEM VALUE SELECT r.* FROM json_populate_record(NULL::chat.chat_members, $1::json) r WHERE EXISTS (SELECT 1 FROM chat.chats c WHERE c.id = r.chat_id) ON CONFLICT (chat_id, user_id) DO UPDATE SET role = EXCLUDED.role, joined_at = EXCLUDED.joined_at, last_read_seq = EXCLUDED.last_read_seq"
        );
        assert_eq!(
            update_sql("chat", table("messages").unwrap(), &["id", "edited_at"]),
            "UPDATE chat.messages t SET edited_at = r.edited_at FROM json_populate_record(NULL::chat.messages, $1::json) r WHERE t.id = r.id"
        );
        assert_eq!(delete_sql("chat", m), "DELETE FROM chat.chat_members t USING json_populate_record(NULL::chat.chat_members, $1::json) r WHERE t.chat_id = r.chat_id AND t.user_id = r.user_id");
        assert_eq!(
            checksum_keys_sql("chat", m),
            "SELECT concat_ws('/', chat_id, user_id), md5(ROW(chat_id, user_id, role, joined_at, last_read_seq)::text) FROM chat.chat_members WHERE (chat_id, user_id) IN (SELECT split_part(k, '/', 1)::uuid, split_part(k, '/', 2)::uuid FROM unnest($1::text[]) k) ORDER BY chat_id, user_id"
        );
        assert!(checksum_sql("legacy", m, &[0..=1023]).starts_with("SELECT concat_ws('/', chat_id, user_id), md5(ROW(chat_id, user_id, role, joined_at, last_read_seq)::text) FROM legacy.chat_members"));
    }
}
