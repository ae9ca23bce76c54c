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
