// The chat service reading from the shards after a chat data move switches reads
// (docs/chat-sharding.md): on a database of its own, the monolith's chat data is moved onto four
// shards with `bm-chat move`, a mover keeps following, reads are switched — and the service
// answers the same, from the shards (a row changed on a shard only shows), new messages written
// to the monolith's tables reach the shard and its readers; then a rollback and the service reads
// the monolith's tables again.
import assert from 'node:assert/strict';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from 'pg';
import { gql, newUser, REPO_DIR, TestUser, waitFor, withStack } from './harness';

// a database of its own (a move changes the tables it moves from: fence triggers, replica
// identity), with four shards beside it — created before the stack starts, dropped after it
const base = process.env.DATABASE_URL!;
const name = `chat_shards_test_${randomBytes(5).toString('hex')}`;
const urlOf = (db: string) => base.replace(/\/[^/?]+(\?|$)/, `/${db}$1`);
const shardEnv = Object.fromEntries([0, 1, 2, 3].map((i) => [`CHAT_SHARD_S${i}_URL`, urlOf(`${name}_chat_s${i}`)]));
const mainUrl = urlOf(name);

async function admin<T>(f: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: base });
  await c.connect();
  try {
    return await f(c);
  } finally {
    await c.end();
  }
}

// (made when the file loads: the stack's own before-hook starts the monolith and the service on it)
execFileSync('psql', [base, '-qc', `CREATE DATABASE ${name} TEMPLATE template0`], { stdio: 'ignore' });
execFileSync(join(REPO_DIR, 'scripts', 'migrate'), [mainUrl], { env: { ...process.env, CHAT_SHARDS: '4', CHAT_SHARD_URLS: '' }, stdio: 'ignore' });
before(() => {
  process.env.DATABASE_URL = mainUrl; // the harness's own Postgres client
});
const env = withStack({ DATABASE_URL: mainUrl, ...shardEnv }, { chatService: true });
after(async () => {
  process.env.DATABASE_URL = base;
  for (const db of [name, ...[0, 1, 2, 3].map((i) => `${name}_chat_s${i}`)]) {
    await admin(async (c) => {
      await c.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1', [db]);
      await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    });
  }
});

