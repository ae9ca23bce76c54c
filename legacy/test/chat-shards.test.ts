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
// identity), with four shards beside it and a fifth to add — created before the stack starts,
// dropped after it
const base = process.env.DATABASE_URL!;
const name = `chat_shards_test_${randomBytes(5).toString('hex')}`;
const urlOf = (db: string) => base.replace(/\/[^/?]+(\?|$)/, `/${db}$1`);
const shardEnv = Object.fromEntries([0, 1, 2, 3, 4].map((i) => [`CHAT_SHARD_S${i}_URL`, urlOf(`${name}_chat_s${i}`)]));
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
execFileSync(join(REPO_DIR, 'scripts', 'migrate'), [mainUrl], { env: { ...process.env, CHAT_SHARDS: '5', CHAT_SHARD_URLS: '' }, stdio: 'ignore' });
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
  for (const db of [name, ...[0, 1, 2, 3, 4].map((i) => `${name}_chat_s${i}`)]) {
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

/** `bm-chat move status --json` (the `mover` field: who holds the move lock, if anyone). */
const moveStatus = () => {
  const r = spawnSync(BM_CHAT, ['move', 'status', '--json'], { env: moveEnv(), encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
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

/**
 * `chats` as `u` sees it, once it agrees with every chat's own `updatedAt` (read from the chat,
 * where the routing reads it): the list is the caller's inbox once writes are on the shards,
 * kept by the service and, for other members' messages, by its projection of the events.
 */
async function chatList(u: TestUser, want: string[]): Promise<{ id: string; title: string | null; updatedAt: string }[]> {
  let last: unknown;
  try {
    return await waitFor(
      async () => {
        const list = (await ok(u, '{ chats { id title updatedAt } }')).chats;
        const truth = await Promise.all(list.map(async (c: any) => (await ok(u, 'query($id: ID!) { chat(id: $id) { updatedAt } }', { id: c.id })).chat.updatedAt));
        // newest activity first; two chats active in the same millisecond may come either way
        // (the service orders by the microsecond, the API shows milliseconds)
        const ordered = list.every((c: any, i: number) => i === 0 || list[i - 1].updatedAt >= c.updatedAt);
        last = { list, truth };
        const same = list.every((c: any, i: number) => c.updatedAt === truth[i]) && ordered;
        return same && JSON.stringify(list.map((c: any) => c.id).sort()) === JSON.stringify([...want].sort()) && list;
      },
      `${u.displayName}'s chat list to list ${want.length} chats in order of their activity`,
      15_000,
    );
  } catch (e) {
    // (the message's own template is built before the first try: the last answer goes here)
    throw new Error(`${(e as Error).message}; last seen: ${JSON.stringify(last)}`);
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
      async () => moveStatus()?.mover,
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
    // (a chat's fields are read side by side: one response can hold an unread count from just
    // before the message arrived and the message itself; wait for both)
    await waitFor(async () => {
      const c = (await ok(a, CHAT, { id: chatId })).chat;
      // Ada read up to her own last message; Bo's new one is unread
      return c.lastMessage?.id === late && c.unreadCount === 1;
    }, 'the new message on the shard, unread by Ada');

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
      async () => moveStatus()?.mover,
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

    // `chats`: each user's inbox on their own shard, every chat they are in, newest activity
    // first — Ana's and Cyd's new group reached the member whose inbox is elsewhere from the
    // event (chat.created), every message's activity from message.sent
    await chatList(a, [direct, group, newGroup.id]);
    await chatList(b, [direct, group]);
    await chatList(c, [group, newGroup.id]);
    await onShard(shardOf(a.id), "UPDATE chat.inbox SET title = 'as the inbox says' WHERE user_id = $1 AND chat_id = $2", [a.id, group]);
    assert.equal((await ok(a, '{ chats { id title } }')).chats.find((x: any) => x.id === group).title, 'as the inbox says', '`chats` reads the inbox');
    const latest = await send(b, group, 'bumps the group');
    const aList = await chatList(a, [direct, group, newGroup.id]);
    assert.equal(aList[0].id, group, `Ben's message ${latest} puts the group first in Ana's list`);
    // the projection reports its lag per topic and partition (librdkafka's statistics, each second)
    await waitFor(
      async () => /^chat_inbox_consumer_lag\{[^}]*topic="message\.sent"[^}]*\} \d/m.test(await (await fetch(`${env.stack.chatUrl}/metrics`)).text()),
      "the inbox projection's lag on the chat service's /metrics",
      30_000,
    );

    // message.sent from the shard's outbox, through the broker; the push job writes the
    // recipients' notifications from it (one each, however often the event comes)
    await waitFor(async () => (await onShard(shardOf(group), 'SELECT 1 FROM chat.outbox WHERE published_at IS NOT NULL AND payload LIKE $1', [`%${inGroup}%`])).length, 'the shard\'s event published', 30_000);
    // each message's event in its chat's shard's outbox: every field what the message's row, its
    // chat and its members say
    for (const [id, chatId, sender, title, others] of [
      [fresh, direct, a, null, [b]],
      [inGroup, group, c, 'trio', [a, b]],
    ] as [string, string, TestUser, string | null, TestUser[]][]) {
      const [m] = await onShard(shardOf(chatId), `SELECT seq::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS at, body FROM chat.messages WHERE id = $1`, [id]);
      const events = await onShard(shardOf(chatId), 'SELECT key, type, version, payload FROM chat.outbox WHERE payload LIKE $1', [`%"messageId":%${id}%`]);
      assert.equal(events.length, 1, `one event for ${id}`);
      const e = JSON.parse(events[0].payload);
      assert.deepEqual([events[0].key, events[0].type, events[0].version], [chatId, 'message.sent', 1]);
      assert.deepEqual(
        { ...e, id: undefined },
        {
          id: undefined,
          type: 'message.sent',
          version: 1,
          occurredAt: `${m.at.slice(0, 23)}Z`, // milliseconds, truncated as chrono's
          producer: 'chat',
          chatId,
          messageId: id,
          seq: m.seq,
          senderId: sender.id,
          senderName: sender.displayName,
          chatTitle: title,
          body: m.body,
          recipients: others.map((u) => u.id).sort(),
          pushedInProcess: e.pushedInProcess,
          notificationsWritten: false,
        },
        `the event of ${id}`,
      );
      assert.equal(typeof e.pushedInProcess, 'boolean');
    }
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

describe('a move under traffic through the proxy', () => {
  const PAGE100 = `query($c: ID!, $after: String) { messages(chatId: $c, first: 100, after: $after) {
    edges { cursor node { id body deletedAt } } pageInfo { hasNextPage endCursor } } }`;
  type Msg = { body: string; deleted: boolean; sender: string };
  const movers: ChildProcess[] = [];
  const cleanups: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of cleanups) await c();
    movers.forEach((m) => m.kill('SIGKILL'));
  });

  const status = moveStatus;
  const exited = (p: ChildProcess) => new Promise<void>((resolve) => (p.exitCode !== null || p.signalCode !== null ? resolve() : p.once('exit', () => resolve())));

  /** Eight users in four direct chats and two groups, 500 old messages per chat, a subscriber per chat and four writers; `check` compares everything clients see with what was written. */
  async function traffic_() {
    const users = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => newUser(env.stack.url, `Writer ${i}`)));
    const CREATE = `mutation($i: CreateChatInput!) { createChat(input: $i) { id } }`;
    // four direct chats and two groups of four
    const chats: { id: string; members: TestUser[] }[] = [];
    for (const [x, y] of [[0, 1], [2, 3], [4, 5], [6, 7]]) {
      chats.push({ id: (await ok(users[x], CREATE, { i: { memberIds: [users[y].id] } })).createChat.id, members: [users[x], users[y]] });
    }
    for (const g of [[0, 2, 4, 6], [1, 3, 5, 7]]) {
      const [owner, ...rest] = g.map((i) => users[i]);
      chats.push({ id: (await ok(owner, CREATE, { i: { memberIds: rest.map((u) => u.id), title: `group ${g}` } })).createChat.id, members: [owner, ...rest] });
    }
    // history the copy has to move: 500 messages per chat, written straight into the monolith's tables
    await env.db.query(
      `INSERT INTO legacy.messages (chat_id, sender_id, body)
       SELECT c.chat_id, c.user_id, 'seeded ' || g FROM (SELECT DISTINCT ON (chat_id) chat_id, user_id FROM legacy.chat_members WHERE chat_id = ANY($1::uuid[])) c, generate_series(1, 500) g`,
      [chats.map((c) => c.id)],
    );
    const model = new Map<string, Map<string, Msg>>(chats.map((c) => [c.id, new Map()]));
    for (const r of (await env.db.query('SELECT id, chat_id, body, sender_id FROM legacy.messages WHERE chat_id = ANY($1::uuid[])', [chats.map((c) => c.id)])).rows) {
      model.get(r.chat_id)!.set(r.id, { body: r.body, deleted: false, sender: r.sender_id });
    }

    // a subscriber per chat, through the proxy, live before anything moves
    const live = new Map<string, string[]>();
    const sent = new Map<string, Set<string>>(chats.map((c) => [c.id, new Set()]));
    const sockets = chats.map((chat) => {
      const ws = createClient({
        url: env.stack.url.replace(/^http/, 'ws') + '/graphql',
        webSocketImpl: WebSocket,
        connectionParams: { authorization: `Bearer ${chat.members[1].accessToken}` },
        retryAttempts: 0,
        lazy: false,
        onNonLazyError: () => undefined,
      });
      live.set(chat.id, []);
      ws.subscribe(
        { query: `subscription($c: ID!) { messageAdded(chatId: $c) { id } }`, variables: { c: chat.id } },
        { next: (v: any) => live.get(chat.id)!.push(v.data.messageAdded.id), error: (e) => errors.push(`subscription ${chat.id}: ${e}`), complete: () => undefined },
      );
      return ws;
    });
    const errors: string[] = [];
    const sendAs = async (u: TestUser, chatId: string, body: string) => {
      const r = await gql(env.stack.url, SEND, { i: { chatId, body, clientMessageId: randomUUID() } }, u.accessToken);
      if (r.status !== 200 || r.body.errors) {
        errors.push(`send: ${r.status} ${r.text}`);
        return undefined;
      }
      const id = r.body.data.sendMessage.id as string;
      model.get(chatId)!.set(id, { body, deleted: false, sender: u.id });
      sent.get(chatId)!.add(id);
      return id;
    };
    for (const chat of chats) {
      await waitFor(async () => {
        await sendAs(chat.members[0], chat.id, 'probe');
        await new Promise((r) => setTimeout(r, 50));
        return live.get(chat.id)!.length > 0;
      }, 'a subscription to be live');
    }
    // what a subscriber is owed: every message sent from the first one it received
    const firstLive = new Map(chats.map((c) => [c.id, live.get(c.id)![0]]));

    // the writers: each owns two users (only a sender edits or deletes, so one writer per message)
    let writing = false;
    let ops = 0;
    const writer = async (mine: TestUser[]) => {
      let n = 0;
      while (writing) {
        const u = mine[n % mine.length];
        const its = chats.filter((c) => c.members.some((m) => m.id === u.id));
        const chat = its[n % its.length];
        const own = [...model.get(chat.id)!].filter(([, m]) => m.sender === u.id && !m.deleted);
        const roll = n % 10;
        n++;
        if (roll < 7 || own.length === 0) {
          await sendAs(u, chat.id, `from ${u.displayName} #${n}`);
        } else if (roll < 9) {
          const [id, m] = own[n % own.length];
          const body = `${m.body} (edited)`;
          const r = await gql(env.stack.url, `mutation($id: ID!, $b: String!) { editMessage(id: $id, body: $b) { id body } }`, { id, b: body }, u.accessToken);
          if (r.body?.errors || r.body?.data?.editMessage?.body !== body) errors.push(`edit: ${r.status} ${r.text}`);
          else m.body = body;
        } else {
          const [id, m] = own[n % own.length];
          const r = await gql(env.stack.url, `mutation($id: ID!) { deleteMessage(id: $id) { id deletedAt } }`, { id }, u.accessToken);
          if (r.body?.errors || !r.body?.data?.deleteMessage?.deletedAt) errors.push(`delete: ${r.status} ${r.text}`);
          else m.deleted = true;
        }
        ops++;
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    let writers: Promise<void>[] = [];
    cleanups.push(async () => {
      writing = false;
      await Promise.allSettled(writers);
      await Promise.all(sockets.map((s) => s.dispose()));
    });
    const startWriting = () => {
      writing = true;
      writers = [0, 1, 2, 3].map((w) => writer([users[w], users[w + 4]]));
    };
    const stopWriting = async () => {
      writing = false;
      await Promise.all(writers);
    };
    /** Until `n` more operations have gone through. */
    const more = async (n: number) => {
      const until = ops + n;
      await waitFor(async () => ops >= until, `${n} more writes`, 60_000);
    };

    /** Every member's view of every chat against the model; every subscription against what was sent. */
    const check = async (when: string) => {
      assert.deepEqual(errors, [], `no client saw an error (${when})`);
      for (const chat of chats) {
        const expected = model.get(chat.id)!;
        let reference: string[] | undefined;
        for (const u of chat.members) {
          const seen: { id: string; seq: number; body: string; deleted: boolean }[] = [];
          let after: string | undefined;
          do {
            const p = (await ok(u, PAGE100, { c: chat.id, after })).messages;
            for (const e of p.edges) seen.push({ id: e.node.id, seq: Number(Buffer.from(e.cursor, 'base64').toString()), body: e.node.body, deleted: e.node.deletedAt !== null });
            after = p.pageInfo.hasNextPage ? p.pageInfo.endCursor : undefined;
          } while (after);
          const ids = seen.map((m) => m.id);
          assert.equal(new Set(ids).size, ids.length, `${when}: no message twice in ${chat.id}`);
          for (let i = 1; i < seen.length; i++) assert.ok(seen[i - 1].seq > seen[i].seq, `${when}: newest first, by seq`);
          const missing = [...expected.keys()].filter((id) => !ids.includes(id));
          const extra = ids.filter((id) => !expected.has(id));
          const changed = seen.filter((m) => expected.has(m.id) && (expected.get(m.id)!.deleted ? !m.deleted || m.body !== '' : m.deleted || m.body !== expected.get(m.id)!.body));
          assert.deepEqual({ missing, extra, changed: changed.map((m) => m.id) }, { missing: [], extra: [], changed: [] }, `${when}: ${u.displayName} in ${chat.id}`);
          if (reference) assert.deepEqual(ids, reference, `${when}: every member sees the same`);
          reference = ids;
        }
        // the subscription: every message sent since its first, once, in seq order
        const owed = reference!.slice().reverse();
        const from = owed.indexOf(firstLive.get(chat.id)!);
        const want = owed.slice(from).filter((id) => sent.get(chat.id)!.has(id));
        await waitFor(async () => live.get(chat.id)!.length >= want.length, `${when}: the subscription of ${chat.id} catching up`);
        assert.deepEqual(live.get(chat.id), want, `${when}: the subscription of ${chat.id}: no gap, no repeat, in order`);
      }
      // every user's chat list: all their chats, in order of activity
      for (const u of users) await chatList(u, chats.filter((c) => c.members.includes(u)).map((c) => c.id));
    };
    return { users, chats, model, startWriting, stopWriting, more, check };
  }

  test('kill -9 mid-copy, switch reads, switch writes, rollback: every message once, as written, seen by every member, no gap in any subscription', async () => {
    const { chats, model, startWriting, stopWriting, more: traffic, check } = await traffic_();
    startWriting();
    // the copy, slowed down so that it can be killed halfway, under traffic
    const first = spawn(BM_CHAT, ['move', 'run', '--to', map, '--chunk', '100', '--pause-ms', '40'], { env: moveEnv(), stdio: 'ignore' });
    movers.push(first);
    await waitFor(async () => {
      const s = status();
      return s?.stage === 'copy' && s.copy.some((c: any) => c.table === 'messages' && c.rows_copied > 0 && !c.done);
    }, 'the copy of messages under way', 30_000);
    first.kill('SIGKILL');
    await exited(first);
    const copiedWhenKilled = status().copy.find((c: any) => c.table === 'messages');
    assert.ok(!copiedWhenKilled.done, 'killed mid-copy');
    // run again: it continues, follows, verifies, and keeps following
    const second = spawn(BM_CHAT, ['move', 'run', '--chunk', '500'], { env: moveEnv(), stdio: 'ignore' });
    movers.push(second);
    await waitFor(async () => status()?.stage === 'following', 'the move copied, followed and verified clean', 60_000);
    assert.equal(status().last_verify.rows_compared > 3000, true);
    await traffic(40);
    move('switch', 'reads');
    await traffic(40);
    move('switch', 'writes');
    await traffic(60);
    await stopWriting();
    await check('writes on the shards');
    // each chat's rows are on its shard
    for (const chat of chats) {
      const n = await onShard(shardOf(chat.id), 'SELECT count(*)::int AS n FROM chat.messages WHERE chat_id = $1', [chat.id]);
      assert.equal(n[0].n, model.get(chat.id)!.size, `chat ${chat.id} whole on shard s${shardOf(chat.id)}`);
    }

    startWriting();
    await traffic(40);
    move('rollback');
    await exited(second);
    assert.equal(second.exitCode, 0, 'the mover ends with its move');
    await traffic(60);
    await stopWriting();
    await check('rolled back to the monolith');
    for (const chat of chats) {
      const n = await env.db.query('SELECT count(*)::int AS n FROM legacy.messages WHERE chat_id = $1', [chat.id]);
      assert.equal(n.rows[0].n, model.get(chat.id)!.size, `chat ${chat.id} whole on the monolith's tables`);
      assert.equal((await onShard(shardOf(chat.id), 'SELECT count(*)::int AS n FROM chat.messages WHERE chat_id = $1', [chat.id]))[0].n, 0, 'the copies removed');
    }
  });

  test('the move to its end, then a fifth shard taking a share of every shard under traffic: nothing lost, every list whole', async () => {
    const { chats, model, startWriting, stopWriting, more, check } = await traffic_();
    startWriting();
    move('run', '--to', map, '--exit-after', 'verify');
    const first = spawn(BM_CHAT, ['move', 'run'], { env: moveEnv(), stdio: 'ignore' });
    movers.push(first);
    await waitFor(async () => moveStatus()?.mover, 'the mover following');
    move('switch', 'reads');
    move('switch', 'writes');
    await more(40);
    // the monolith switched off (for the chat data): reverse sync ends, the shards are the truth
    move('finish');
    await exited(first);
    assert.equal((await env.db.query('SELECT stage FROM chat_move.moves ORDER BY id DESC LIMIT 1')).rows[0].stage, 'done');
    await more(40);

    // a fifth shard takes a quarter of every shard's buckets
    const map5 = join(tmpdir(), `${name}-shards-5.toml`);
    const five = [
      ['s0', ['64-255']],
      ['s1', ['320-511']],
      ['s2', ['576-767']],
      ['s3', ['832-1023']],
      ['s4', ['0-63', '256-319', '512-575', '768-831']],
    ] as const;
    writeFileSync(
      map5,
      'version = 2\n' + five.map(([n, b]) => `[[shards]]\nname = "${n}"\nurl_env = "CHAT_SHARD_${n.toUpperCase()}_URL"\nbuckets = ${JSON.stringify(b)}\n`).join(''),
    );
    const shardIn5 = (id: string) => {
      const b = bucket(id);
      return b % 256 < 64 ? 4 : Math.floor(b / 256);
    };
    move('run', '--from', map, '--to', map5, '--exit-after', 'verify');
    const second = spawn(BM_CHAT, ['move', 'run'], { env: moveEnv(), stdio: 'ignore' });
    movers.push(second);
    await waitFor(async () => moveStatus()?.mover, 'the second mover following');
    await more(40);
    move('switch', 'reads');
    await more(40);
    move('switch', 'writes');
    await more(40);
    move('finish');
    await exited(second);
    await more(40);
    await stopWriting();
    await check('on five shards');
    // every chat whole on the shard the new map gives it, and nowhere else
    for (const chat of chats) {
      for (const i of [0, 1, 2, 3, 4]) {
        const n = (await onShard(i, 'SELECT count(*)::int AS n FROM chat.messages WHERE chat_id = $1', [chat.id]))[0].n;
        assert.equal(n, i === shardIn5(chat.id) ? model.get(chat.id)!.size : 0, `chat ${chat.id} on s${i}`);
      }
    }
  });
});
