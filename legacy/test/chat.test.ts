// Chat over GraphQL (HTTP and graphql-ws) against the real monolith and Postgres.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, test } from 'node:test';
import { Client as WsClient, createClient } from 'graphql-ws';
import { Client } from 'pg';
import WebSocket from 'ws';
import { api, gql, newUser, withStack, TestUser, waitFor } from './harness';

// the monolith + fakes for this file, and a Postgres client to check what it stored
const env = withStack();

const CHAT_FIELDS = 'id title isGroup createdAt updatedAt unreadCount members { role joinedAt user { id displayName avatarUrl } } lastMessage { id body }';
const MSG_FIELDS = 'id chatId senderId sender { id displayName } body clientMessageId createdAt editedAt deletedAt';

/** Runs an operation and returns `data`, failing on any error. */
async function ok(user: TestUser, query: string, variables: Record<string, unknown> = {}) {
  const r = await gql(env.stack.url, query, variables, user.accessToken);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.errors, undefined, r.text);
  return r.body.data;
}

/** Runs an operation expected to fail and returns its single error's code. */
async function errCode(token: string | undefined, query: string, variables: Record<string, unknown> = {}) {
  const r = await gql(env.stack.url, query, variables, token);
  assert.ok(r.body.errors?.length, `expected an error, got ${r.text}`);
  return { status: r.status, code: r.body.errors[0].extensions?.code as string, message: r.body.errors[0].message as string, body: r.body };
}

const createChat = async (u: TestUser, memberIds: string[], title?: string) =>
  (await ok(u, `mutation($i: CreateChatInput!) { createChat(input: $i) { ${CHAT_FIELDS} } }`, { i: { memberIds, title } })).createChat;

const send = async (u: TestUser, chatId: string, body: string, clientMessageId: string = randomUUID()) =>
  (await ok(u, `mutation($i: SendMessageInput!) { sendMessage(input: $i) { ${MSG_FIELDS} } }`, { i: { chatId, body, clientMessageId } }))
    .sendMessage;

const SEND = `mutation($i: SendMessageInput!) { sendMessage(input: $i) { id } }`;
const MESSAGES = `query($c: ID!, $first: Int, $after: String) {
  messages(chatId: $c, first: $first, after: $after) { edges { cursor node { id body } } pageInfo { hasNextPage endCursor } } }`;

