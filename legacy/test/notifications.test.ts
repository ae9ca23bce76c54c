// Devices, in-app notifications and FCM push against the real monolith, Postgres and the FCM fake.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { api, gql, newUser, withStack, TestUser, waitFor } from './harness';

// the monolith + fakes for this file, and a Postgres client to check what it stored
const env = withStack();

const token = (prefix = 'tok') => `${prefix}-${randomBytes(12).toString('hex')}`;
const registerDevice = (u: TestUser, t: string, platform = 'android') =>
  api(env.stack.url, 'POST', '/notifications/devices', { token: u.accessToken, body: { token: t, platform } });

/** Every message the FCM fake accepted. */
async function pushes(): Promise<any[]> {
  const r = await api(env.stack.fakes, 'GET', '/_fake/fcm/messages');
  assert.equal(r.status, 200);
  return r.body.items;
}
const pushesTo = async (t: string) => (await pushes()).filter((p) => p.message.token === t);

async function directChat(a: TestUser, b: TestUser): Promise<string> {
  const r = await gql(env.stack.url, 'mutation($i: CreateChatInput!) { createChat(input: $i) { id } }', { i: { memberIds: [b.id] } }, a.accessToken);
  assert.equal(r.body.errors, undefined, r.text);
  return r.body.data.createChat.id;
}

