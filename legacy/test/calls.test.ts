// Calls: REST against the real monolith, Redis and Postgres, and WebRTC signalling with real `ws`
// clients. Chats are created by inserting rows into legacy.chats / legacy.chat_members.
import assert from 'node:assert/strict';
import { connect as tcpConnect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { Client } from 'pg';
import { WebSocket } from 'ws';
import { api, newUser, Stack, startStack, TestUser, waitFor } from './harness';

let stack: Stack;
let db: Client;
let redis: Redis;
const HEARTBEAT_MS = 300;

before(async () => {
  stack = await startStack({ CALL_HEARTBEAT_MS: String(HEARTBEAT_MS) });
  db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  redis = new Redis(process.env.REDIS_URL!);
});
after(async () => {
  await db?.end();
  redis?.disconnect();
  await stack?.stop();
});

const post = (path: string, token: string, body?: unknown) => api(stack.url, 'POST', path, { token, body });
const get = (path: string, token: string) => api(stack.url, 'GET', path, { token });
const UNKNOWN = '00000000-0000-4000-8000-000000000000';

/** A chat whose first user is its owner and the others members. */
async function chat(owner: TestUser, ...members: TestUser[]): Promise<string> {
  const { rows } = await db.query(`INSERT INTO legacy.chats (title, is_group, created_by) VALUES ('call test', true, $1) RETURNING id`, [owner.id]);
  const id = rows[0].id;
  await db.query(`INSERT INTO legacy.chat_members (chat_id, user_id, role) VALUES ($1, $2, 'owner')`, [id, owner.id]);
  for (const m of members) await db.query(`INSERT INTO legacy.chat_members (chat_id, user_id) VALUES ($1, $2)`, [id, m.id]);
  return id;
}

async function users(n: number, name = 'Caller'): Promise<TestUser[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => newUser(stack.url, `${name} ${i}`)));
}

async function startCall(chatId: string, u: TestUser): Promise<string> {
  const r = await post('/calls', u.accessToken, { chatId });
  assert.equal(r.status, 201, r.text);
  return r.body.id;
}

/** A `ws` client that buffers messages so tests can wait for the one they expect. */
class Sock {
  private buf: any[] = [];
  private waiters: { pred: (m: any) => boolean; res: (m: any) => void }[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (d) => {
      const m = JSON.parse(d.toString());
      const i = this.waiters.findIndex((w) => w.pred(m));
      if (i >= 0) this.waiters.splice(i, 1)[0].res(m);
      else this.buf.push(m);
    });
    this.closed = new Promise((res) => ws.on('close', (code, reason) => res({ code, reason: reason.toString() })));
  }

  static open(token?: string, opts: { header?: boolean; autoPong?: boolean; path?: string; base?: string } = {}): Promise<Sock> {
    const q = token && !opts.header ? `?access_token=${encodeURIComponent(token)}` : '';
    const ws = new WebSocket(`${(opts.base ?? stack.url).replace('http', 'ws')}${opts.path ?? '/calls/signal'}${q}`, {
      headers: token && opts.header ? { authorization: `Bearer ${token}` } : {},
      autoPong: opts.autoPong ?? true,
    });
    const sock = new Sock(ws);
    return new Promise((res, rej) => {
      ws.once('open', () => res(sock));
      ws.once('unexpected-response', (_req, r) => {
        let body = '';
        r.on('data', (c) => (body += c));
        r.on('end', () => rej(Object.assign(new Error(`upgrade answered ${r.statusCode}`), { status: r.statusCode, body })));
      });
      ws.once('error', rej);
    });
  }

  send(m: unknown) {
    this.ws.send(typeof m === 'string' ? m : JSON.stringify(m));
  }

  /** The next message matching `pred` (already received or arriving within `ms`). */
  next(pred: (m: any) => boolean = () => true, ms = 3000): Promise<any> {
    const i = this.buf.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.buf.splice(i, 1)[0]);
    return new Promise((res, rej) => {
      const w = { pred, res: (m: any) => (clearTimeout(t), res(m)) };
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        rej(new Error(`no matching message within ${ms} ms; buffered: ${JSON.stringify(this.buf)}`));
      }, ms);
      this.waiters.push(w);
    });
  }

  /** Asserts that no message matching `pred` arrives within `ms`. */
  async none(pred: (m: any) => boolean, ms = 300) {
    await new Promise((r) => setTimeout(r, ms));
    assert.equal(this.buf.filter(pred).length, 0, `unexpected: ${JSON.stringify(this.buf.filter(pred))}`);
  }

  /** Opens a socket and joins `callId` with it, returning it once `joined` arrived. */
  static async joined(u: TestUser, callId: string, base?: string): Promise<Sock> {
    const s = await Sock.open(u.accessToken, { base });
    s.send({ type: 'join', callId });
    const m = await s.next((m) => m.type === 'joined' || m.type === 'error');
    assert.equal(m.type, 'joined', JSON.stringify(m));
    return s;
  }
}

