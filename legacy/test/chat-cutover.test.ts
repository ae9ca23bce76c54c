// The chat cut-over through the proxy: a canary that pins each user to one side by JWT `sub`,
// with two users on different sides talking over HTTP and subscriptions; then the service dies.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { api, CHAT_FIELDS, gql, newUser, TestUser, waitFor, withStack } from './harness';

const env = withStack(
  {},
  {
    chatService: true,
    chatRoute: `[[routes]]
name = "chat"
match = { path = "/graphql", graphql_fields = ${JSON.stringify(CHAT_FIELDS)} }
target = "chat"
mode = "canary"
percent = 50
sticky = "jwt_sub"
breaker = { failures = 3, cooldown_secs = 2 }
# no shadow copies of the monolith's share: they would reach the service too, and the test
# counts the service's requests to see where each user was routed
shadow = { sample_percent = 0 }
`,
  },
);

/** The proxy's canary bucket of a sticky key (proxy/src/routing/canary.rs: FNV-1a, murmur3 fmix64). */
function bucket(key: string): number {
  const mask = (1n << 64n) - 1n;
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(key)) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & mask;
  }
  h ^= h >> 33n;
  h = (h * 0xff51afd7ed558ccdn) & mask;
  h ^= h >> 33n;
  h = (h * 0xc4ceb9fe1a85ec53n) & mask;
  h ^= h >> 33n;
  return Number(h % 10000n);
}
const onService = (u: TestUser) => bucket(`sub:${u.id}`) < 50 * 100;

/** A user pinned to the wanted side (new users until one lands there). */
async function userOn(service: boolean, name: string): Promise<TestUser> {
  for (;;) {
    const u = await newUser(env.stack.url, name);
    if (onService(u) === service) return u;
  }
}

/** Requests the chat service has answered on /graphql (its own metric). */
async function serviceHits(): Promise<number> {
  const text = (await api(env.stack.chatUrl!, 'GET', '/metrics')).text;
  return text
    .split('\n')
    .filter((l) => l.startsWith('http_requests_total{') && l.includes('route="/graphql"'))
    .reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
}

const SEND = 'mutation($i: SendMessageInput!) { sendMessage(input: $i) { id body sender { id } } }';

function subscribe(user: TestUser, chatId: string) {
  const got: any[] = [];
  const client = createClient({
    url: env.stack.url.replace(/^http/, 'ws') + '/graphql',
    // a mobile client sends its token on the upgrade too: the canary pins the socket by user
    webSocketImpl: class extends WebSocket {
      constructor(url: string, protocols: string | string[]) {
        super(url, protocols, { headers: { authorization: `Bearer ${user.accessToken}` } });
      }
    },
    connectionParams: { authorization: `Bearer ${user.accessToken}` },
    retryAttempts: 0,
  });
  client.subscribe(
    { query: 'subscription($c: ID!) { messageAdded(chatId: $c) { id body sender { id } } }', variables: { c: chatId } },
    { next: (v) => got.push(v), error: (e) => got.push({ error: e }), complete: () => undefined },
  );
  return { got, client };
}

