//! For the mover's integration tests: a private set of databases on `DATABASE_URL`'s server —
//! the monolith's (every migration, through `scripts/migrate`, the path production takes) and N
//! chat shards beside it — seeded with users, chats, members and messages, and a bounded writer
//! that keeps sending, editing and deleting while a move runs. Everything is dropped by
//! [`Fixture::drop_all`], replication slots first (a database with one cannot be dropped).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::{Connection, PgConnection, PgPool};

pub struct Fixture {
    pub name: String,
    pub main_url: String,
    pub main: PgPool,
    /// (shard name, url env variable, url)
    pub shards: Vec<(String, String, String)>,
}

/// The URL of database `name` on `DATABASE_URL`'s server.
pub fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
    let (head, tail) = base.split_at(base.rfind('/').expect("a database URL ends with /name"));
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{head}/{name}{query}")
}

impl Fixture {
    /// A fresh monolith database and `shards` shard databases, every migration applied.
    pub async fn create(shards: usize) -> Fixture {
        let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
        let name = format!("move_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut admin = PgConnection::connect(&base).await.expect("connecting to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")).execute(&mut admin).await.unwrap();
        let main_url = database_url(&name);
        let migrate = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/migrate");
        let out = Command::new(migrate)
            .arg(&main_url)
            .env("CHAT_SHARDS", shards.to_string())
            .env_remove("CHAT_SHARD_URLS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("running scripts/migrate");
        assert!(out.status.success(), "scripts/migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        let main = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&main_url).await.unwrap();
        let shards = (0..shards)
            .map(|i| (format!("s{i}"), format!("{}_S{i}_URL", name.to_uppercase()), database_url(&format!("{name}_chat_s{i}"))))
            .collect();
        Fixture { name, main_url, main, shards }
    }

    /// Adds shard databases beyond the first ones (a fifth shard), migrated.
    pub async fn add_shards(&mut self, n: usize) {
        let total = self.shards.len() + n;
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/migrate"))
            .arg(&self.main_url)
            .env("CHAT_SHARDS", total.to_string())
            .env_remove("CHAT_SHARD_URLS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("running scripts/migrate");
        assert!(out.status.success(), "scripts/migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        for i in self.shards.len()..total {
            self.shards.push((
                format!("s{i}"),
                format!("{}_S{i}_URL", self.name.to_uppercase()),
                database_url(&format!("{}_chat_s{i}", self.name)),
            ));
        }
    }

    /// A shard map over the first `n` shards, buckets split evenly.
    pub fn map(&self, version: u64, n: usize) -> String {
        let mut s = format!("version = {version}\n");
        let per = 1024 / n;
        for (i, (name, env, _)) in self.shards.iter().take(n).enumerate() {
            let end = if i + 1 == n { 1023 } else { (i + 1) * per - 1 };
            s.push_str(&format!("[[shards]]\nname = \"{name}\"\nurl_env = \"{env}\"\nbuckets = [\"{}-{end}\"]\n", i * per));
        }
        s
    }

    /// Looks up the shards' URL variables (the tests do not touch the process's environment).
    pub fn url_of(&self) -> impl Fn(&str) -> Option<String> + use<> {
        let shards = self.shards.clone();
        move |k| shards.iter().find(|(_, e, _)| e == k).map(|(_, _, u)| u.clone())
    }

    pub async fn shard(&self, i: usize) -> PgPool {
        sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&self.shards[i].2).await.unwrap()
    }

    /// `users` users, `chats` chats of 2–5 members, `messages` messages spread over them.
    pub async fn seed(&self, users: i32, chats: i32, messages: i32) {
        sqlx::raw_sql(&format!(
            "INSERT INTO legacy.users (email, display_name) SELECT 'u' || n || '@move.test', 'User ' || n FROM generate_series(1, {users}) n;
             INSERT INTO legacy.chats (title, is_group, created_by)
               SELECT CASE WHEN n % 3 = 0 THEN 'Group ' || n END, n % 3 = 0, (SELECT id FROM legacy.users ORDER BY email OFFSET n % {users} LIMIT 1)
                 FROM generate_series(1, {chats}) n;
             INSERT INTO legacy.chat_members (chat_id, user_id, role)
               SELECT c.id, u.id, CASE WHEN u.id = c.created_by THEN 'owner' ELSE 'member' END
                 FROM legacy.chats c CROSS JOIN LATERAL (
                   SELECT id FROM legacy.users WHERE id = c.created_by
                   UNION SELECT id FROM legacy.users ORDER BY 1 OFFSET (abs(hashtext(c.id::text)) % {users}) LIMIT 1 + abs(hashtext(c.id::text)) % 4) u
               ON CONFLICT DO NOTHING;
             INSERT INTO legacy.messages (chat_id, sender_id, body, client_message_id, edited_at, deleted_at)
               SELECT m.chat_id, m.user_id, 'message ' || n || E' \"quoted\", ' || repeat('é', n % 7),
                      CASE WHEN n % 3 = 0 THEN 'c-' || n END, CASE WHEN n % 5 = 0 THEN now() END, CASE WHEN n % 11 = 0 THEN now() END
                 FROM generate_series(1, {messages}) n
                 CROSS JOIN LATERAL (SELECT chat_id, user_id FROM legacy.chat_members ORDER BY chat_id, user_id OFFSET n % (SELECT count(*) FROM legacy.chat_members) LIMIT 1) m;"
        ))
        .execute(&self.main)
        .await
        .expect("seeding");
    }

    /// Drops every database of the fixture (replication slots in them first).
    pub async fn drop_all(self) {
        self.main.close().await;
        // (Drop does the work, also when a test panics)
    }
}

impl Drop for Fixture {
    /// Drops the fixture's databases, replication slots first: a slot left behind would keep
    /// WAL on the test server forever. Through psql, since Drop cannot wait for async work.
    fn drop(&mut self) {
        let base = std::env::var("DATABASE_URL").unwrap_or_default();
        let mut names = vec![self.name.clone()];
        names.extend(self.shards.iter().map(|(n, _, _)| format!("{}_chat_{n}", self.name)));
        // one -c per statement: DROP DATABASE cannot run inside the transaction of a multi-statement -c
        let mut args = vec![base, "-qtA".to_string()];
        for db in names {
            for sql in [
                format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"),
                format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}'"),
                format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            ] {
                args.extend(["-c".to_string(), sql]);
            }
        }
        let _ = Command::new("psql").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// What the writer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub sent: u64,
    pub edited: u64,
    pub deleted: u64,
    pub chats_created: u64,
    pub read_markers: u64,
}

/// Sends, edits, soft- and hard-deletes messages, creates chats and moves read markers on the
/// monolith's tables until `stop` is set or `max` operations are done (bounded either way).
pub async fn writer(pool: PgPool, stop: Arc<AtomicBool>, max: u64) -> Written {
    let mut w = Written::default();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) && n < max {
        n += 1;
        let sql = match n % 10 {
            0..=3 => {
                w.sent += 1;
                "INSERT INTO legacy.messages (chat_id, sender_id, body, client_message_id)
                   SELECT chat_id, user_id, 'written while moving ' || md5(random()::text), 'w-' || gen_random_uuid()
                     FROM legacy.chat_members OFFSET floor(random() * (SELECT count(*) FROM legacy.chat_members)) LIMIT 1"
            }
            4 | 5 => {
                w.edited += 1;
                "UPDATE legacy.messages SET body = 'edited ' || md5(random()::text), edited_at = now()
                  WHERE id = (SELECT id FROM legacy.messages OFFSET floor(random() * 500) LIMIT 1)"
            }
            6 => {
                w.deleted += 1;
                "UPDATE legacy.messages SET deleted_at = now()
                  WHERE id = (SELECT id FROM legacy.messages WHERE deleted_at IS NULL OFFSET floor(random() * 500) LIMIT 1)"
            }
            7 => {
                w.deleted += 1;
                "DELETE FROM legacy.messages WHERE id = (SELECT id FROM legacy.messages OFFSET floor(random() * 500) LIMIT 1)"
            }
            8 => {
                w.read_markers += 1;
                "UPDATE legacy.chat_members SET last_read_seq = (SELECT coalesce(max(seq), 0) FROM legacy.messages m WHERE m.chat_id = chat_members.chat_id)
                  WHERE (chat_id, user_id) = (SELECT chat_id, user_id FROM legacy.chat_members OFFSET floor(random() * (SELECT count(*) FROM legacy.chat_members)) LIMIT 1)"
            }
            _ => {
                w.chats_created += 1;
                "WITH u AS (SELECT id FROM legacy.users OFFSET floor(random() * (SELECT count(*) FROM legacy.users)) LIMIT 2),
                      c AS (INSERT INTO legacy.chats (is_group, created_by) SELECT false, min(id::text)::uuid FROM u RETURNING id, created_by),
                      m AS (INSERT INTO legacy.chat_members (chat_id, user_id) SELECT c.id, u.id FROM c, u RETURNING chat_id, user_id)
                 INSERT INTO legacy.messages (chat_id, sender_id, body) SELECT c.id, c.created_by, 'first in a new chat' FROM c"
            }
        };
        sqlx::raw_sql(sql).execute(&pool).await.expect("the writer's statement");
        tokio::task::yield_now().await;
    }
    w
}