const ofType = (type: string) => (m: any) => m.type === type;

describe('REST', () => {
  test('starting a call: 201 with the starter in it, state in Redis with a TTL', async () => {
    const [a, b] = await users(2);
    const chatId = await chat(a, b);
    const r = await post('/calls', a.accessToken, { chatId });
    assert.equal(r.status, 201);
    assert.deepEqual(Object.keys(r.body).sort(), ['chatId', 'endedAt', 'id', 'participants', 'startedAt', 'startedBy', 'status']);
    assert.match(r.body.id, /^[0-9a-f-]{36}$/);
    assert.equal(r.body.chatId, chatId);
    assert.equal(r.body.startedBy, a.id);
    assert.equal(r.body.status, 'active');
    assert.equal(r.body.endedAt, null);
    assert.ok(Math.abs(Date.parse(r.body.startedAt) - Date.now()) < 10_000);
    assert.deepEqual(r.body.participants, [{ userId: a.id, joinedAt: r.body.startedAt }]);

    const id = r.body.id;
    assert.equal(await redis.hget(`calls:${id}`, 'status'), 'active');
    assert.deepEqual(await redis.hkeys(`calls:${id}:participants`), [a.id]);
    assert.equal(await redis.get(`calls:chat:${chatId}`), id);
    for (const k of [`calls:${id}`, `calls:${id}:participants`, `calls:chat:${chatId}`]) {
      const ttl = await redis.ttl(k);
      assert.ok(ttl > 86000 && ttl <= 86400, `${k} TTL ${ttl}`);
    }

    // readable by id and as the chat's active call, for every member
    const byId = await get(`/calls/${id}`, b.accessToken);
    assert.equal(byId.status, 200);
    assert.deepEqual(byId.body, r.body);
    const active = await get(`/calls?chatId=${chatId}`, b.accessToken);
    assert.equal(active.status, 200);
    assert.deepEqual(active.body, r.body);
  });

  test('a second call in the same chat is 409 with the active call id', async () => {
    const [a, b] = await users(2);
    const chatId = await chat(a, b);
    const id = await startCall(chatId, a);
    const r = await post('/calls', b.accessToken, { chatId });
    assert.equal(r.status, 409);
    assert.deepEqual(r.body, { statusCode: 409, message: 'Chat already has an active call', error: 'Conflict', callId: id });
  });

  test('concurrent starts in one chat create exactly one call', async () => {
    const us = await users(10, 'Starter');
    const chatId = await chat(us[0], ...us.slice(1));
    const rs = await Promise.all(us.map((u) => post('/calls', u.accessToken, { chatId })));
    const created = rs.filter((r) => r.status === 201);
    assert.equal(created.length, 1, rs.map((r) => r.status).join(','));
    assert.ok(rs.every((r) => r.status === 201 || (r.status === 409 && r.body.callId === created[0].body.id)));
  });

  test('validation: non-uuid chatId, missing body, extra properties, non-uuid ids are 400', async () => {
    const [a] = await users(1);
    let r = await post('/calls', a.accessToken, { chatId: 'nope' });
    assert.equal(r.status, 400);
    assert.deepEqual(r.body, { statusCode: 400, message: ['chatId must be a UUID'], error: 'Bad Request' });
    r = await post('/calls', a.accessToken);
    assert.equal(r.status, 400);
    r = await post('/calls', a.accessToken, { chatId: UNKNOWN, video: true });
    assert.equal(r.status, 400);
    assert.deepEqual(r.body.message, ['property video should not exist']);
    r = await get('/calls/not-a-uuid', a.accessToken);
    assert.equal(r.status, 400);
    assert.equal(r.body.message, 'Validation failed (uuid is expected)');
    r = await post('/calls/123/join', a.accessToken);
    assert.equal(r.status, 400);
    r = await get('/calls', a.accessToken);
    assert.equal(r.status, 400);
    assert.deepEqual(r.body.message, ['chatId must be a UUID']);
    r = await get(`/calls?chatId=${UNKNOWN}&x=1`, a.accessToken);
    assert.deepEqual([r.status, r.body.message], [400, ['property x should not exist']]);
    r = await api(stack.url, 'POST', '/calls', { token: a.accessToken, body: '{"chatId":', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
  });

  test('no or bad token is 401', async () => {
    let r = await api(stack.url, 'POST', '/calls', { body: { chatId: UNKNOWN } });
    assert.equal(r.status, 401);
    assert.deepEqual(r.body, { message: 'Unauthorized', statusCode: 401 });
    r = await get(`/calls/${UNKNOWN}`, 'garbage');
    assert.equal(r.status, 401);
  });

  test('unknown chat or call is 404; non-members are 403 everywhere', async () => {
    const [a, b, outsider] = await users(3);
    const chatId = await chat(a, b);
    let r = await post('/calls', a.accessToken, { chatId: UNKNOWN });
    assert.deepEqual([r.status, r.body.message], [404, 'Chat not found']);
    r = await get(`/calls/${UNKNOWN}`, a.accessToken);
    assert.deepEqual(r.body, { statusCode: 404, message: 'Call not found', error: 'Not Found' });
    for (const p of ['join', 'leave', 'end']) {
      r = await post(`/calls/${UNKNOWN}/${p}`, a.accessToken);
      assert.equal(r.status, 404, p);
    }
    r = await get(`/calls?chatId=${chatId}`, a.accessToken);
    assert.deepEqual([r.status, r.body.message], [404, 'No active call in this chat']);

    r = await post('/calls', outsider.accessToken, { chatId });
    assert.deepEqual(r.body, { statusCode: 403, message: 'You are not a member of this chat', error: 'Forbidden' });
    const id = await startCall(chatId, a);
    r = await get(`/calls?chatId=${chatId}`, outsider.accessToken);
    assert.equal(r.status, 403);
    r = await get(`/calls/${id}`, outsider.accessToken);
    assert.equal(r.status, 403);
    for (const p of ['join', 'leave', 'end']) {
      r = await post(`/calls/${id}/${p}`, outsider.accessToken);
      assert.equal(r.status, 403, p);
    }
    assert.deepEqual(await redis.hkeys(`calls:${id}:participants`), [a.id], 'the outsider did not get in');
  });

  test('join is idempotent; leave; the last one out ends the call', async () => {
    const [a, b, c] = await users(3);
    const chatId = await chat(a, b, c);
    const id = await startCall(chatId, a);
    const j1 = await post(`/calls/${id}/join`, b.accessToken);
    assert.equal(j1.status, 200);
    assert.deepEqual(j1.body.participants.map((p: any) => p.userId), [a.id, b.id]);
    const j2 = await post(`/calls/${id}/join`, b.accessToken);
    assert.equal(j2.status, 200);
    assert.deepEqual(j2.body, j1.body, 'joining again changes nothing (same joinedAt)');

    let r = await post(`/calls/${id}/leave`, c.accessToken);
    assert.deepEqual([r.status, r.body.message], [409, 'You are not in this call']);

    r = await post(`/calls/${id}/leave`, a.accessToken);
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'active');
    assert.deepEqual(r.body.participants.map((p: any) => p.userId), [b.id]);

    r = await post(`/calls/${id}/leave`, b.accessToken);
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'ended');
    assert.ok(r.body.endedAt);
    assert.deepEqual(r.body.participants, []);
    assert.equal(await redis.exists(`calls:chat:${chatId}`), 0);
    assert.equal(await redis.exists(`calls:${id}:participants`), 0);
    const ttl = await redis.ttl(`calls:${id}`);
    assert.ok(ttl > 0 && ttl <= 3600, `ended call kept for the retention only (${ttl})`);

    // ended: readable by id, no longer the chat's call; join/leave/end are 410
    r = await get(`/calls/${id}`, c.accessToken);
    assert.equal(r.body.status, 'ended');
    r = await get(`/calls?chatId=${chatId}`, c.accessToken);
    assert.equal(r.status, 404);
    for (const p of ['join', 'leave', 'end']) {
      r = await post(`/calls/${id}/${p}`, c.accessToken);
      assert.deepEqual(r.body, { statusCode: 410, message: 'Call has ended', error: 'Gone' }, p);
    }
    // and a new call may start
    const id2 = await startCall(chatId, c);
    assert.notEqual(id2, id);
  });

  test('only the starter or a chat owner may end a call', async () => {
    const [owner, starter, member] = await users(3);
    const chatId = await chat(owner, starter, member);
    let id = await startCall(chatId, starter);
    await post(`/calls/${id}/join`, member.accessToken);
    let r = await post(`/calls/${id}/end`, member.accessToken);
    assert.deepEqual(r.body, { statusCode: 403, message: 'Only the participant who started the call or a chat owner can end it', error: 'Forbidden' });
    assert.equal((await get(`/calls/${id}`, member.accessToken)).body.status, 'active');

    r = await post(`/calls/${id}/end`, starter.accessToken);
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'ended');
    assert.deepEqual(r.body.participants, []);
    assert.equal(await redis.exists(`calls:chat:${chatId}`), 0);

    // the owner ends a call it is not even in
    id = await startCall(chatId, member);
    r = await post(`/calls/${id}/end`, owner.accessToken);
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'ended');
  });

  test(`60 concurrent joins leave exactly 50 participants; the rest are 409 'Call is full'`, async () => {
    const us = await users(60, 'Crowd');
    const starter = us[0];
    const chatId = await chat(starter, ...us.slice(1));
    const extra = await users(10, 'Late');
    for (const u of extra) await db.query(`INSERT INTO legacy.chat_members (chat_id, user_id) VALUES ($1, $2)`, [chatId, u.id]);
    const id = await startCall(chatId, starter);
    const joiners = [...us.slice(1), ...extra]; // 69 besides the starter
    const rs = await Promise.all(joiners.map((u) => post(`/calls/${id}/join`, u.accessToken)));
    const ok = rs.filter((r) => r.status === 200);
    const full = rs.filter((r) => r.status === 409);
    assert.equal(ok.length, 49);
    assert.equal(full.length, 20);
    for (const r of full) assert.deepEqual(r.body, { statusCode: 409, message: 'Call is full', error: 'Conflict' });
    assert.equal(await redis.hlen(`calls:${id}:participants`), 50);
    const call = await get(`/calls/${id}`, starter.accessToken);
    assert.equal(call.body.participants.length, 50);

    // a participant already in may still "join" (idempotent), a new one may after someone leaves
    const inside = joiners[rs.findIndex((r) => r.status === 200)];
    const outside = joiners[rs.findIndex((r) => r.status === 409)];
    assert.equal((await post(`/calls/${id}/join`, inside.accessToken)).status, 200);
    assert.equal((await post(`/calls/${id}/leave`, inside.accessToken)).status, 200);
    assert.equal((await post(`/calls/${id}/join`, outside.accessToken)).status, 200);
    assert.equal((await post(`/calls/${id}/join`, inside.accessToken)).status, 409);
  });
});

