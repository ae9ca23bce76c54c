//! The verify comparison on real PostgreSQL: one chat's messages in the monolith's table and a
//! copy on a test shard (CHAT_SHARD_URLS, as scripts/test sets them) compare clean; after one row
//! is corrupted, one deleted and one added on the shard, verify names exactly those keys.

use bm_shards::verify::{checksum_sql, diff, RowSum};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const COLUMNS: [&str; 9] = ["id", "seq", "chat_id", "sender_id", "body", "client_message_id", "created_at", "edited_at", "deleted_at"];

async fn connect(url: &str) -> PgConnection {
    let mut c = PgConnection::connect(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    // a timestamptz is printed in the session's zone: both sides of a comparison use UTC
    sqlx::query("SET TIME ZONE 'UTC'").execute(&mut c).await.unwrap();
    c
}

async fn chunk(db: &mut PgConnection, table: &str, chat: Uuid) -> Vec<RowSum<Uuid>> {
    let filter = format!("chat_id = '{chat}'");
    let rows: Vec<(Uuid, String)> = sqlx::query_as(&checksum_sql(table, "id", &COLUMNS, Some(&filter)))
        .bind(None::<Uuid>)
        .bind(Uuid::max())
        .fetch_all(db)
        .await
        .unwrap();
    rows.into_iter().map(|(key, sum)| RowSum { key, sum }).collect()
}

#[tokio::test]
async fn a_corrupted_a_missing_and_an_extra_row_are_named() {
    let main = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
    let shards = std::env::var("CHAT_SHARD_URLS").expect("CHAT_SHARD_URLS (scripts/test sets them)");
    let mut legacy = connect(&main).await;
    let mut shard = connect(shards.split_whitespace().next().unwrap()).await;
    let user: Uuid = sqlx::query_scalar("INSERT INTO legacy.users (email, display_name) VALUES ($1, 'Verify') RETURNING id")
        .bind(format!("verify-{}@example.test", Uuid::new_v4()))
        .fetch_one(&mut legacy)
        .await
        .unwrap();
    let chat: Uuid = sqlx::query_scalar("INSERT INTO legacy.chats (is_group, created_by) VALUES (false, $1) RETURNING id")
        .bind(user)
        .fetch_one(&mut legacy)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO legacy.messages (chat_id, sender_id, body, client_message_id, edited_at, deleted_at)
         SELECT $1, $2, 'message ' || n || E' with \"quotes\", commas, ' || repeat('é', n % 7),
                CASE WHEN n % 3 = 0 THEN 'c-' || n END,
                CASE WHEN n % 5 = 0 THEN now() END, CASE WHEN n % 11 = 0 THEN now() END
           FROM generate_series(1, 300) n",
    )
    .bind(chat)
    .bind(user)
    .execute(&mut legacy)
    .await
    .unwrap();

    // the copy, as the mover's copy stage will insert it: the same values, column for column
    // (through JSON here: the test's own copy, not the mover's)
    let cols = COLUMNS.join(", ");
    let chat_row: String = sqlx::query_scalar("SELECT row_to_json(c)::text FROM legacy.chats c WHERE id = $1")
        .bind(chat)
        .fetch_one(&mut legacy)
        .await
        .unwrap();
    sqlx::query("INSERT INTO chat.chats SELECT * FROM json_populate_record(NULL::chat.chats, $1::json)")
        .bind(&chat_row)
        .execute(&mut shard)
        .await
        .unwrap();
    let rows: Vec<(String,)> =
        sqlx::query_as(&format!("SELECT row_to_json(m)::text FROM (SELECT {cols} FROM legacy.messages WHERE chat_id = $1) m"))
            .bind(chat)
            .fetch_all(&mut legacy)
            .await
            .unwrap();
    for (json,) in &rows {
        sqlx::query(&format!("INSERT INTO chat.messages ({cols}) SELECT {cols} FROM json_populate_record(NULL::chat.messages, $1::json)"))
            .bind(json)
            .execute(&mut shard)
            .await
            .unwrap();
    }

    let source = chunk(&mut legacy, "legacy.messages", chat).await;
    assert_eq!(source.len(), 300);
    let clean = diff(&source, &chunk(&mut shard, "chat.messages", chat).await);
    assert!(clean.is_clean(), "a faithful copy compares clean: {clean:?}");

    // now break the copy three ways
    let (corrupt, gone) = (source[17].key, source[200].key);
    sqlx::query("UPDATE chat.messages SET body = body || ' ' WHERE id = $1").bind(corrupt).execute(&mut shard).await.unwrap();
    sqlx::query("DELETE FROM chat.messages WHERE id = $1").bind(gone).execute(&mut shard).await.unwrap();
    // (as the switch will: the shard numbers new messages above the monolith's highest seq)
    let top: i64 = sqlx::query_scalar("SELECT max(seq) FROM legacy.messages").fetch_one(&mut legacy).await.unwrap();
    sqlx::query("SELECT setval('chat.message_seq', $1)").bind(top).execute(&mut shard).await.unwrap();
    let extra: Uuid = sqlx::query_scalar(
        "INSERT INTO chat.messages (id, chat_id, sender_id, body, created_at) VALUES (gen_random_uuid(), $1, $2, 'stray', now()) RETURNING id",
    )
    .bind(chat)
    .bind(user)
    .fetch_one(&mut shard)
    .await
    .unwrap();
    let d = diff(&source, &chunk(&mut shard, "chat.messages", chat).await);
    assert_eq!(d.changed, vec![corrupt], "{d:?}");
    assert_eq!(d.missing, vec![gone], "{d:?}");
    assert_eq!(d.extra, vec![extra], "{d:?}");

    // a change nobody can see in the text of a row still counts: a timestamp a microsecond off
    let one = source[42].key;
    sqlx::query("UPDATE chat.messages SET created_at = created_at + interval '1 microsecond' WHERE id = $1")
        .bind(one)
        .execute(&mut shard)
        .await
        .unwrap();
    let d = diff(&source, &chunk(&mut shard, "chat.messages", chat).await);
    assert!(d.changed.contains(&one), "{d:?}");

    sqlx::query("DELETE FROM chat.chats WHERE id = $1").bind(chat).execute(&mut shard).await.unwrap();
    sqlx::query("DELETE FROM legacy.chats WHERE id = $1").bind(chat).execute(&mut legacy).await.unwrap();
    sqlx::query("DELETE FROM legacy.users WHERE id = $1").bind(user).execute(&mut legacy).await.unwrap();
}
