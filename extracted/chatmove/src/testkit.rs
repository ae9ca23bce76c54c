//! For the mover's integration tests: a private set of databases on `DATABASE_URL`'s server —
//! the monolith's (every migration, through `scripts/migrate`, the path production takes) and N
//! chat shards beside it — seeded with users, chats, members and messages, and a bounded writer
//! that keeps sending, editing and deleting while a move runs. Everything is dropped by
//! [`Fixture::drop_all`], replication slots first (a database with one cannot be dropped).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::plan::{schema_of, LEGACY};
use crate::routing::{is_fenced, Routing};

pub struct Fixture {
    pub name: String,
    pub main_url: String,
    pub main: PgPool,
    /// (shard name, url env variable, url)
    pub shards: Vec<(String, String, String)>,
}

pub use bm_common::testdb::database_url;

impl Fixture {
    /// A fresh monolith database and `shards` shard databases, every migration applied.
    pub async fn create(shards: usize) -> Fixture {
        let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let name = format!("move_test_{now}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut admin = PgConnection::connect(&base).await.expect("connecting to DATABASE_URL");
        // a fixture whose test was killed (a timeout) never ran its Drop: its slots would keep
        // WAL on this server for ever. Those over an hour old are swept.
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname ~ '^move_test_[0-9]+_' AND split_part(datname, '_', 3)::bigint < $1",
        )
        .bind(now as i64 - 3600)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        for db in stale {
            let _ = sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1")
                .bind(&db)
                .execute(&mut admin)
                .await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&mut admin).await;
        }
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")).execute(&mut admin).await.unwrap();
        let main_url = database_url(&name);
        bm_common::testdb::migrate(&main_url, shards);
        let main = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&main_url).await.unwrap();
        let shards = (0..shards)
            .map(|i| (format!("s{i}"), format!("{}_S{i}_URL", name.to_uppercase()), database_url(&format!("{name}_chat_s{i}"))))
            .collect();
        Fixture { name, main_url, main, shards }
    }

    /// Adds shard databases beyond the first ones (a fifth shard), migrated.
    pub async fn add_shards(&mut self, n: usize) {
        let total = self.shards.len() + n;
        bm_common::testdb::migrate(&self.main_url, total);
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
    /// writes the fence refused (then routed again)
    pub fenced: u64,
    /// times a write waited for the routing (writes paused at a switch)
    pub paused: u64,
}

/// What a message the writer wrote or touched must look like at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Live { chat: Uuid, body: String, deleted: bool },
    Gone { chat: Uuid },
}

/// The writer's account: what it did, what the data must look like, the longest any one write
/// took (a write waiting through a switch's pause included).
#[derive(Debug, Default)]
pub struct Outcome {
    pub written: Written,
    pub expected: HashMap<Uuid, Expected>,
    pub longest_write: Duration,
}

impl Fixture {
    /// Every database of the fixture by the name the routing uses: `legacy` and the shards'.
    pub async fn pools(&self) -> HashMap<String, PgPool> {
        let mut m = HashMap::new();
        m.insert(LEGACY.to_string(), self.main.clone());
        for (i, (name, _, _)) in self.shards.iter().enumerate() {
            m.insert(name.clone(), self.shard(i).await);
        }
        m
    }
}

/// A client of the chat tables as the chat service is one: every write goes where the routing
/// says (loaded again whenever the fence refuses a write or writes are paused), and it keeps
/// sending, editing, soft- and hard-deleting messages, creating chats and moving read markers
/// until `stop` is set or `max` operations are done (bounded either way), keeping account of what
/// every message it touched must look like.
pub async fn writer(pools: HashMap<String, PgPool>, stop: Arc<AtomicBool>, max: u64) -> Outcome {
    paced_writer(pools, stop, max, Duration::ZERO, (0, 1)).await
}