describe('authentication', () => {
  test('no token, a malformed token and a forged token are UNAUTHENTICATED with HTTP 200', async () => {
    for (const token of [undefined, 'not-a-jwt', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln']) {
      const e = await errCode(token, '{ chats { id } }');
      assert.equal(e.status, 200);
      assert.equal(e.code, 'UNAUTHENTICATED');
      assert.equal(e.body.data, null);
    }
    const e = await errCode(undefined, SEND, { i: { chatId: randomUUID(), body: 'x', clientMessageId: 'c' } });
    assert.equal(e.code, 'UNAUTHENTICATED');
  });
});

describe('createChat', () => {
  test('a direct chat: creator is owner, the same pair gets the same chat back from either side', async () => {
    const a = await newUser(env.stack.url, 'Alice');
    const b = await newUser(env.stack.url, 'Bob');
    const chat = await createChat(a, [b.id]);
    assert.equal(chat.isGroup, false);
    assert.equal(chat.title, null);
    assert.equal(chat.unreadCount, 0);
    assert.equal(chat.lastMessage, null);
    const roles = Object.fromEntries(chat.members.map((m: any) => [m.user.id, m.role]));
    assert.deepEqual(roles, { [a.id]: 'owner', [b.id]: 'member' });
    assert.equal((await createChat(a, [b.id, b.id, a.id])).id, chat.id);
    assert.equal((await createChat(b, [a.id])).id, chat.id);
    const n = await env.db.query('SELECT count(*)::int AS n FROM legacy.chat_members WHERE chat_id = $1', [chat.id]);
    assert.equal(n.rows[0].n, 2);
  });

  test('a titled chat or several members make a group, a new one each time', async () => {
    const [a, b, c] = await Promise.all([newUser(env.stack.url, 'A'), newUser(env.stack.url, 'B'), newUser(env.stack.url, 'C')]);
    const g1 = await createChat(a, [b.id, c.id]);
    assert.equal(g1.isGroup, true);
    assert.equal(g1.members.length, 3);
    const g2 = await createChat(a, [b.id], '  Project  ');
    assert.equal(g2.isGroup, true);
    assert.equal(g2.title, 'Project');
    assert.notEqual(g1.id, g2.id);
  });

  test('unknown, malformed, or only-self member ids are BAD_USER_INPUT', async () => {
    const a = await newUser(env.stack.url);
    const ghost = randomUUID();
    const q = `mutation($i: CreateChatInput!) { createChat(input: $i) { id } }`;
    let e = await errCode(a.accessToken, q, { i: { memberIds: [ghost] } });
    assert.equal(e.code, 'BAD_USER_INPUT');
    assert.match(e.message, new RegExp(ghost));
    e = await errCode(a.accessToken, q, { i: { memberIds: ['nope'] } });
    assert.equal(e.code, 'BAD_USER_INPUT');
    e = await errCode(a.accessToken, q, { i: { memberIds: [a.id] } });
    assert.equal(e.code, 'BAD_USER_INPUT');
    e = await errCode(a.accessToken, q, { i: { memberIds: [] } });
    assert.equal(e.code, 'BAD_USER_INPUT');
    e = await errCode(a.accessToken, q, { i: {} }); // missing required field: variable coercion
    assert.equal(e.code, 'BAD_USER_INPUT');
  });
});

describe('messages', () => {
  test('sendMessage is idempotent per clientMessageId: same message, one row', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    const m1 = await send(a, chat.id, 'hello', 'cm-1');
    assert.equal(m1.body, 'hello');
    assert.equal(m1.senderId, a.id);
    assert.equal(m1.sender.id, a.id);
    assert.equal(m1.chatId, chat.id);
    assert.equal(m1.clientMessageId, 'cm-1');
    const again = await send(a, chat.id, 'hello (retry)', 'cm-1');
    assert.deepEqual(again, m1, 'the repeat returns the first message unchanged');
    const rows = await env.db.query('SELECT count(*)::int AS n FROM legacy.messages WHERE chat_id = $1', [chat.id]);
    assert.equal(rows.rows[0].n, 1);
    // the same client id from the other member is a different message
    const mb = await send(b, chat.id, 'hi', 'cm-1');
    assert.notEqual(mb.id, m1.id);
  });

  test('validation: empty, blank and too long bodies, missing clientMessageId', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    for (const body of ['', '   ', 'x'.repeat(4001)]) {
      const e = await errCode(a.accessToken, SEND, { i: { chatId: chat.id, body, clientMessageId: randomUUID() } });
      assert.equal(e.code, 'BAD_USER_INPUT', body.slice(0, 10));
    }
    assert.equal((await send(a, chat.id, 'y'.repeat(4000))).body.length, 4000);
    const e = await errCode(a.accessToken, SEND, { i: { chatId: chat.id, body: 'x' } });
    assert.equal(e.code, 'BAD_USER_INPUT');
    const bad = await errCode(a.accessToken, SEND, { i: { chatId: 'not-a-uuid', body: 'x', clientMessageId: 'c' } });
    assert.equal(bad.code, 'BAD_USER_INPUT');
  });

  test('non-members get FORBIDDEN, unknown chats NOT_FOUND', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const outsider = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    const m = await send(a, chat.id, 'secret');
    const t = outsider.accessToken;
    assert.equal((await errCode(t, 'query($id: ID!) { chat(id: $id) { id } }', { id: chat.id })).code, 'FORBIDDEN');
    assert.equal((await errCode(t, MESSAGES, { c: chat.id })).code, 'FORBIDDEN');
    assert.equal((await errCode(t, SEND, { i: { chatId: chat.id, body: 'x', clientMessageId: 'c' } })).code, 'FORBIDDEN');
    assert.equal((await errCode(t, 'mutation($id: ID!) { deleteMessage(id: $id) { id } }', { id: m.id })).code, 'FORBIDDEN');
    assert.equal((await errCode(t, 'mutation($c: ID!, $m: ID!) { markRead(chatId: $c, messageId: $m) { id } }', { c: chat.id, m: m.id })).code, 'FORBIDDEN');
    const chats = await ok(outsider, '{ chats { id } }');
    assert.deepEqual(chats.chats, []);
    const ghost = randomUUID();
    assert.equal((await errCode(a.accessToken, 'query($id: ID!) { chat(id: $id) { id } }', { id: ghost })).code, 'NOT_FOUND');
    assert.equal((await errCode(a.accessToken, MESSAGES, { c: ghost })).code, 'NOT_FOUND');
    assert.equal((await errCode(a.accessToken, 'mutation($id: ID!) { editMessage(id: $id, body: "x") { id } }', { id: ghost })).code, 'NOT_FOUND');
    assert.equal((await errCode(a.accessToken, 'query($id: ID!) { chat(id: $id) { id } }', { id: 'zzz' })).code, 'BAD_USER_INPUT');
  });

  test('messages are paginated newest first with opaque cursors', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    const sent = [];
    for (let i = 0; i < 5; i++) sent.push(await send(i % 2 ? b : a, chat.id, `m${i}`));
    const p1 = (await ok(a, MESSAGES, { c: chat.id, first: 2 })).messages;
    assert.deepEqual(p1.edges.map((e: any) => e.node.body), ['m4', 'm3']);
    assert.equal(p1.pageInfo.hasNextPage, true);
    assert.equal(p1.pageInfo.endCursor, p1.edges[1].cursor);
    const p2 = (await ok(a, MESSAGES, { c: chat.id, first: 2, after: p1.pageInfo.endCursor })).messages;
    assert.deepEqual(p2.edges.map((e: any) => e.node.body), ['m2', 'm1']);
    const p3 = (await ok(a, MESSAGES, { c: chat.id, first: 2, after: p2.pageInfo.endCursor })).messages;
    assert.deepEqual(p3.edges.map((e: any) => e.node.body), ['m0']);
    assert.equal(p3.pageInfo.hasNextPage, false);
    // the default page holds all five; the cursor is base64 of messages.seq
    const all = (await ok(b, MESSAGES, { c: chat.id })).messages;
    assert.equal(all.edges.length, 5);
    const seq = await env.db.query('SELECT seq::text FROM legacy.messages WHERE id = $1', [sent[4].id]);
    assert.equal(Buffer.from(all.edges[0].cursor, 'base64').toString(), seq.rows[0].seq);
    for (const bad of [{ first: 0 }, { first: 101 }, { after: 'not a cursor' }, { after: Buffer.from('abc').toString('base64') }]) {
      assert.equal((await errCode(a.accessToken, MESSAGES, { c: chat.id, ...bad })).code, 'BAD_USER_INPUT', JSON.stringify(bad));
    }
  });

  test('edit and delete: only the sender; deleted messages keep their id with an empty body', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    const m = await send(a, chat.id, 'first draft');
    const EDIT = `mutation($id: ID!, $body: String!) { editMessage(id: $id, body: $body) { ${MSG_FIELDS} } }`;
    const DEL = `mutation($id: ID!) { deleteMessage(id: $id) { ${MSG_FIELDS} } }`;
    assert.equal((await errCode(b.accessToken, EDIT, { id: m.id, body: 'hijack' })).code, 'FORBIDDEN');
    assert.equal((await errCode(a.accessToken, EDIT, { id: m.id, body: '' })).code, 'BAD_USER_INPUT');
    const edited = (await ok(a, EDIT, { id: m.id, body: 'final' })).editMessage;
    assert.equal(edited.body, 'final');
    assert.ok(edited.editedAt);
    assert.equal(edited.createdAt, m.createdAt);
    assert.equal((await errCode(b.accessToken, DEL, { id: m.id })).code, 'FORBIDDEN');
    const deleted = (await ok(a, DEL, { id: m.id })).deleteMessage;
    assert.equal(deleted.id, m.id);
    assert.equal(deleted.body, '');
    assert.ok(deleted.deletedAt);
    assert.deepEqual((await ok(a, DEL, { id: m.id })).deleteMessage, deleted, 'deleting again changes nothing');
    assert.equal((await errCode(a.accessToken, EDIT, { id: m.id, body: 'revive' })).code, 'NOT_FOUND');
    const list = (await ok(b, MESSAGES, { c: chat.id })).messages;
    assert.deepEqual(list.edges.map((e: any) => [e.node.id, e.node.body]), [[m.id, '']]);
    const row = await env.db.query('SELECT deleted_at IS NOT NULL AS d FROM legacy.messages WHERE id = $1', [m.id]);
    assert.equal(row.rows[0].d, true, 'soft delete: the row stays');
  });

  test('markRead moves the read marker forward only; unreadCount follows', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    const ms = [];
    for (let i = 0; i < 3; i++) ms.push(await send(a, chat.id, `n${i}`));
    const READ = `mutation($c: ID!, $m: ID!) { markRead(chatId: $c, messageId: $m) { id unreadCount } }`;
    const unread = async (u: TestUser) => (await ok(u, 'query($id: ID!) { chat(id: $id) { unreadCount } }', { id: chat.id })).chat.unreadCount;
    assert.equal(await unread(b), 3);
    assert.equal(await unread(a), 0, 'own messages are never unread');
    assert.equal((await ok(b, READ, { c: chat.id, m: ms[1].id })).markRead.unreadCount, 1);
    assert.equal((await ok(b, READ, { c: chat.id, m: ms[0].id })).markRead.unreadCount, 1, 'never backwards');
    const marker = await env.db.query('SELECT last_read_seq::text FROM legacy.chat_members WHERE chat_id = $1 AND user_id = $2', [chat.id, b.id]);
    const seq1 = await env.db.query('SELECT seq::text FROM legacy.messages WHERE id = $1', [ms[1].id]);
    assert.equal(marker.rows[0].last_read_seq, seq1.rows[0].seq);
    // a message of another chat
    const other = await createChat(a, [b.id], 'other');
    const foreign = await send(a, other.id, 'elsewhere');
    assert.equal((await errCode(b.accessToken, READ, { c: chat.id, m: foreign.id })).code, 'NOT_FOUND');
    assert.equal((await ok(b, READ, { c: chat.id, m: ms[2].id })).markRead.unreadCount, 0);
  });

  test('chats lists the caller’s chats by newest activity with lastMessage', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const c = await newUser(env.stack.url);
    const ab = await createChat(a, [b.id]);
    const ac = await createChat(a, [c.id]);
    await send(a, ab.id, 'to b');
    let list = (await ok(a, `{ chats { ${CHAT_FIELDS} } }`)).chats;
    assert.deepEqual(list.map((x: any) => x.id), [ab.id, ac.id]);
    assert.equal(list[0].lastMessage.body, 'to b');
    await send(c, ac.id, 'from c');
    list = (await ok(a, `{ chats { id unreadCount lastMessage { body sender { displayName } } } }`)).chats;
    assert.deepEqual(list.map((x: any) => x.id), [ac.id, ab.id]);
    assert.equal(list[0].unreadCount, 1);
    assert.equal(list[0].lastMessage.body, 'from c');
  });
});

