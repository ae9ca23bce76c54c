// The seed generator against the real Postgres: counts, idempotence, and a seeded user can log in.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client } from 'pg';
import { randomBytes } from 'node:crypto';
import { seed } from '../src/seed/cli';
import { api, Stack, startStack } from './harness';

let stack: Stack;
let db: Client;
before(async () => {
  db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  stack = await startStack();
});
after(async () => {
  await db?.end();
  await stack?.stop();
});

test('seeds users, chats with members and messages; running it again adds nothing', async () => {
  const domain = `${randomBytes(4).toString('hex')}.seed.test`;
  const opts = { users: 30, members: 4, messages: 7, password: 'seed-password', bcryptCost: 4, domain };
  const first = await seed(db, opts);
  assert.equal(first.users, 30);
  const again = await seed(db, opts);
  assert.deepEqual(again, { users: 30, new_chats: 0, new_messages: 0 });

  const { rows } = await db.query(
    `SELECT c.id, count(DISTINCT m.user_id)::int AS members, (SELECT count(*)::int FROM legacy.messages WHERE chat_id = c.id) AS messages
       FROM legacy.chats c JOIN legacy.chat_members m ON m.chat_id = c.id
       JOIN legacy.users u ON u.id = c.created_by
      WHERE u.email LIKE $1 AND c.title LIKE 'Seed chat %' GROUP BY c.id`,
    [`%@${domain}`],
  );
  assert.equal(rows.length, 30);
  for (const r of rows) assert.deepEqual([r.members, r.messages], [4, 7]);
  // every message's sender is a member of its chat
  const stray = await db.query(
    `SELECT count(*)::int AS n FROM legacy.messages m
      WHERE NOT EXISTS (SELECT 1 FROM legacy.chat_members cm WHERE cm.chat_id = m.chat_id AND cm.user_id = m.sender_id)`,
  );
  assert.equal(stray.rows[0].n, 0);

  const login = await api(stack.url, 'POST', '/auth/login', { body: { email: `user7@${domain}`, password: 'seed-password' } });
  assert.equal(login.status, 200);
});
