//! The move against real PostgreSQL: the monolith's tables onto four shards while a writer keeps
//! sending, editing and deleting; verify clean under the writes and after them; the same rows
//! on the shards as in the monolith; a second mover refused; a corrupted, a missing and an extra
//! row on the shards named by verify; abort leaves no slot behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bm_chatmove::mover::{abort, MoveError, MoveSpec, Mover};
use bm_chatmove::plan::Origin;
use bm_chatmove::testkit::{writer, Fixture};
use bm_shards::ShardMap;
use uuid::Uuid;

fn spec(text: &str) -> MoveSpec {
    MoveSpec { from: Origin::Legacy, from_text: None, to: ShardMap::parse("shards.toml", text).unwrap(), to_text: text.to_string() }
}

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_the_monolith_to_four_shards_under_writes_and_names_what_differs() {
    let fx = Fixture::create(4).await;
    fx.seed(40, 60, 3000).await;
    let map = fx.map(1, 4);
    let url_of = fx.url_of();

    let members: Vec<(uuid::Uuid, uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT cm.user_id, cm.chat_id, c.title FROM legacy.chat_members cm JOIN legacy.chats c ON c.id = cm.chat_id")
            .fetch_all(&fx.main)
            .await
            .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(fx.pools().await, stop.clone(), 20_000));
    let mut m = Mover::open(&fx.main_url, spec(&map), &url_of).await.unwrap();
    m.chunk = 300;
    match Mover::open(&fx.main_url, spec(&map), &url_of).await {
        Err(MoveError::Locked(holder)) => assert!(holder.contains("bm-chat move (pid"), "{holder}"),
        Err(e) => panic!("a second mover: {e}"),
        Ok(_) => panic!("a second mover ran at once"),
    }
    m.prepare().await.unwrap();
    let mut reports = 0;
    m.copy(|_| reports += 1).await.unwrap();
    assert!(reports >= 3 + 3000 / 300, "progress after every chunk: {reports}");
    assert_eq!(m.stage().await.unwrap(), "verify");
    // each user's inbox on their shard: a row for every chat they were in, and only their users
    let mut inbox_rows = 0;
    for i in 0..4usize {
        let s = fx.shard(i).await;
        let rows: Vec<(uuid::Uuid, uuid::Uuid, Option<String>)> =
            sqlx::query_as("SELECT user_id, chat_id, title FROM chat.inbox").fetch_all(&s).await.unwrap();
        for (user, _, _) in &rows {
            assert_eq!(bm_shards::bucket(user) as usize / 256, i, "an inbox row of user {user} on shard {i}");
        }
        for (user, chat, title) in members.iter().filter(|(u, _, _)| bm_shards::bucket(u) as usize / 256 == i) {
            assert!(rows.iter().any(|(u, c, t)| u == user && c == chat && t == title), "user {user}'s inbox lacks chat {chat}");
        }
        inbox_rows += rows.len();
    }
    assert!(inbox_rows >= members.len(), "{inbox_rows} inbox rows for {} memberships", members.len());
    // the copied tables vacuumed and analyzed by the mover, not left to autovacuum under traffic
    for i in 0..4usize {
        let left: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables WHERE schemaname = 'chat'
               AND relname IN ('chats', 'chat_members', 'messages', 'inbox') AND (last_vacuum IS NULL OR last_analyze IS NULL)",
        )
        .fetch_all(&fx.shard(i).await)
        .await
        .unwrap();
        assert!(left.is_empty(), "shard {i}: not vacuumed and analyzed after the copy: {left:?}");
    }
    let under_writes = m.verify().await.unwrap();
    assert!(under_writes.is_clean(), "verify under writes: {:?}", under_writes.differences);
    assert_eq!(m.stage().await.unwrap(), "following");

    stop.store(true, Ordering::Relaxed);
    let written = writing.await.unwrap().written;
    assert!(written.sent > 10 && written.edited > 5 && written.deleted > 5 && written.chats_created > 1, "{written:?}");
    m.catch_up(false).await.unwrap();
    let after = m.verify().await.unwrap();
    assert!(after.is_clean(), "verify after the writes: {:?}", after.differences);
    let mut shards = Vec::new();
    for i in 0..4 {
        shards.push(fx.shard(i).await);
    }
    let mut source_rows = 0;
    for t in ["chats", "chat_members", "messages"] {
        let legacy = count(&fx.main, &format!("legacy.{t}")).await;
        let mut on_shards = 0;
        for s in &shards {
            on_shards += count(s, &format!("chat.{t}")).await;
        }
        assert_eq!(on_shards, legacy, "{t}: the monolith has {legacy} rows, the shards {on_shards}");
        source_rows += legacy;
    }
    assert_eq!(after.rows_compared as i64, source_rows);
    // every shard got its share, and only rows of its buckets
    for (i, s) in shards.iter().enumerate() {
        let (n, outside): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(*) FILTER (WHERE {} NOT BETWEEN {} AND {}) FROM chat.messages",
            bm_shards::bucket_sql("chat_id"),
            i * 256,
            i * 256 + 255
        ))
        .fetch_one(s)
        .await
        .unwrap();
        assert!(n > 0 && outside == 0, "shard {i}: {n} messages, {outside} outside its buckets");
    }

    // what verify must name: one row changed, one missing, one extra on the shards
    let changed: Uuid = sqlx::query_scalar(
        "UPDATE chat.messages SET body = body || '!' WHERE id = (SELECT min(id::text)::uuid FROM chat.messages) RETURNING id",
    )
    .fetch_one(&shards[0])
    .await
    .unwrap();
    let missing: Uuid =
        sqlx::query_scalar("DELETE FROM chat.messages WHERE id = (SELECT max(id::text)::uuid FROM chat.messages) RETURNING id")
            .fetch_one(&shards[1])
            .await
            .unwrap();
    let extra: Uuid = sqlx::query_scalar(
        "INSERT INTO chat.messages (id, seq, chat_id, sender_id, body, created_at)
         SELECT gen_random_uuid(), seq + 100000000, chat_id, sender_id, 'not in the monolith', created_at FROM chat.messages LIMIT 1 RETURNING id",
    )
    .fetch_one(&shards[2])
    .await
    .unwrap();
    let r = m.verify().await.unwrap();
    let mut found: Vec<(String, &str, String)> = r.differences.iter().map(|d| (d.table.clone(), d.kind, d.key.clone())).collect();
    found.sort();
    let mut want = vec![
        ("messages".to_string(), "changed", changed.to_string()),
        ("messages".to_string(), "missing", missing.to_string()),
        ("messages".to_string(), "extra", extra.to_string()),
    ];
    want.sort();
    assert_eq!(found, want);

    let db = fx.name.clone();
    abort(&mut m).await.unwrap();
    let slots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE database = $1").bind(&db).fetch_one(&fx.main).await.unwrap();
    assert_eq!(slots, 0, "abort drops the move's slot");
    assert_eq!(count(&shards[0], "chat.chats").await, 0, "abort removes the copied rows");
    for s in shards {
        s.close().await;
    }
    fx.drop_all().await;
}