describe('subscription messageAdded over graphql-ws', () => {
  const wsUrl = () => env.stack.url.replace(/^http/, 'ws') + '/graphql';
  const clients: WsClient[] = [];
  after(async () => {
    await Promise.all(clients.map((c) => c.dispose()));
  });
  const client = (token?: string, onClosed?: (e: any) => void) => {
    const c = createClient({
      url: wsUrl(),
      webSocketImpl: WebSocket,
      connectionParams: token ? { authorization: `Bearer ${token}` } : {},
      retryAttempts: 0,
      lazy: false,
      on: { closed: (e) => onClosed?.(e) },
      onNonLazyError: () => undefined,
    });
    clients.push(c);
    return c;
  };
  /** Subscribes and collects everything the server sends for it. */
  const subscribe = (c: WsClient, chatId: string) => {
    const got: { next: any[]; error?: unknown; done: boolean } = { next: [], done: false };
    c.subscribe(
      { query: `subscription($c: ID!) { messageAdded(chatId: $c) { ${MSG_FIELDS} } }`, variables: { c: chatId } },
      { next: (v) => got.next.push(v), error: (e) => (got.error = e), complete: () => (got.done = true) },
    );
    return got;
  };

  test('a member receives messages of that chat only, once each, in order', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    const other = await createChat(a, [b.id], 'other');
    const c = client(b.accessToken);
    const got = subscribe(c, chat.id);
    // graphql-ws does not acknowledge a subscription: probe until one message comes through
    await waitFor(async () => {
      await send(a, chat.id, 'probe');
      await new Promise((r) => setTimeout(r, 100));
      return got.next.length > 0;
    }, 'the subscription to be live');
    await new Promise((r) => setTimeout(r, 100));
    got.next.length = 0;
    const m1 = await send(a, chat.id, 'live 1', 'ws-1');
    await send(a, other.id, 'not for this subscription');
    await send(a, chat.id, 'live 1 again', 'ws-1'); // idempotent repeat: not published again
    const m2 = await send(b, chat.id, 'live 2');
    await waitFor(async () => got.next.length >= 2, 'two messages over the WebSocket');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(got.error, undefined);
    assert.deepEqual(
      got.next.map((n) => n.data.messageAdded.id),
      [m1.id, m2.id],
    );
    assert.deepEqual(got.next[0].data.messageAdded, m1);
  });

  test('connection_init without a valid token is refused with 4403', async () => {
    for (const token of [undefined, 'garbage']) {
      let closed: any;
      client(token, (e) => (closed = e));
      await waitFor(async () => closed, 'the socket to close');
      assert.equal(closed.code, 4403);
    }
  });

  test('a non-member subscribing gets FORBIDDEN, an unknown chat NOT_FOUND', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const outsider = await newUser(env.stack.url);
    const chat = await createChat(a, [b.id]);
    const c = client(outsider.accessToken);
    const got = subscribe(c, chat.id);
    await waitFor(async () => got.done || got.error, 'the subscription to end');
    const errors = (got.next[0]?.errors ?? got.error) as any[];
    assert.equal(errors?.[0]?.extensions?.code, 'FORBIDDEN', JSON.stringify(got));
    const got2 = subscribe(c, randomUUID());
    await waitFor(async () => got2.done || got2.error, 'the subscription to end');
    assert.equal(((got2.next[0]?.errors ?? got2.error) as any[])?.[0]?.extensions?.code, 'NOT_FOUND', JSON.stringify(got2));
    // and nothing of the chat reaches the outsider
    await send(a, chat.id, 'private');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(got.next.filter((n) => n.data).length, 0);
  });

  test('a plain HTTP GET to /graphql is not a 500', async () => {
    const r = await api(env.stack.url, 'GET', '/graphql');
    assert.ok(r.status < 500, `status ${r.status}`);
  });
});
