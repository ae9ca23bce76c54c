//! Where chat data lives on the user-id shards (docs/chat-sharding.md), as pure logic:
//!
//! * [`bucket`]: a user or chat id's bucket, 0..1023 (the last 10 bits of the uuid; the same
//!   expression in SQL is [`BUCKET_SQL`], usable in a publication's row filter);
//! * [`mint_chat_id`]: a new chat's id, random but in its creator's bucket, so the chat is homed
//!   on the creator's shard and its id alone names that shard;
//! * [`ShardMap`]: the versioned map of buckets to shards, parsed and validated as a whole from
//!   `shards.toml`, every problem reported at once with file, line and column;
//! * [`verify`]: the move's verify comparison — chunks of (key, checksum of every column) from
//!   source and target merged by key, what differs named.

mod map;
pub mod verify;

pub use map::{MapError, Problem, Shard, ShardMap, MAX_SHARDS};

/// How many buckets user ids fall into. Never changes: changing it would move every user.
pub const BUCKETS: u16 = 1024;

/// [`bucket`] in PostgreSQL, for a uuid column `$col`: immutable built-ins only, so it is allowed
/// in a logical-replication publication's row filter (PG 15+).
pub const BUCKET_SQL: &str = "((get_byte(uuid_send($col), 14) * 256 + get_byte(uuid_send($col), 15)) % 1024)";

/// [`BUCKET_SQL`] for a column.
pub fn bucket_sql(column: &str) -> String {
    BUCKET_SQL.replace("$col", column)
}

/// The bucket of an id: its last 10 bits (random in v4 and v7 uuids, unlike v7's first bytes).
pub fn bucket(id: &uuid::Uuid) -> u16 {
    let b = id.as_bytes();
    u16::from_be_bytes([b[14], b[15]]) % BUCKETS
}

/// A fresh v4 uuid whose bucket is `home`'s bucket: a new chat minted for its creator lives on the
/// creator's shard, a new message minted for its chat on the chat's (so a message's id alone
/// names its shard). The other 112 random bits of a v4 stay random.
pub fn mint_chat_id(home: &uuid::Uuid) -> uuid::Uuid {
    let target = bucket(home);
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    // the low 10 bits of bytes 14..16 are the bucket; the top 6 bits of byte 14 stay random
    bytes[14] = (bytes[14] & 0b1111_1100) | (target >> 8) as u8;
    bytes[15] = (target & 0xff) as u8;
    uuid::Uuid::from_bytes(bytes)
}

/// Upserts inbox rows (`chat.inbox`, migrations/chat/0003_inbox.sql) given as six arrays: user
/// ids, chat ids, titles, is_group, created_at, updated_at. `updated_at` only moves forward, so
/// the mover's derivation, the service's writes and the projection of events can land in any
/// order, any number of times, and end in the same rows. A row it would not change is left
/// alone: no new row version for an event that arrives after the message's own transaction (or
/// the sender's write) already moved the row.
pub const INBOX_UPSERT_SQL: &str = "INSERT INTO chat.inbox (user_id, chat_id, title, is_group, created_at, updated_at)
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bool[], $5::timestamptz[], $6::timestamptz[])
     ON CONFLICT (user_id, chat_id) DO UPDATE SET title = EXCLUDED.title, is_group = EXCLUDED.is_group,
         updated_at = GREATEST(chat.inbox.updated_at, EXCLUDED.updated_at)
     WHERE chat.inbox.updated_at < EXCLUDED.updated_at OR chat.inbox.title IS DISTINCT FROM EXCLUDED.title
        OR chat.inbox.is_group <> EXCLUDED.is_group";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_is_the_last_ten_bits() {
        let id: uuid::Uuid = "6f1c1a52-0000-4000-8000-00000000012c".parse().unwrap();
        assert_eq!(bucket(&id), 0x12c);
        let id: uuid::Uuid = "6f1c1a52-0000-4000-8000-00000000ffff".parse().unwrap();
        assert_eq!(bucket(&id), 1023);
        assert_eq!(bucket_sql("user_id"), "((get_byte(uuid_send(user_id), 14) * 256 + get_byte(uuid_send(user_id), 15)) % 1024)");
    }

    proptest! {
        #[test]
        fn a_minted_chat_is_in_its_creators_bucket_and_a_valid_v4(bytes in any::<[u8; 16]>()) {
            let creator = uuid::Uuid::from_bytes(bytes);
            let chat = mint_chat_id(&creator);
            prop_assert_eq!(bucket(&chat), bucket(&creator));
            prop_assert_eq!(chat.get_version_num(), 4);
            prop_assert_eq!(chat.get_variant(), uuid::Variant::RFC4122);
        }

        #[test]
        fn every_id_has_a_bucket_in_range(bytes in any::<[u8; 16]>()) {
            prop_assert!(bucket(&uuid::Uuid::from_bytes(bytes)) < BUCKETS);
        }
    }

    #[test]
    fn random_ids_spread_evenly() {
        let mut counts = vec![0u32; BUCKETS as usize];
        for _ in 0..102_400 {
            counts[bucket(&uuid::Uuid::new_v4()) as usize] += 1;
        }
        // 100 expected per bucket (σ ≈ 10); a bucket below 40 or above 160 is 6σ out: a broken
        // function, or about one run in a million of a uniform one
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 40 && *max < 160, "min {min}, max {max}");
    }
}