/// An update that leaves a large (TOASTed) body alone does not send it: the follow stage must
/// keep the body it has, not blank it or fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_leaves_a_toasted_body_alone_keeps_it() {
    let fx = Fixture::create(4).await;
    fx.seed(4, 4, 40).await;
    let big = "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400)"; // 12.8 kB, incompressible
    let (chat, sender): (Uuid, Uuid) =
        sqlx::query_as("SELECT chat_id, user_id FROM legacy.chat_members LIMIT 1").fetch_one(&fx.main).await.unwrap();
    let insert_big = || async {
        sqlx::query_scalar::<_, Uuid>(&format!(
            "INSERT INTO legacy.messages (chat_id, sender_id, body) VALUES ($1, $2, ({big})) RETURNING id"
        ))
        .bind(chat)
        .bind(sender)
        .fetch_one(&fx.main)
        .await
        .unwrap()
    };
    let before_copy = insert_big().await;
    let map = fx.map(1, 4);
    let url_of = fx.url_of();
    let mut m = Mover::open(&fx.main_url, spec(&map), &url_of).await.unwrap();
    m.prepare().await.unwrap();
    // written after the slot, before the copy: the stream has its insert (whole) and an update
    // without the body
    let during = insert_big().await;
    sqlx::query("UPDATE legacy.messages SET edited_at = now() WHERE id = ANY($1)")
        .bind(vec![before_copy, during])
        .execute(&fx.main)
        .await
        .unwrap();
    m.copy(|_| {}).await.unwrap();
    sqlx::query("UPDATE legacy.messages SET deleted_at = now() WHERE id = ANY($1)")
        .bind(vec![before_copy, during])
        .execute(&fx.main)
        .await
        .unwrap();
    let r = m.verify().await.unwrap();
    assert!(r.is_clean(), "{:?}", r.differences);
    let shard =
        fx.shard(fx.shards.iter().position(|(n, _, _)| *n == ShardMap::parse("m", &map).unwrap().shard_of(&chat).name).unwrap()).await;
    let lens: Vec<(i32, bool)> = sqlx::query_as("SELECT length(body), deleted_at IS NOT NULL FROM chat.messages WHERE id = ANY($1)")
        .bind(vec![before_copy, during])
        .fetch_all(&shard)
        .await
        .unwrap();
    assert_eq!(lens, vec![(12800, true), (12800, true)]);
    abort(&mut m).await.unwrap();
    shard.close().await;
    fx.drop_all().await;
}