/// [`writer`], one operation per `pace` at most (zero: as fast as it goes); one of `share.1`
/// writers at once, the `share.0`th: it edits and deletes only its share of the existing
/// messages (two writers deleting and editing the same message would each see the other's
/// change as a loss).
pub async fn paced_writer(pools: HashMap<String, PgPool>, stop: Arc<AtomicBool>, max: u64, pace: Duration, share: (u32, u32)) -> Outcome {
    let main = pools[LEGACY].clone();
    let mut routing = Routing::load(&main).await.expect("the routing");
    let users: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM legacy.users").fetch_all(&main).await.unwrap();
    // the chats and some messages, from wherever the routing reads them
    let mut chats: Vec<(Uuid, Vec<Uuid>)> = Vec::new();
    let mut touchable: Vec<(Uuid, Uuid)> = Vec::new();
    for (db, pool) in &pools {
        let schema = schema_of(db);
        let rows: Vec<(Uuid, Vec<Uuid>)> =
            sqlx::query_as(&format!("SELECT chat_id, array_agg(user_id) FROM {schema}.chat_members GROUP BY chat_id"))
                .fetch_all(pool)
                .await
                .unwrap_or_default();
        chats.extend(rows.into_iter().filter(|(c, _)| routing.read_db(c) == db));
        let msgs: Vec<(Uuid, Uuid)> =
            sqlx::query_as(&format!("SELECT id, chat_id FROM {schema}.messages WHERE deleted_at IS NULL ORDER BY id LIMIT 300"))
                .fetch_all(pool)
                .await
                .unwrap_or_default();
        touchable.extend(msgs.into_iter().filter(|(id, c)| routing.read_db(c) == db && u32::from(id.as_bytes()[0]) % share.1 == share.0));
    }
    assert!(!chats.is_empty() && !users.is_empty(), "the writer needs seeded chats");
    let mut out = Outcome::default();
    let mut n: u64 = 0;
    let mut rng = Rng(u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap()));
    while !stop.load(Ordering::Relaxed) && n < max {
        n += 1;
        let op = n % 10;
        // the chat this operation writes, and its statements
        let (chat, stmts): (Uuid, Vec<Stmt>) = match op {
            0..=3 => {
                let (chat, members) = &chats[rng.below(chats.len())];
                let id = Uuid::new_v4();
                let body = format!("written while moving {id}");
                out.expected.insert(id, Expected::Live { chat: *chat, body: body.clone(), deleted: false });
                touchable.push((id, *chat));
                out.written.sent += 1;
                (*chat, vec![Stmt::Send { id, chat: *chat, sender: members[rng.below(members.len())], body }])
            }
            4..=7 if !touchable.is_empty() => {
                let i = rng.below(touchable.len());
                let (id, chat) = touchable[i];
                match op {
                    4 | 5 => {
                        let body = format!("edited {}", Uuid::new_v4());
                        if let Some(Expected::Live { deleted: true, .. }) = out.expected.get(&id) {
                            continue;
                        }
                        out.expected.insert(id, Expected::Live { chat, body: body.clone(), deleted: false });
                        out.written.edited += 1;
                        (chat, vec![Stmt::Edit { id, body }])
                    }
                    6 => {
                        let body = match out.expected.get(&id) {
                            Some(Expected::Live { body, .. }) => Some(body.clone()),
                            _ => None,
                        };
                        out.expected.insert(id, Expected::Live { chat, body: body.unwrap_or_default(), deleted: true });
                        out.written.deleted += 1;
                        (chat, vec![Stmt::SoftDelete { id }])
                    }
                    _ => {
                        touchable.swap_remove(i);
                        out.expected.insert(id, Expected::Gone { chat });
                        out.written.deleted += 1;
                        (chat, vec![Stmt::HardDelete { id }])
                    }
                }
            }
            8 => {
                let (chat, members) = &chats[rng.below(chats.len())];
                out.written.read_markers += 1;
                (*chat, vec![Stmt::Read { chat: *chat, user: members[rng.below(members.len())] }])
            }
            _ => {
                let chat = Uuid::new_v4();
                let (a, b) = (users[rng.below(users.len())], users[rng.below(users.len())]);
                let members: Vec<Uuid> = if a == b { vec![a] } else { vec![a, b] };
                let id = Uuid::new_v4();
                let body = format!("first in {chat}");
                chats.push((chat, members.clone()));
                touchable.push((id, chat));
                out.expected.insert(id, Expected::Live { chat, body: body.clone(), deleted: false });
                out.written.chats_created += 1;
                (chat, vec![Stmt::Chat { chat, creator: a, members }, Stmt::Send { id, chat, sender: a, body }])
            }
        };
        let started = Instant::now();
        loop {
            let Some(db) = routing.write_db(&chat).map(str::to_string) else {
                out.written.paused += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                routing = Routing::load(&main).await.expect("the routing");
                continue;
            };
            match run(&pools[&db], schema_of(&db), &stmts).await {
                Ok(()) => break,
                Err(e) if is_fenced(&e) => {
                    out.written.fenced += 1;
                    routing = Routing::load(&main).await.expect("the routing");
                }
                Err(e) => panic!("the writer's statement on {db}: {e}"),
            }
        }
        out.longest_write = out.longest_write.max(started.elapsed());
        if pace.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pace.saturating_sub(started.elapsed())).await;
        }
    }
    out
}