const map = join(tmpdir(), `${name}-shards.toml`);
writeFileSync(
  map,
  'version = 1\n' +
    [0, 1, 2, 3].map((i) => `[[shards]]\nname = "s${i}"\nurl_env = "CHAT_SHARD_S${i}_URL"\nbuckets = ["${i * 256}-${i * 256 + 255}"]\n`).join(''),
);
const BM_CHAT = process.env.CHAT_BIN || join(REPO_DIR, 'target', 'debug', 'bm-chat');
const moveEnv = () => ({ PATH: process.env.PATH, RUST_LOG: 'warn', DATABASE_URL: mainUrl, ...shardEnv });
const move = (...args: string[]) => {
  const r = spawnSync(BM_CHAT, ['move', ...args], { env: moveEnv(), encoding: 'utf8' });
  assert.equal(r.status, 0, `bm-chat move ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout + r.stderr;
};

const CHAT = `query($id: ID!) { chat(id: $id) { id title isGroup createdAt updatedAt unreadCount
  members { role joinedAt user { id displayName avatarUrl } } lastMessage { id body senderId sender { displayName } createdAt } } }`;
const PAGE = `query($c: ID!, $after: String) { messages(chatId: $c, first: 3, after: $after) {
  edges { cursor node { id body chatId senderId sender { id displayName avatarUrl } clientMessageId createdAt editedAt deletedAt } }
  pageInfo { hasNextPage endCursor } } }`;
const SEND = `mutation($i: SendMessageInput!) { sendMessage(input: $i) { id } }`;

async function ok(u: TestUser, query: string, variables: Record<string, unknown> = {}) {
  const r = await gql(env.stack.url, query, variables, u.accessToken);
  assert.equal(r.body.errors, undefined, r.text);
  return r.body.data;
}

/** What a reader sees of a chat: the chat and every page of its messages. */
async function view(u: TestUser, chatId: string) {
  const pages = [];
  let after: string | undefined;
  do {
    const p = (await ok(u, PAGE, { c: chatId, after })).messages;
    pages.push(p);
    after = p.pageInfo.hasNextPage ? p.pageInfo.endCursor : undefined;
  } while (after);
  return { chat: (await ok(u, CHAT, { id: chatId })).chat, pages };
}

describe('reads from the shards', () => {
  let follower: ChildProcess | undefined;
  after(() => follower?.kill('SIGKILL'));

  test('after the switch of reads the service answers the same, from the shards; a rollback brings reads back', async () => {
    const a = await newUser(env.stack.url, 'Ada');
    const b = await newUser(env.stack.url, 'Bo');
    const chatId = (await ok(a, `mutation($i: CreateChatInput!) { createChat(input: $i) { id } }`, { i: { memberIds: [b.id] } })).createChat.id;
    const ids: string[] = [];
    for (let n = 1; n <= 7; n++) {
      ids.push((await ok(n % 2 ? a : b, SEND, { i: { chatId, body: `message ${n}`, clientMessageId: randomUUID() } })).sendMessage.id);
    }
    // minted where the shards want them: the chat in its creator's bucket, each message in its
    // chat's (docs/chat-sharding.md: the bucket is a uuid's last 10 bits)
    const bucket = (id: string) => parseInt(id.replace(/-/g, '').slice(28), 16) % 1024;
    assert.equal(bucket(chatId), bucket(a.id), 'a new chat is homed with its creator');
    for (const id of ids) assert.equal(bucket(id), bucket(chatId), 'a message is homed with its chat');
    const before = { a: await view(a, chatId), b: await view(b, chatId) };
    assert.equal(before.a.pages.length, 3);

    // copy, follow, verify; then a mover that keeps following
    const moved = move('run', '--to', map, '--exit-after', 'verify');
    follower = spawn(BM_CHAT, ['move', 'run'], { env: moveEnv(), stdio: 'ignore' });
    await waitFor(
      async () => (await admin((c) => c.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = $1)", [name]))).rowCount,
      'the follower holding the move lock',
    );
    assert.match(move('switch', 'reads'), /done by the running mover/);

    // a row changed on its shard only: the service shows it once it reads the shard
    const shardOf = execFileSync(BM_CHAT, ['move', 'status', '--json'], { env: moveEnv(), encoding: 'utf8' });
    assert.equal(JSON.parse(shardOf).stage, 'reads-switched', moved);
    const home = await admin(async () => {
      for (const i of [0, 1, 2, 3]) {
        const c = new Client({ connectionString: shardEnv[`CHAT_SHARD_S${i}_URL`] });
        await c.connect();
        const r = await c.query("UPDATE chat.messages SET body = body || ' (on its shard)' WHERE id = $1", [ids[0]]);
        await c.end();
        if (r.rowCount) return i;
      }
      return -1;
    });
    assert.notEqual(home, -1, `the message ${ids[0]} is on a shard: ${moved}`);
    const onShard = await waitFor(async () => {
      const v = await view(a, chatId);
      return v.pages.at(-1).edges.at(-1).node.body === 'message 1 (on its shard)' && v;
    }, 'the service reading the shard');
    // everything else the same: the chat, members, unread counts, last message, pages, cursors
    const expectA = structuredClone(before.a);
    expectA.pages.at(-1).edges.at(-1).node.body = 'message 1 (on its shard)';
    assert.deepEqual(onShard, expectA);
    const expectB = structuredClone(before.b);
    expectB.pages.at(-1).edges.at(-1).node.body = 'message 1 (on its shard)';
    assert.deepEqual(await view(b, chatId), expectB);

    // writes still go to the monolith's tables; the follower brings them to the shard's readers
    const late = (await ok(b, SEND, { i: { chatId, body: 'sent after the switch of reads', clientMessageId: randomUUID() } })).sendMessage.id;
    const seen = await waitFor(async () => {
      const c = (await ok(a, CHAT, { id: chatId })).chat;
      return c.lastMessage?.id === late && c;
    }, 'the new message on the shard');
    assert.equal(seen.unreadCount, 1, "Ada read up to her own last message; Bo's new one is unread");

    // rollback: reads come from the monolith's tables again (the shard's change is not there)
    move('rollback');
    await waitFor(async () => {
      const v = await view(a, chatId);
      return v.pages.at(-1).edges.at(-1).node.body === 'message 1' && v;
    }, 'the service reading the monolith again');
    await new Promise<void>((resolve) => (follower!.exitCode !== null ? resolve() : follower!.on('exit', () => resolve())));
    assert.equal(follower.exitCode, 0, 'the mover ends with its move');
    follower = undefined;
  });
});
