// Seed-data generator: users, group chats and messages at a configurable scale, for dev-up,
// load tests and migration tests. Everything is generated inside Postgres (generate_series), so
// 10k users and a million messages take seconds. Idempotent: users that exist are kept.
//
//   node dist/src/seed/cli.js [--users N] [--members K] [--messages M] [--password P]
//
// Seeded accounts are user<i>@seed.brainmessenger.test (i = 1..N), all with the same password
// (default "seed-password"), hashed once with bcrypt at BCRYPT_COST (default 10, as production).
import bcrypt from 'bcryptjs';
import { parseArgs } from 'node:util';
import { Client } from 'pg';

export const SEED_DOMAIN = 'seed.brainmessenger.test';

export interface SeedOptions {
  users: number;
  /** members per chat (each user owns one group chat with the next K-1 users) */
  members: number;
  /** messages per chat */
  messages: number;
  password: string;
  bcryptCost: number;
  /** e-mail domain of the seeded accounts (tests use their own) */
  domain?: string;
}

export async function seed(db: Client, o: SeedOptions) {
  const hash = await bcrypt.hash(o.password, o.bcryptCost);
  const k = Math.max(2, Math.min(o.members, o.users));
  const domain = o.domain ?? SEED_DOMAIN;
  if (!/^[a-z0-9.-]+$/.test(domain)) throw new Error(`bad seed domain ${domain}`);
  await db.query('BEGIN');
  try {
    await db.query(
      `INSERT INTO legacy.users (email, password_hash, display_name)
       SELECT format('user%s@${domain}', i), $1, format('Seed User %s', i) FROM generate_series(1, $2::int) i
       ON CONFLICT DO NOTHING`,
      [hash, o.users],
    );
    await db.query(`CREATE TEMP TABLE seed_users ON COMMIT DROP AS
      SELECT substring(email FROM '^user([0-9]+)@')::int AS rn, id FROM legacy.users
       WHERE email LIKE '%@${domain}' AND substring(email FROM '^user([0-9]+)@')::int <= ${o.users}`);
    // one chat per seeded user that does not own one yet
    await db.query(`CREATE TEMP TABLE seed_chats ON COMMIT DROP AS
      SELECT s.rn, gen_random_uuid() AS id, s.id AS owner FROM seed_users s
       WHERE NOT EXISTS (SELECT 1 FROM legacy.chats c WHERE c.created_by = s.id AND c.title = format('Seed chat %s', s.rn))`);
    await db.query(`INSERT INTO legacy.chats (id, title, is_group, created_by)
      SELECT id, format('Seed chat %s', rn), true, owner FROM seed_chats`);
    await db.query(
      `INSERT INTO legacy.chat_members (chat_id, user_id, role)
       SELECT c.id, u.id, CASE WHEN j = 0 THEN 'owner' ELSE 'member' END
         FROM seed_chats c CROSS JOIN generate_series(0, $1::int - 1) j
         JOIN seed_users u ON u.rn = ((c.rn - 1 + j) % $2::int) + 1`,
      [k, o.users],
    );
    // messages spread over the last 30 days, oldest first, senders rotating through the members
    await db.query(
      `INSERT INTO legacy.messages (chat_id, sender_id, body, client_message_id, created_at)
       SELECT c.id, u.id, format('Seed message %s in chat %s', g, c.rn), format('seed-%s-%s', c.rn, g),
              now() - make_interval(secs => (($1::int - g) * 2592000.0 / $1::int))
         FROM seed_chats c CROSS JOIN generate_series(1, $1::int) g
         JOIN seed_users u ON u.rn = ((c.rn - 1 + (g % $2::int)) % $3::int) + 1
        ORDER BY g`,
      [o.messages, k, o.users],
    );
    const counts = (
      await db.query(`SELECT (SELECT count(*) FROM seed_users)::int AS users, (SELECT count(*) FROM seed_chats)::int AS new_chats,
        (SELECT count(*) FROM legacy.messages m JOIN seed_chats c ON c.id = m.chat_id)::int AS new_messages`)
    ).rows[0];
    await db.query('COMMIT');
    return counts as { users: number; new_chats: number; new_messages: number };
  } catch (e) {
    await db.query('ROLLBACK');
    throw e;
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      users: { type: 'string', default: '100' },
      members: { type: 'string', default: '5' },
      messages: { type: 'string', default: '50' },
      password: { type: 'string', default: 'seed-password' },
    },
  });
  const num = (name: string, v: string | undefined, min: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${v}`);
    return n;
  };
  const opts: SeedOptions = {
    users: num('users', values.users, 2),
    members: num('members', values.members, 2),
    messages: num('messages', values.messages, 0),
    password: values.password!,
    bcryptCost: Number(process.env.BCRYPT_COST || 10),
  };
  if (!process.env.DATABASE_URL) throw new Error('DATABASE_URL is not set');
  const db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  const started = Date.now();
  try {
    const c = await seed(db, opts);
    console.log(
      `seeded ${c.users} users (user1..user${opts.users}@${SEED_DOMAIN}, password "${opts.password}"), ` +
        `${c.new_chats} new chats, ${c.new_messages} new messages in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  } finally {
    await db.end();
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(`seed: ${e.message}`);
    process.exit(1);
  });
}
