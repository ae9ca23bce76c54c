//! The SQL bucket expression against real PostgreSQL (DATABASE_URL, as scripts/test sets it):
//! it agrees with the Rust function, and a publication's row filter accepts it — the follow stage
//! of a move replicates one bucket range with PostgreSQL's own machinery.

use bm_shards::{bucket, bucket_sql, mint_chat_id};
use sqlx::Connection;
use uuid::Uuid;

async fn connect() -> sqlx::PgConnection {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL: these tests need PostgreSQL (scripts/test sets it)");
    sqlx::PgConnection::connect(&url).await.expect("connecting to DATABASE_URL")
}

#[tokio::test]
async fn sql_and_rust_agree_on_every_bucket() {
    let mut db = connect().await;
    let mut ids: Vec<Uuid> = (0..20_000).map(|_| Uuid::new_v4()).collect();
    // every bucket at least once, through ids minted in it
    let creators: Vec<Uuid> = (0..1024u16)
        .map(|b| {
            let mut bytes = *Uuid::new_v4().as_bytes();
            bytes[14] = (b >> 8) as u8;
            bytes[15] = (b & 0xff) as u8;
            Uuid::from_bytes(bytes)
        })
        .collect();
    ids.extend(creators.iter().map(mint_chat_id));
    ids.extend(["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"].map(|s| s.parse::<Uuid>().unwrap()));
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(&format!("SELECT id, {}::int FROM unnest($1::uuid[]) AS id", bucket_sql("id")))
        .bind(&ids)
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(rows.len(), ids.len());
    let mut seen = std::collections::HashSet::new();
    for (id, b) in rows {
        assert_eq!(b as u16, bucket(&id), "{id}");
        seen.insert(b);
    }
    assert_eq!(seen.len(), 1024, "every bucket was checked");
}

#[tokio::test]
async fn a_publication_row_filter_accepts_the_expression() {
    let mut db = connect().await;
    let schema = format!("shards_test_{}", Uuid::new_v4().simple());
    let publication = format!("{schema}_pub");
    let mut tx = db.begin().await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut *tx).await.unwrap();
    sqlx::query(&format!("CREATE TABLE {schema}.messages (id uuid PRIMARY KEY, sender_id uuid NOT NULL)")).execute(&mut *tx).await.unwrap();
    // PG 15 refuses user-defined functions and non-immutable ones in a row filter
    sqlx::query(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE {schema}.messages WHERE ({} BETWEEN 256 AND 511)",
        bucket_sql("sender_id")
    ))
    .execute(&mut *tx)
    .await
    .expect("the bucket expression is a valid row filter");
    let filter: String = sqlx::query_scalar(
        "SELECT pg_get_expr(prqual, prrelid) FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = $1",
    )
    .bind(&publication)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(filter.contains("uuid_send(sender_id)"), "{filter}");
    // and the refusal is real: a user-defined function is not accepted
    sqlx::query(&format!("CREATE FUNCTION {schema}.b(u uuid) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 1'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query(&format!("ALTER PUBLICATION {publication} SET TABLE {schema}.messages WHERE ({schema}.b(sender_id) = 1)"))
        .execute(&mut *tx)
        .await;
    assert!(refused.is_err(), "PostgreSQL accepted a user-defined function in a row filter");
    tx.rollback().await.unwrap();
}

/// A publication that filters on a column outside the replica identity makes every UPDATE and
/// DELETE of the table fail — on the monolith's `legacy.messages` that would stop chat. A message
/// row's bucket is its chat's (`chat_id`), not its own id's, so the move first makes the replica
/// identity cover `chat_id`: a unique index on `(id, chat_id)` (unique because `id` is), used as
/// `REPLICA IDENTITY USING INDEX` — no `FULL` identity and its WAL cost.
#[tokio::test]
async fn filtering_messages_by_chat_bucket_needs_chat_id_in_the_replica_identity() {
    let mut db = connect().await;
    let schema = format!("shards_test_{}", Uuid::new_v4().simple());
    let mut tx = db.begin().await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut *tx).await.unwrap();
    sqlx::query(&format!("CREATE TABLE {schema}.messages (id uuid PRIMARY KEY, chat_id uuid NOT NULL, body text NOT NULL)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&format!("INSERT INTO {schema}.messages VALUES (gen_random_uuid(), gen_random_uuid(), 'hello')"))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE PUBLICATION {schema}_pub FOR TABLE {schema}.messages WHERE ({} BETWEEN 0 AND 255)",
        bucket_sql("chat_id")
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("SAVEPOINT before_update").execute(&mut *tx).await.unwrap();
    let refused = sqlx::query(&format!("UPDATE {schema}.messages SET body = 'edited'")).execute(&mut *tx).await;
    let e = refused.expect_err("an UPDATE with chat_id outside the replica identity must fail");
    let pg = e.as_database_error().and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()).expect("a PostgreSQL error");
    assert!(pg.message().contains("cannot update table"), "{pg:?}");
    assert!(pg.detail().is_some_and(|d| d.contains("not part of the replica identity")), "{pg:?}");
    sqlx::query("ROLLBACK TO SAVEPOINT before_update").execute(&mut *tx).await.unwrap();
    sqlx::query(&format!("CREATE UNIQUE INDEX messages_id_chat_idx ON {schema}.messages (id, chat_id)")).execute(&mut *tx).await.unwrap();
    sqlx::query(&format!("ALTER TABLE {schema}.messages REPLICA IDENTITY USING INDEX messages_id_chat_idx"))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&format!("UPDATE {schema}.messages SET body = 'edited'")).execute(&mut *tx).await.expect("with chat_id in the identity");
    sqlx::query(&format!("DELETE FROM {schema}.messages")).execute(&mut *tx).await.expect("deletes too");
    tx.rollback().await.unwrap();
}
