//! The shards' schema (migrations/chat, applied by scripts/migrate to every CHAT_SHARD_URLS
//! database; scripts/test sets four) can hold every row of the monolith's chat tables as it is:
//! the same columns with the same types, on every shard — the copy stage of the move inserts
//! rows unchanged. And the monolith's database never gets the shards' schema.

use sqlx::Connection;

const TABLES: [&str; 3] = ["chats", "chat_members", "messages"];

async fn columns(db: &mut sqlx::PgConnection, schema: &str, table: &str) -> Vec<(String, String, bool)> {
    sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable = 'YES' FROM information_schema.columns
          WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_shard_has_the_monolith_columns_and_its_own_sequence() {
    let shards = std::env::var("CHAT_SHARD_URLS").expect("CHAT_SHARD_URLS: scripts/test sets the four test shards");
    let shards: Vec<&str> = shards.split_whitespace().collect();
    assert_eq!(shards.len(), 4, "four shards in tests (docs/chat-sharding.md)");
    let main = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let mut monolith = sqlx::PgConnection::connect(&main).await.unwrap();
    let on_main: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'chat'")
        .fetch_one(&mut monolith)
        .await
        .unwrap();
    assert_eq!(on_main, 0, "the shards' schema must not be applied to the monolith's database");
    for url in shards {
        let mut shard = sqlx::PgConnection::connect(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        for table in TABLES {
            let legacy = columns(&mut monolith, "legacy", table).await;
            let mine = columns(&mut shard, "chat", table).await;
            assert!(!legacy.is_empty(), "legacy.{table} exists");
            assert_eq!(mine, legacy, "chat.{table} on {url} holds legacy.{table}'s rows as they are");
        }
        let step: i64 =
            sqlx::query_scalar("SELECT increment_by FROM pg_sequences WHERE schemaname = 'chat' AND sequencename = 'message_seq'")
                .fetch_one(&mut shard)
                .await
                .unwrap();
        assert_eq!(step, 64, "new messages are numbered in steps of 64 (the shard's index is the offset)");
    }
}

/// The inbox upsert (`bm_shards::INBOX_UPSERT_SQL`) moves a row forward and leaves a row it would
/// not change alone — no new row version (its `xmin` stays): every message's event reaches rows
/// the message's own transaction already moved. And `chat.inbox`'s updates are HOT-eligible: no
/// index names `updated_at` (migrations/chat/0004_inbox_hot_updates.sql).
#[tokio::test]
async fn an_inbox_upsert_rewrites_only_rows_it_changes() {
    let shards = std::env::var("CHAT_SHARD_URLS").expect("CHAT_SHARD_URLS: scripts/test sets the four test shards");
    let url = shards.split_whitespace().next().expect("a shard");
    let mut shard = sqlx::PgConnection::connect(url).await.unwrap();
    let indexed: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'chat' AND tablename = 'inbox' AND indexdef LIKE '%updated_at%'",
    )
    .fetch_all(&mut shard)
    .await
    .unwrap();
    assert!(indexed.is_empty(), "an index on chat.inbox names updated_at, so its updates cannot be HOT: {indexed:?}");
    let (user, chat) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
    let upsert = |title: &'static str, at: chrono::DateTime<chrono::Utc>| {
        sqlx::query(bm_shards::INBOX_UPSERT_SQL)
            .bind(vec![user])
            .bind(vec![chat])
            .bind(vec![Some(title.to_string())])
            .bind(vec![true])
            .bind(vec![t0])
            .bind(vec![at])
    };
    upsert("g", t0 + chrono::Duration::seconds(10)).execute(&mut shard).await.unwrap();
    let first = row_version(&mut shard, user, chat).await;
    // the same, and an older event: nothing to change, the row version stays
    upsert("g", t0 + chrono::Duration::seconds(10)).execute(&mut shard).await.unwrap();
    upsert("g", t0 + chrono::Duration::seconds(5)).execute(&mut shard).await.unwrap();
    assert_eq!(row_version(&mut shard, user, chat).await, first, "a no-op upsert rewrote the row");
    // a newer event moves it; a renamed group changes the title and keeps the later time
    upsert("g", t0 + chrono::Duration::seconds(20)).execute(&mut shard).await.unwrap();
    let moved = row_version(&mut shard, user, chat).await;
    assert_ne!(moved.0, first.0);
    assert_eq!(moved.1, t0 + chrono::Duration::seconds(20));
    upsert("renamed", t0 + chrono::Duration::seconds(15)).execute(&mut shard).await.unwrap();
    let renamed = row_version(&mut shard, user, chat).await;
    assert_eq!((renamed.1, renamed.2.as_deref()), (t0 + chrono::Duration::seconds(20), Some("renamed")));
    sqlx::query("DELETE FROM chat.inbox WHERE user_id = $1").bind(user).execute(&mut shard).await.unwrap();
}

/// The inbox row's version (`xmin`), `updated_at` and title.
async fn row_version(
    c: &mut sqlx::PgConnection,
    user: uuid::Uuid,
    chat: uuid::Uuid,
) -> (String, chrono::DateTime<chrono::Utc>, Option<String>) {
    sqlx::query_as("SELECT xmin::text, updated_at, title FROM chat.inbox WHERE user_id = $1 AND chat_id = $2")
        .bind(user)
        .bind(chat)
        .fetch_one(c)
        .await
        .unwrap()
}