enum Stmt {
    Send { id: Uuid, chat: Uuid, sender: Uuid, body: String },
    Edit { id: Uuid, body: String },
    SoftDelete { id: Uuid },
    HardDelete { id: Uuid },
    Read { chat: Uuid, user: Uuid },
    Chat { chat: Uuid, creator: Uuid, members: Vec<Uuid> },
}

/// One operation's statements in one transaction (the fence refuses them all or none).
async fn run(pool: &PgPool, s: &str, stmts: &[Stmt]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for st in stmts {
        match st {
            Stmt::Send { id, chat, sender, body } => {
                // a shard numbers messages from its sequence, the monolith from its identity
                let q = format!(
                    "INSERT INTO {s}.messages (id, chat_id, sender_id, body, client_message_id, created_at) VALUES ($1, $2, $3, $4, 'w-' || $1::text, now())"
                );
                sqlx::query(&q).bind(id).bind(chat).bind(sender).bind(body).execute(&mut *tx).await?;
                sqlx::query(&format!("UPDATE {s}.chats SET updated_at = now() WHERE id = $1")).bind(chat).execute(&mut *tx).await?;
            }
            Stmt::Edit { id, body } => {
                let n = sqlx::query(&format!("UPDATE {s}.messages SET body = $2, edited_at = now() WHERE id = $1"))
                    .bind(id)
                    .bind(body)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                assert_eq!(n, 1, "message {id} is not where the routing says ({s}): lost?");
            }
            Stmt::SoftDelete { id } => {
                let n = sqlx::query(&format!("UPDATE {s}.messages SET deleted_at = now() WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                assert_eq!(n, 1, "message {id} is not where the routing says ({s}): lost?");
            }
            Stmt::HardDelete { id } => {
                let n = sqlx::query(&format!("DELETE FROM {s}.messages WHERE id = $1")).bind(id).execute(&mut *tx).await?.rows_affected();
                assert_eq!(n, 1, "message {id} is not where the routing says ({s}): lost?");
            }
            Stmt::Read { chat, user } => {
                sqlx::query(&format!(
                    "UPDATE {s}.chat_members SET last_read_seq = (SELECT coalesce(max(seq), 0) FROM {s}.messages WHERE chat_id = $1) WHERE chat_id = $1 AND user_id = $2"
                ))
                .bind(chat)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            }
            Stmt::Chat { chat, creator, members } => {
                sqlx::query(&format!(
                    "INSERT INTO {s}.chats (id, is_group, created_by, created_at, updated_at) VALUES ($1, false, $2, now(), now())"
                ))
                .bind(chat)
                .bind(creator)
                .execute(&mut *tx)
                .await?;
                sqlx::query(&format!(
                    "INSERT INTO {s}.chat_members (chat_id, user_id, joined_at) SELECT $1, u, now() FROM unnest($2::uuid[]) u"
                ))
                .bind(chat)
                .bind(members)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await
}

/// What differs between the writer's account and the data where the routing reads it: every
/// message it wrote or touched, and no client message id twice.
pub async fn check(pools: &HashMap<String, PgPool>, routing: &Routing, expected: &HashMap<Uuid, Expected>) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, e) in expected {
        let chat = match e {
            Expected::Live { chat, .. } | Expected::Gone { chat } => chat,
        };
        let db = routing.read_db(chat);
        let row: Option<(Uuid, String, bool)> =
            sqlx::query_as(&format!("SELECT chat_id, body, deleted_at IS NOT NULL FROM {}.messages WHERE id = $1", schema_of(db)))
                .bind(id)
                .fetch_optional(&pools[db])
                .await
                .unwrap();
        match (e, row) {
            (Expected::Gone { .. }, None) => {}
            (Expected::Gone { .. }, Some(_)) => problems.push(format!("{id}: deleted, but still on {db}")),
            (Expected::Live { .. }, None) => problems.push(format!("{id}: missing on {db}")),
            (Expected::Live { chat, body, deleted }, Some((c, b, d))) => {
                // a soft delete of a message the writer never edited keeps the seeded body
                if c != *chat || d != *deleted || (!body.is_empty() && &b != body) {
                    problems.push(format!("{id}: on {db} as ({c}, {b:?}, deleted {d}), expected ({chat}, {body:?}, deleted {deleted})"));
                }
            }
        }
    }
    for (db, pool) in pools {
        let dup: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM {}.messages WHERE client_message_id IS NOT NULL GROUP BY chat_id, sender_id, client_message_id HAVING count(*) > 1) d",
            schema_of(db)
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        if dup > 0 {
            problems.push(format!("{db}: {dup} client message ids twice"));
        }
    }
    problems
}

/// xorshift: the writer's choices, without a dependency
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
