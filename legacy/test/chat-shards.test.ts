// The chat service on the shards (docs/chat-sharding.md): on a database of its own, the
// monolith's chat data is moved onto four shards with `bm-chat move`, a mover keeps following.
// Reads switched: the service answers the same, from the shards (a row changed on a shard only
// shows), new messages written to the monolith's tables reach the shard and its readers; a
// rollback and it reads the monolith's tables again. Writes switched: every mutation through the
// proxy writes the chat's shard (in its creator's bucket for a new chat), reverse sync keeps the
// monolith's tables whole, message.sent goes from the shard's outbox through a real broker and the
// notification service writes the message.new rows; a dry run leaves nothing on a shard; after a
// rollback the service writes the monolith's tables again and nothing written on a shard is lost.
import assert from 'node:assert/strict';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createClient } from 'graphql-ws';
import { Client } from 'pg';
import WebSocket from 'ws';
import { api, gql, newUser, REPO_DIR, signedDryRun, Stack, startBroker, startNotificationService, startStack, TestUser, waitFor } from './harness';

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
// a private broker: the service's relays (the monolith's outbox, each shard's) publish to it,
// the notification service's push job reads it
const broker = { brokers: '', stop: async () => {} };
const env = {} as { stack: Stack; db: Client };
let notifier: { child: ChildProcess } | undefined;
before(async () => {
  process.env.DATABASE_URL = mainUrl; // the harness's own Postgres client
  Object.assign(broker, await startBroker());
  env.stack = await startStack({ DATABASE_URL: mainUrl, ...shardEnv, CHAT_KAFKA_BROKERS: broker.brokers }, { chatService: true });
  env.db = new Client({ connectionString: mainUrl });
  await env.db.connect();
  notifier = await startNotificationService({
    DATABASE_URL: mainUrl,
    KAFKA_BROKERS: broker.brokers,
    FCM_BASE_URL: env.stack.fakes,
    PUSH_GROUP: `chat-shards-${randomUUID()}`,
  });
});
after(async () => {
  notifier?.child.kill('SIGKILL');
  await env.db?.end();
  await env.stack?.stop();
  await broker.stop();
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

/** docs/chat-sharding.md: a uuid's bucket is its last 10 bits; the test map puts 256 on each shard. */
const bucket = (id: string) => parseInt(id.replace(/-/g, '').slice(28), 16) % 1024;
const shardOf = (id: string) => Math.floor(bucket(id) / 256);

/** A query on shard `i`. */
async function onShard<T = any>(i: number, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: shardEnv[`CHAT_SHARD_S${i}_URL`] });
  await c.connect();
  try {
    return (await c.query(sql, params)).rows;
  } finally {
    await c.end();
  }
}

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
    // chat's
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
    const status = execFileSync(BM_CHAT, ['move', 'status', '--json'], { env: moveEnv(), encoding: 'utf8' });
    assert.equal(JSON.parse(status).stage, 'reads-switched', moved);
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

  test('after the switch of writes every mutation writes the chat\'s shard, nothing is lost, events and notifications flow; a rollback writes the monolith again', async () => {
    const [a, b, c] = [await newUser(env.stack.url, 'Ana'), await newUser(env.stack.url, 'Ben'), await newUser(env.stack.url, 'Cyd')];
    const CREATE = `mutation($i: CreateChatInput!) { createChat(input: $i) { id members { user { id } } } }`;
    const direct = (await ok(a, CREATE, { i: { memberIds: [b.id] } })).createChat.id;
    const group = (await ok(b, CREATE, { i: { memberIds: [a.id, c.id], title: 'trio' } })).createChat.id;
    const send = async (u: TestUser, chatId: string, body: string) =>
      (await ok(u, SEND, { i: { chatId, body, clientMessageId: randomUUID() } })).sendMessage.id as string;
    // Ana subscribes to the direct chat through the proxy before anything moves: she must receive
    // every message of it, once, in order, across the switch and the rollback
    const ws = createClient({
      url: env.stack.url.replace(/^http/, 'ws') + '/graphql',
      webSocketImpl: WebSocket,
      connectionParams: { authorization: `Bearer ${a.accessToken}` },
      retryAttempts: 0,
      lazy: false,
      onNonLazyError: () => undefined,
    });
    const live: string[] = [];
    let liveError: unknown;
    ws.subscribe(
      { query: `subscription($c: ID!) { messageAdded(chatId: $c) { id } }`, variables: { c: direct } },
      { next: (v: any) => live.push(v.data.messageAdded.id), error: (e) => (liveError = e), complete: () => undefined },
    );
    // graphql-ws does not acknowledge a subscription: probe until one comes through
    const firstProbe = await waitFor(async () => {
      await send(b, direct, 'probe');
      await new Promise((r) => setTimeout(r, 100));
      return live.length > 0 && live[0];
    }, 'the subscription to be live');
    // written before the move (on the monolith's tables), to edit and delete after the switch
    const oldB = await send(b, direct, 'old from Ben');
    const oldA = await send(a, group, 'old from Ana');
    await send(c, group, 'old from Cyd');

    move('run', '--to', map, '--exit-after', 'verify');
    follower = spawn(BM_CHAT, ['move', 'run'], { env: moveEnv(), stdio: 'ignore' });
    await waitFor(
      async () => (await admin((q) => q.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = $1)", [name]))).rowCount,
      'the follower holding the move lock',
    );
    move('switch', 'reads');
    assert.match(move('switch', 'writes'), /done by the running mover/);

    // every kind of write, through the proxy
    const fresh = await send(a, direct, 'new from Ana');
    const inGroup = await send(c, group, 'new from Cyd');
    await ok(b, `mutation($id: ID!, $body: String!) { editMessage(id: $id, body: $body) { id } }`, { id: oldB, body: 'old from Ben, edited on its shard' });
    await ok(a, `mutation($id: ID!) { deleteMessage(id: $id) { id } }`, { id: oldA });
    const read = (await ok(a, `mutation($c: ID!, $m: ID!) { markRead(chatId: $c, messageId: $m) { id unreadCount } }`, { c: group, m: inGroup })).markRead;
    assert.equal(read.unreadCount, 0, 'markRead reads its own write on the shard');
    const again = (await ok(b, CREATE, { i: { memberIds: [a.id] } })).createChat.id;
    assert.equal(again, direct, 'the direct chat is found, not made twice');
    const newGroup = (await ok(c, CREATE, { i: { memberIds: [a.id], title: 'after the switch' } })).createChat;
    assert.equal(bucket(newGroup.id), bucket(c.id), 'a new chat in its creator\'s bucket');
    assert.deepEqual(newGroup.members.map((m: any) => m.user.id).sort(), [a.id, c.id].sort(), 'read back from the shard in the same request');
    const inNew = await send(a, newGroup.id, 'first in the new group');

    // the rows are on the chats' shards (a shard alone has them at first), and reverse sync brings
    // them to the monolith's tables, seq and all
    for (const [id, chatId] of [[fresh, direct], [inGroup, group], [inNew, newGroup.id]]) {
      const rows = await onShard(shardOf(chatId), 'SELECT seq::text, chat_id FROM chat.messages WHERE id = $1', [id]);
      assert.equal(rows.length, 1, `message ${id} on shard s${shardOf(chatId)}`);
      assert.equal(rows[0].chat_id, chatId);
      await waitFor(async () => (await env.db.query('SELECT 1 FROM legacy.messages WHERE id = $1 AND seq = $2', [id, rows[0].seq])).rowCount, `message ${id} synced back`);
    }
    const edited = await onShard(shardOf(direct), 'SELECT body FROM chat.messages WHERE id = $1', [oldB]);
    assert.equal(edited[0].body, 'old from Ben, edited on its shard');
    await waitFor(async () => (await env.db.query("SELECT 1 FROM legacy.messages WHERE id = $1 AND body LIKE '%edited on its shard'", [oldB])).rowCount, 'the edit synced back');
    await waitFor(async () => (await env.db.query('SELECT 1 FROM legacy.messages WHERE id = $1 AND deleted_at IS NOT NULL', [oldA])).rowCount, 'the delete synced back');
    await waitFor(async () => (await env.db.query('SELECT 1 FROM legacy.chats WHERE id = $1', [newGroup.id])).rowCount, 'the new chat synced back');

    // every member sees every message, in order
    const expect = { [direct]: ['old from Ben, edited on its shard', 'new from Ana'], [group]: ['', 'old from Cyd', 'new from Cyd'] };
    const notProbe = (x: string) => x !== 'probe';
    for (const [chatId, bodies] of Object.entries(expect)) {
      const members = chatId === direct ? [a, b] : [a, b, c];
      for (const u of members) {
        const v = await view(u, chatId);
        const seen = v.pages.flatMap((p: any) => p.edges.map((e: any) => e.node.body)).reverse();
        assert.deepEqual(seen.filter(notProbe), bodies, `${u.displayName} in ${chatId}`);
      }
    }

    // message.sent from the shard's outbox, through the broker; the push job writes the
    // recipients' notifications from it (one each, however often the event comes)
    await waitFor(async () => (await onShard(shardOf(group), 'SELECT 1 FROM chat.outbox WHERE published_at IS NOT NULL AND payload LIKE $1', [`%${inGroup}%`])).length, 'the shard\'s event published', 30_000);
    for (const u of [a, b]) {
      await waitFor(
        async () => (await env.db.query("SELECT 1 FROM legacy.notifications WHERE user_id = $1 AND kind = 'message.new' AND payload->>'messageId' = $2", [u.id, inGroup])).rowCount,
        'a notification written from the event',
        30_000,
      );
    }
    const mine = await env.db.query("SELECT count(*)::int AS n FROM legacy.notifications WHERE payload->>'messageId' = $1", [inGroup]);
    assert.equal(mine.rows[0].n, 2, 'one per other member, none for the sender');

    // a signed dry run runs in full and leaves nothing on the shard
    const dry = await api(env.stack.chatUrl!, 'POST', '/graphql', {
      token: a.accessToken,
      headers: signedDryRun('POST', '/graphql'),
      body: { query: SEND, variables: { i: { chatId: direct, body: 'a dry run', clientMessageId: randomUUID() } } },
    });
    assert.equal(dry.body.errors, undefined, dry.text);
    assert.equal((await onShard(shardOf(direct), "SELECT 1 FROM chat.messages WHERE body = 'a dry run'")).length, 0);

    // rollback: the service writes the monolith's tables again, after everything the shards had
    move('rollback');
    await new Promise<void>((resolve) => (follower!.exitCode !== null ? resolve() : follower!.on('exit', () => resolve())));
    assert.equal(follower.exitCode, 0, 'the mover ends with its move');
    follower = undefined;
    const back = await waitFor(async () => {
      const r = await gql(env.stack.url, SEND, { i: { chatId: direct, body: 'after the rollback', clientMessageId: randomUUID() } }, b.accessToken);
      return !r.body.errors && r.body.data.sendMessage.id;
    }, 'a write after the rollback');
    const seqs = await env.db.query('SELECT id, seq FROM legacy.messages WHERE chat_id = $1 ORDER BY seq', [direct]);
    assert.equal(seqs.rows.at(-1).id, back, 'the monolith numbers after the shards');
    // the subscription: every message from the first one it saw, once each, in order — before the
    // move, written on the shard, and after the rollback; not the dry run
    const since = seqs.rows.slice(seqs.rows.findIndex((r: any) => r.id === firstProbe)).map((r: any) => r.id);
    await waitFor(async () => live.length >= since.length, 'every message over the WebSocket');
    assert.equal(liveError, undefined);
    assert.deepEqual(live, since, 'no gap, no repeat, in order');
    await ws.dispose();
    for (const u of [a, b]) {
      const v = await view(u, direct);
      const seen = v.pages.flatMap((p: any) => p.edges.map((e: any) => e.node.body)).reverse();
      assert.deepEqual(seen.filter((x: string) => x !== 'probe'), ['old from Ben, edited on its shard', 'new from Ana', 'after the rollback']);
    }
    assert.deepEqual((await view(c, newGroup.id)).pages[0].edges.map((e: any) => e.node.body), ['first in the new group']);
  });
});