async function send(u: TestUser, chatId: string, body: string, clientMessageId: string = randomUUID()) {
  const r = await gql(
    env.stack.url,
    'mutation($i: SendMessageInput!) { sendMessage(input: $i) { id chatId } }',
    { i: { chatId, body, clientMessageId } },
    u.accessToken,
  );
  assert.equal(r.body.errors, undefined, r.text);
  return r.body.data.sendMessage as { id: string; chatId: string };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('devices', () => {
  test('register is 201 and an upsert: the same token registered by another user moves to them', async () => {
    const a = await newUser(env.stack.url);
    const b = await newUser(env.stack.url);
    const t = token();
    const r = await registerDevice(a, t, 'ios');
    assert.equal(r.status, 201);
    assert.equal(r.body.token, t);
    assert.equal(r.body.platform, 'ios');
    assert.ok(Date.parse(r.body.createdAt));
    assert.equal((await registerDevice(a, t, 'ios')).status, 201, 'registering again is fine');
    assert.equal((await registerDevice(b, t, 'web')).status, 201);
    const rows = await env.db.query('SELECT user_id, platform FROM legacy.devices WHERE token = $1', [t]);
    assert.deepEqual(rows.rows, [{ user_id: b.id, platform: 'web' }]);
    // A no longer owns it
    assert.equal((await api(env.stack.url, 'DELETE', `/notifications/devices/${t}`, { token: a.accessToken })).status, 404);
  });

  test('delete: own token 204, then 404; unknown token 404', async () => {
    const a = await newUser(env.stack.url);
    const t = token();
    await registerDevice(a, t);
    const del = await api(env.stack.url, 'DELETE', `/notifications/devices/${encodeURIComponent(t)}`, { token: a.accessToken });
    assert.equal(del.status, 204);
    assert.equal(del.text, '');
    const again = await api(env.stack.url, 'DELETE', `/notifications/devices/${encodeURIComponent(t)}`, { token: a.accessToken });
    assert.equal(again.status, 404);
    assert.deepEqual(again.body, { statusCode: 404, message: 'Device not found', error: 'Not Found' });
    assert.equal((await env.db.query('SELECT 1 FROM legacy.devices WHERE token = $1', [t])).rowCount, 0);
  });

  test('validation errors are 400 with every problem listed', async () => {
    const a = await newUser(env.stack.url);
    let r = await api(env.stack.url, 'POST', '/notifications/devices', { token: a.accessToken, body: { token: '', platform: 'symbian', extra: 1 } });
    assert.equal(r.status, 400);
    assert.equal(r.body.error, 'Bad Request');
    assert.ok(r.body.message.some((m: string) => m.startsWith('token must be longer')), r.text);
    assert.ok(r.body.message.some((m: string) => m.startsWith('platform must be one of')), r.text);
    assert.ok(r.body.message.includes('property extra should not exist'), r.text);
    r = await registerDevice(a, 'x'.repeat(4097));
    assert.equal(r.status, 400);
    assert.equal((await registerDevice(a, 'x'.repeat(4096), 'web')).status, 201);
    r = await api(env.stack.url, 'POST', '/notifications/devices', { token: a.accessToken, body: '{"token":', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
  });

  test('every route needs a bearer token (401)', async () => {
    const routes: [string, string][] = [
      ['POST', '/notifications/devices'],
      ['DELETE', '/notifications/devices/abc'],
      ['GET', '/notifications'],
      ['GET', '/notifications/unread-count'],
      ['POST', '/notifications/read-all'],
      ['POST', `/notifications/${randomUUID()}/read`],
    ];
    for (const [method, path] of routes) {
      const r = await api(env.stack.url, method, path, { token: method === 'GET' ? 'bad.token.here' : undefined, body: method === 'POST' ? {} : undefined });
      assert.equal(r.status, 401, `${method} ${path}`);
      assert.deepEqual(r.body, { statusCode: 401, message: 'Unauthorized' });
    }
  });
});

describe('a new message', () => {
  test('pushes once to each device of the other member, none to the sender, and is listed for the recipient', async () => {
    const a = await newUser(env.stack.url, 'Alice');
    const b = await newUser(env.stack.url, 'Bob');
    const [ta, tb1, tb2] = [token('a'), token('b1'), token('b2')];
    assert.equal((await registerDevice(a, ta)).status, 201);
    assert.equal((await registerDevice(b, tb1, 'android')).status, 201);
    assert.equal((await registerDevice(b, tb2, 'ios')).status, 201);
    const chatId = await directChat(a, b);
    const m = await send(a, chatId, 'Hello Bob, lunch?', 'lunch-1');

    await waitFor(async () => (await pushesTo(tb1)).length && (await pushesTo(tb2)).length, 'pushes to both of B’s devices');
    const [p] = await pushesTo(tb1);
    assert.equal(p.project, 'brainmessenger-dev');
    assert.deepEqual(p.message.notification, { title: 'Alice', body: 'Hello Bob, lunch?' });
    assert.deepEqual(p.message.data, { kind: 'message.new', chatId, messageId: m.id, senderId: a.id });

    // the idempotent repeat neither pushes nor notifies again
    const again = await send(a, chatId, 'Hello Bob, lunch?', 'lunch-1');
    assert.equal(again.id, m.id);
    await sleep(500);
    assert.equal((await pushesTo(tb1)).length, 1);
    assert.equal((await pushesTo(tb2)).length, 1);
    assert.equal((await pushesTo(ta)).length, 0, 'nothing to the sender');

    const list = await api(env.stack.url, 'GET', '/notifications', { token: b.accessToken });
    assert.equal(list.status, 200);
    assert.equal(list.body.items.length, 1);
    const n = list.body.items[0];
    assert.equal(n.kind, 'message.new');
    assert.equal(n.readAt, null);
    assert.deepEqual(n.payload, { chatId, messageId: m.id, senderId: a.id, senderName: 'Alice', chatTitle: null, preview: 'Hello Bob, lunch?' });
    assert.equal(list.body.nextBefore, null);
    const mine = await api(env.stack.url, 'GET', '/notifications', { token: a.accessToken });
    assert.deepEqual(mine.body, { items: [], nextBefore: null }, 'the sender is not notified');

    let count = await api(env.stack.url, 'GET', '/notifications/unread-count', { token: b.accessToken });
    assert.deepEqual(count.body, { count: 1 });
    const read = await api(env.stack.url, 'POST', `/notifications/${n.id}/read`, { token: b.accessToken });
    assert.equal(read.status, 200);
    assert.equal(read.body.id, n.id);
    assert.ok(Date.parse(read.body.readAt));
    const readAgain = await api(env.stack.url, 'POST', `/notifications/${n.id}/read`, { token: b.accessToken });
    assert.equal(readAgain.body.readAt, read.body.readAt, 'the first read time is kept');
    count = await api(env.stack.url, 'GET', '/notifications/unread-count', { token: b.accessToken });
    assert.deepEqual(count.body, { count: 0 });
    // someone else's notification, an unknown one, a malformed id
    assert.equal((await api(env.stack.url, 'POST', `/notifications/${n.id}/read`, { token: a.accessToken })).status, 404);
    assert.equal((await api(env.stack.url, 'POST', `/notifications/${randomUUID()}/read`, { token: b.accessToken })).status, 404);
    assert.equal((await api(env.stack.url, 'POST', '/notifications/not-a-uuid/read', { token: b.accessToken })).status, 400);
  });

  test('a token FCM reports UNREGISTERED is removed; the other devices still get the push', async () => {
    const a = await newUser(env.stack.url, 'Ann');
    const b = await newUser(env.stack.url, 'Ben');
    const dead = token('unregistered');
    const live = token('live');
    await registerDevice(b, dead);
    await registerDevice(b, live);
    const chatId = await directChat(a, b);
    await send(a, chatId, 'are you there?');
    await waitFor(async () => (await pushesTo(live)).length, 'the push to the live device');
    await waitFor(
      async () => (await env.db.query('SELECT 1 FROM legacy.devices WHERE token = $1', [dead])).rowCount === 0,
      'the unregistered token to be deleted',
    );
    assert.equal((await env.db.query('SELECT 1 FROM legacy.devices WHERE token = $1', [live])).rowCount, 1);
    assert.equal((await pushesTo(dead)).length, 0);
  });

  test('group messages use the chat title; list pagination with limit and before', async () => {
    const a = await newUser(env.stack.url, 'Gina');
    const b = await newUser(env.stack.url, 'Hal');
    const tb = token('grp');
    await registerDevice(b, tb, 'web');
    const r = await gql(
      env.stack.url,
      'mutation($i: CreateChatInput!) { createChat(input: $i) { id } }',
      { i: { memberIds: [b.id], title: 'Team' } },
      a.accessToken,
    );
    const chatId = r.body.data.createChat.id;
    const sent: { id: string }[] = [];
    for (let i = 0; i < 3; i++) sent.push(await send(a, chatId, `msg ${i} ${'z'.repeat(i === 2 ? 150 : 0)}`));
    await waitFor(async () => (await pushesTo(tb)).length === 3, 'three pushes');
    const last = (await pushesTo(tb)).find((p) => p.message.data.messageId === sent[2].id);
    assert.equal(last.message.notification.title, 'Team');
    assert.ok(last.message.notification.body.startsWith('Gina: msg 2 '));
    assert.ok(last.message.notification.body.length <= 'Gina: '.length + 100, 'the preview is cut to 100 characters');

    const p1 = await api(env.stack.url, 'GET', '/notifications?limit=2', { token: b.accessToken });
    assert.equal(p1.status, 200);
    assert.deepEqual(p1.body.items.map((n: any) => n.payload.messageId), [sent[2].id, sent[1].id]);
    assert.equal(p1.body.nextBefore, p1.body.items[1].id);
    const p2 = await api(env.stack.url, 'GET', `/notifications?limit=2&before=${p1.body.nextBefore}`, { token: b.accessToken });
    assert.deepEqual(p2.body.items.map((n: any) => n.payload.messageId), [sent[0].id]);
    assert.equal(p2.body.nextBefore, null);
    for (const q of ['limit=0', 'limit=101', 'limit=abc', 'before=nope', `before=${randomUUID()}`]) {
      const bad = await api(env.stack.url, 'GET', `/notifications?${q}`, { token: b.accessToken });
      assert.equal(bad.status, 400, q);
    }
    const all = await api(env.stack.url, 'POST', '/notifications/read-all', { token: b.accessToken });
    assert.deepEqual(all.body, { updated: 3 });
    assert.deepEqual((await api(env.stack.url, 'GET', '/notifications/unread-count', { token: b.accessToken })).body, { count: 0 });
  });
});