describe('canary by user', () => {
  test('one user on each side exchange messages over HTTP and subscriptions: nothing missed, doubled or reordered', async () => {
    const svcUser = await userOn(true, 'Sam');
    const legacyUser = await userOn(false, 'Lee');
    // pinned: the service sees the first user's requests and not the second's
    let before = await serviceHits();
    const chat = await gql(env.stack.url, 'mutation($i: CreateChatInput!) { createChat(input: $i) { id } }', { i: { memberIds: [legacyUser.id] } }, svcUser.accessToken);
    assert.equal(chat.status, 200, chat.text);
    const chatId = chat.body.data.createChat.id;
    assert.equal(await serviceHits(), before + 1, "the service user's request went to the service");
    before = await serviceHits();
    assert.equal((await gql(env.stack.url, '{ chats { id } }', {}, legacyUser.accessToken)).body.data.chats[0].id, chatId);
    assert.equal(await serviceHits(), before, "the monolith user's request went to the monolith");

    const subs = [subscribe(svcUser, chatId), subscribe(legacyUser, chatId)];
    try {
      let n = 0;
      await waitFor(async () => {
        await gql(env.stack.url, SEND, { i: { chatId, body: 'probe', clientMessageId: `probe-${n++}` } }, svcUser.accessToken);
        return subs.every((s) => s.got.length > 0);
      }, 'both subscriptions');
      // and the sockets too: one on the service (the service user's), the other on the monolith
      const metrics = (await api(env.stack.chatUrl!, 'GET', '/metrics')).text;
      assert.match(metrics, /^chat_websockets_open 1$/m, 'exactly one socket on the service');
      const sent: string[] = [];
      for (let i = 0; i < 30; i++) {
        const from = i % 3 === 0 ? legacyUser : svcUser;
        const r = await gql(env.stack.url, SEND, { i: { chatId, body: `m${i}`, clientMessageId: `m-${i}` } }, from.accessToken);
        assert.equal(r.status, 200, r.text);
        sent.push(r.body.data.sendMessage.id);
        // a retry after a lost answer: the same message, not a second one
        if (i % 10 === 5) {
          const again = await gql(env.stack.url, SEND, { i: { chatId, body: `m${i}`, clientMessageId: `m-${i}` } }, from.accessToken);
          assert.equal(again.body.data.sendMessage.id, r.body.data.sendMessage.id);
        }
      }
      const end = await gql(env.stack.url, SEND, { i: { chatId, body: 'end', clientMessageId: 'end' } }, legacyUser.accessToken);
      const endId = end.body.data.sendMessage.id;
      for (const [who, s] of [['service user', subs[0]], ['monolith user', subs[1]]] as const) {
        await waitFor(async () => s.got.some((m) => m.data?.messageAdded?.id === endId), `the last message on the ${who}'s socket`);
        assert.ok(!s.got.some((m) => m.error), `${who}: no subscription error`);
        const ids = s.got.map((m) => m.data.messageAdded.id).filter((id: string) => sent.includes(id));
        assert.deepEqual(ids, sent, `${who}: all 30 once each in send order`);
      }
      // both read the same history, newest first
      const page = async (u: TestUser) =>
        (await gql(env.stack.url, 'query($c: ID!) { messages(chatId: $c, first: 31) { edges { node { id } } } }', { c: chatId }, u.accessToken)).body.data.messages.edges.map(
          (e: any) => e.node.id,
        );
      const [a, b] = [await page(svcUser), await page(legacyUser)];
      assert.deepEqual(a, b);
      assert.deepEqual(a.slice(1, 31).reverse(), sent);
    } finally {
      await Promise.all(subs.map((s) => s.client.dispose()));
    }
  });
});

describe('isolation: the chat service dies', () => {
  test('queries fall back to the monolith, mutations get a GraphQL error, the rest of the API is untouched', async () => {
    const u = await userOn(true, 'Survivor');
    const peer = await newUser(env.stack.url, 'Peer');
    const created = await gql(env.stack.url, 'mutation($i: CreateChatInput!) { createChat(input: $i) { id } }', { i: { memberIds: [peer.id] } }, u.accessToken);
    const chatId = created.body.data.createChat.id;
    await env.stack.killChat!();

    const q = await gql(env.stack.url, '{ chats { id } }', {}, u.accessToken);
    assert.equal(q.status, 200, q.text);
    assert.deepEqual(q.body, { data: { chats: [{ id: chatId }] } }, 'the query was answered by the monolith');

    const m = await gql(env.stack.url, SEND, { i: { chatId, body: 'while down', clientMessageId: 'down-1' } }, u.accessToken);
    assert.ok([502, 503].includes(m.status), m.text);
    assert.equal(m.body.data, null);
    assert.match(m.body.errors[0].extensions.code, /^(BAD_GATEWAY|SERVICE_UNAVAILABLE)$/);
    const rows = await env.db.query(`SELECT count(*)::int AS n FROM legacy.messages WHERE client_message_id = 'down-1'`);
    assert.equal(rows.rows[0].n, 0, 'the mutation was not sent to the monolith instead');

    // a subscription upgrade is idempotent: the monolith takes it
    const s = subscribe(u, chatId);
    try {
      let n = 0;
      await waitFor(async () => {
        await gql(env.stack.legacyUrl, SEND, { i: { chatId, body: 'via monolith', clientMessageId: `via-${n++}` } }, peer.accessToken);
        return s.got.some((x) => x.data?.messageAdded);
      }, 'a message on the fallback subscription');
    } finally {
      await s.client.dispose();
    }

    for (const [method, path] of [
      ['GET', '/auth/me'],
      ['GET', '/users/me'],
      ['GET', '/notifications'],
      ['GET', '/notifications/unread-count'],
      ['GET', '/calls'],
      ['GET', '/payments/plans'],
      ['GET', '/payments/subscription'],
    ] as const) {
      const r = await api(env.stack.url, method, path, { token: u.accessToken });
      assert.ok(r.status < 500, `${method} ${path}: ${r.status} ${r.text}`);
    }
    const login = await api(env.stack.url, 'POST', '/auth/login', { body: { email: u.email, password: u.password } });
    assert.equal(login.status, 200, login.text);
  });
});