describe('signalling', () => {
  test('two participants exchange offer, answer and ICE with the server-set `from`', async () => {
    const [a, b] = await users(2);
    const chatId = await chat(a, b);
    const id = await startCall(chatId, a);
    await post(`/calls/${id}/join`, b.accessToken);

    const sa = await Sock.open(a.accessToken);
    sa.send({ type: 'join', callId: id });
    const joined = await sa.next();
    assert.equal(joined.type, 'joined');
    assert.equal(joined.callId, id);
    assert.equal(joined.userId, a.id);
    assert.deepEqual(joined.participants.map((p: any) => p.userId), [a.id, b.id]);
    const sb = await Sock.joined(b, id);

    const offer = { sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n', type: 'offer' };
    sa.send({ type: 'offer', callId: id, to: b.id, from: b.id, payload: offer }); // a forged `from`
    assert.deepEqual(await sb.next(), { type: 'offer', callId: id, from: a.id, to: b.id, payload: offer });

    sb.send({ type: 'answer', callId: id, to: a.id, payload: { sdp: 'answer-sdp', type: 'answer' } });
    assert.deepEqual(await sa.next(), { type: 'answer', callId: id, from: b.id, to: a.id, payload: { sdp: 'answer-sdp', type: 'answer' } });

    const cand = { candidate: 'candidate:1 1 udp 2122260223 10.0.0.1 54321 typ host', sdpMid: '0', sdpMLineIndex: 0 };
    sa.send({ type: 'ice', callId: id, to: b.id, payload: cand });
    sb.send({ type: 'ice', callId: id, to: a.id, payload: cand });
    assert.deepEqual(await sb.next(), { type: 'ice', callId: id, from: a.id, to: b.id, payload: cand });
    assert.deepEqual(await sa.next(), { type: 'ice', callId: id, from: b.id, to: a.id, payload: cand });
    // nothing echoed back to the sender
    await sa.none(() => true);
    await sb.none(() => true);
    sa.ws.close();
    sb.ws.close();
  });

  test('the Authorization header works as well as ?access_token=', async () => {
    const [a] = await users(1);
    const id = await startCall(await chat(a), a);
    const s = await Sock.open(a.accessToken, { header: true });
    s.send({ type: 'join', callId: id });
    assert.equal((await s.next()).type, 'joined');
    s.ws.close();
  });

  test('a bad or missing token gets HTTP 401 on the upgrade', async () => {
    for (const t of [undefined, 'not-a-jwt']) {
      await assert.rejects(Sock.open(t), (e: any) => {
        assert.equal(e.status, 401);
        assert.deepEqual(JSON.parse(e.body), { message: 'Unauthorized', statusCode: 401 });
        return true;
      });
    }
    const [a] = await users(1);
    await assert.rejects(Sock.open(a.accessToken.slice(0, -4) + 'AAAA', { header: true }), (e: any) => e.status === 401);
  });

  test('other upgrade paths are left untouched (not answered, not closed)', async () => {
    const port = Number(new URL(stack.url).port);
    const sock = tcpConnect(port, '127.0.0.1');
    let got = '';
    let closed = false;
    sock.on('data', (d) => (got += d));
    sock.on('close', () => (closed = true));
    await new Promise((r) => sock.once('connect', r));
    sock.write(
      'GET /calls/signalling?access_token=x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(got, '');
    assert.equal(closed, false);
    sock.destroy();
  });

  test('a chat member who has not joined the call is refused with 4403; unknown call 4404', async () => {
    const [a, b] = await users(2);
    const id = await startCall(await chat(a, b), a);
    const sb = await Sock.open(b.accessToken);
    sb.send({ type: 'join', callId: id });
    assert.deepEqual(await sb.next(), { type: 'error', message: 'You are not a participant of this call' });
    assert.deepEqual(await sb.closed, { code: 4403, reason: 'You are not a participant of this call' });

    const s2 = await Sock.open(b.accessToken);
    s2.send({ type: 'join', callId: UNKNOWN });
    assert.deepEqual(await s2.next(), { type: 'error', message: 'Call not found' });
    assert.equal((await s2.closed).code, 4404);
  });

  test('bad messages get an error without closing the socket', async () => {
    const [a, b] = await users(2);
    const id = await startCall(await chat(a, b), a);
    const s = await Sock.open(a.accessToken);
    const expectError = async (m: unknown, message: string) => {
      s.send(m);
      assert.deepEqual(await s.next(), { type: 'error', message });
    };
    await expectError('{not json', 'Malformed JSON');
    await expectError('[1,2]', 'A message must be a JSON object');
    await expectError({ callId: id }, 'type must be a string');
    await expectError({ type: 'offer', callId: id, to: b.id, payload: {} }, 'Join a call first');
    await expectError({ type: 'join', callId: 'x' }, 'callId must be a UUID');
    s.send({ type: 'join', callId: id });
    assert.equal((await s.next()).type, 'joined');
    await expectError({ type: 'dance', callId: id }, 'Unknown message type: dance');
    await expectError({ type: 'offer', callId: id, to: b.id, payload: {} }, 'Recipient is not in this call');
    await expectError({ type: 'offer', callId: id, to: a.id, payload: {} }, 'Cannot signal yourself');
    await expectError({ type: 'offer', callId: UNKNOWN, to: b.id, payload: {} }, 'callId does not match the joined call');
    await expectError({ type: 'offer', callId: id, to: 'bob', payload: {} }, 'to must be a user id');
    await expectError({ type: 'offer', callId: id, to: b.id }, 'payload is required');
    await expectError({ type: 'join', callId: id }, 'Already joined this call');
    assert.equal(s.ws.readyState, WebSocket.OPEN);
    // still works afterwards
    await post(`/calls/${id}/join`, b.accessToken);
    const sb = await Sock.joined(b, id);
    s.send({ type: 'offer', callId: id, to: b.id, payload: { sdp: 'x' } });
    assert.equal((await sb.next(ofType('offer'))).from, a.id);
    s.ws.close();
    sb.ws.close();
  });

  test('peer-joined and peer-left follow REST joins and leaves; leaving closes the leaver’s socket', async () => {
    const [a, b, c] = await users(3);
    const id = await startCall(await chat(a, b, c), a);
    await post(`/calls/${id}/join`, b.accessToken);
    const sa = await Sock.joined(a, id);
    const sb = await Sock.joined(b, id);

    const jc = await post(`/calls/${id}/join`, c.accessToken);
    const joinedAt = jc.body.participants.find((p: any) => p.userId === c.id).joinedAt;
    for (const s of [sa, sb]) assert.deepEqual(await s.next(), { type: 'peer-joined', callId: id, userId: c.id, joinedAt });
    // an idempotent re-join announces nothing
    await post(`/calls/${id}/join`, c.accessToken);
    await sa.none(ofType('peer-joined'));

    const sc = await Sock.joined(c, id);
    assert.equal((await post(`/calls/${id}/leave`, c.accessToken)).status, 200);
    for (const s of [sa, sb]) assert.deepEqual(await s.next(), { type: 'peer-left', callId: id, userId: c.id });
    assert.deepEqual(await sc.closed, { code: 4001, reason: 'Left the call' });
    sa.ws.close();
    sb.ws.close();
  });

  test('closing the socket makes the user leave: peers get peer-left, REST shows it', async () => {
    const [a, b] = await users(2);
    const id = await startCall(await chat(a, b), a);
    await post(`/calls/${id}/join`, b.accessToken);
    const sa = await Sock.joined(a, id);
    // b with two sockets: closing one keeps b in the call
    const sb1 = await Sock.joined(b, id);
    const sb2 = await Sock.joined(b, id);
    sb1.ws.close();
    await sb1.closed;
    await sa.none(ofType('peer-left'), 400);
    assert.equal(await redis.hget(`calls:${id}:conns`, b.id), '1');

    sb2.ws.terminate(); // an abrupt drop, no closing handshake
    assert.deepEqual(await sa.next(ofType('peer-left')), { type: 'peer-left', callId: id, userId: b.id });
    const r = await get(`/calls/${id}`, a.accessToken);
    assert.deepEqual(r.body.participants.map((p: any) => p.userId), [a.id]);
    assert.equal(await redis.hexists(`calls:${id}:conns`, b.id), 0);

    // the last socket of the last participant closing ends the call
    sa.ws.close();
    await waitFor(async () => (await get(`/calls/${id}`, a.accessToken)).body.status === 'ended', 'the call to end');
  });

  test('a dead socket (no pong) is dropped by the heartbeat and its user leaves', async () => {
    const [a, b] = await users(2);
    const id = await startCall(await chat(a, b), a);
    await post(`/calls/${id}/join`, b.accessToken);
    const sa = await Sock.joined(a, id);
    const dead = await Sock.open(b.accessToken, { autoPong: false });
    dead.send({ type: 'join', callId: id });
    assert.equal((await dead.next()).type, 'joined');
    // dropped after at most two heartbeat intervals; the healthy socket stays
    assert.deepEqual(await sa.next(ofType('peer-left'), HEARTBEAT_MS * 6), { type: 'peer-left', callId: id, userId: b.id });
    assert.equal((await dead.closed).code, 1006);
    await new Promise((r) => setTimeout(r, HEARTBEAT_MS * 3));
    assert.equal(sa.ws.readyState, WebSocket.OPEN);
    sa.ws.close();
  });

  test('ending the call tells every socket and closes it with 4000', async () => {
    const [a, b] = await users(2);
    const id = await startCall(await chat(a, b), a);
    await post(`/calls/${id}/join`, b.accessToken);
    const sa = await Sock.joined(a, id);
    const sb = await Sock.joined(b, id);
    assert.equal((await post(`/calls/${id}/end`, a.accessToken)).status, 200);
    for (const s of [sa, sb]) {
      assert.deepEqual(await s.next(ofType('call-ended')), { type: 'call-ended', callId: id });
      assert.deepEqual(await s.closed, { code: 4000, reason: 'Call ended' });
    }
    // a socket joining an ended call is refused with 4410
    const late = await Sock.open(b.accessToken);
    late.send({ type: 'join', callId: id });
    assert.deepEqual(await late.next(), { type: 'error', message: 'Call has ended' });
    assert.equal((await late.closed).code, 4410);
    assert.equal(await redis.exists(`calls:${id}:conns`), 0, 'no socket counter outlives the call');
  });
});

describe('two monolith processes', () => {
  test('signalling reaches a peer connected to another instance (Redis pub/sub fan-out)', async () => {
    const second = await startStack({ CALL_HEARTBEAT_MS: String(HEARTBEAT_MS) });
    try {
      const [a, b, c] = await users(3);
      const id = await startCall(await chat(a, b, c), a);
      await post(`/calls/${id}/join`, b.accessToken);
      const sa = await Sock.joined(a, id);
      const sb = await Sock.joined(b, id, second.url);
      sa.send({ type: 'offer', callId: id, to: b.id, payload: { sdp: 'cross' } });
      assert.deepEqual(await sb.next(), { type: 'offer', callId: id, from: a.id, to: b.id, payload: { sdp: 'cross' } });
      sb.send({ type: 'answer', callId: id, to: a.id, payload: { sdp: 'back' } });
      assert.deepEqual(await sa.next(), { type: 'answer', callId: id, from: b.id, to: a.id, payload: { sdp: 'back' } });
      // a REST join on the second instance is announced on the first
      const jc = await api(second.url, 'POST', `/calls/${id}/join`, { token: c.accessToken });
      assert.equal(jc.status, 200);
      assert.equal((await sa.next(ofType('peer-joined'))).userId, c.id);
      sb.ws.close();
      assert.deepEqual(await sa.next(ofType('peer-left')), { type: 'peer-left', callId: id, userId: b.id });
      sa.ws.close();
    } finally {
      await second.stop();
    }
  });
});

describe('server health', () => {
  test('no call request or socket ended in an unhandled server error', () => {
    const bad = stack
      .logs()
      .replace(/\x1b\[[0-9;]*m/g, '')
      .split('\n')
      .filter((l) => /ExceptionsHandler|SignalGateway|SignalBus/.test(l) && /ERROR/.test(l));
    assert.deepEqual(bad, []);
  });
});
