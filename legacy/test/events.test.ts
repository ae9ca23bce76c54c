// message.sent through the transactional outbox (docs/events.md), from both sides: the monolith
// writes the event in the message's transaction and its kafkajs relay publishes it; the chat
// service does the same with its own relay. Real Postgres, real broker ($KAFKA_BROKERS).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Consumer, Kafka, logLevel, Partitioners } from 'kafkajs';
import { gql, newUser, REPO_DIR, TestUser, waitFor, withStack } from './harness';

const brokers = () => {
  const b = process.env.KAFKA_BROKERS;
  if (!b) throw new Error('KAFKA_BROKERS is not set: run the tests with scripts/test, or `scripts/stack up && source .run/stack.env` first');
  return b.split(',');
};

const SCHEMA = JSON.parse(readFileSync(join(REPO_DIR, 'docs', 'events', 'message.sent.v1.json'), 'utf8'));
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The problems of `v` against the JSON Schema subset the event schemas use. */
function problems(schema: any, v: any, at = '$'): string[] {
  const out: string[] = [];
  const typeOf = (x: any) => (x === null ? 'null' : Array.isArray(x) ? 'array' : Number.isInteger(x) ? 'integer' : typeof x);
  if ('const' in schema && v !== schema.const) out.push(`${at}: ${JSON.stringify(v)} is not ${JSON.stringify(schema.const)}`);
  if (schema.enum && !schema.enum.includes(v)) out.push(`${at}: ${JSON.stringify(v)} is not one of ${schema.enum}`);
  if (schema.type) {
    const types = [schema.type].flat();
    const t = typeOf(v);
    if (!types.includes(t) && !(t === 'integer' && types.includes('number'))) out.push(`${at}: ${t} is not ${types.join('|')}`);
  }
  if (typeof v === 'string') {
    if (schema.minLength !== undefined && v.length < schema.minLength) out.push(`${at}: shorter than ${schema.minLength}`);
    if (schema.pattern && !new RegExp(schema.pattern).test(v)) out.push(`${at}: does not match ${schema.pattern}`);
    if (schema.format === 'uuid' && !UUID.test(v)) out.push(`${at}: not a uuid`);
    if (schema.format === 'date-time' && Number.isNaN(Date.parse(v))) out.push(`${at}: not a date-time`);
  }
  if (Array.isArray(v) && schema.items) {
    v.forEach((x, i) => out.push(...problems(schema.items, x, `${at}[${i}]`)));
    if (schema.uniqueItems && new Set(v.map((x) => JSON.stringify(x))).size !== v.length) out.push(`${at}: items repeat`);
  }
  if (typeOf(v) === 'object') {
    for (const k of schema.required ?? []) if (!(k in v)) out.push(`${at}.${k}: required`);
    for (const [k, x] of Object.entries(v)) {
      if (schema.properties?.[k]) out.push(...problems(schema.properties[k], x, `${at}.${k}`));
      else if (schema.additionalProperties === false) out.push(`${at}.${k}: not in the schema`);
    }
  }
  return out;
}

test('the schema check can fail', () => {
  assert.ok(problems(SCHEMA, { type: 'message.sent' }).length > 5);
  assert.ok(problems(SCHEMA, { extra: 1 }).some((p) => p.includes('not in the schema')));
});

interface Seen {
  key: string;
  partition: number;
  headers: Record<string, string>;
  event: any;
}

/** Everything on message.sent from the beginning, read by a group of its own. */
function readTopic() {
  const seen = new Map<string, Seen>();
  let consumer: Consumer;
  before(async () => {
    const kafka = new Kafka({ clientId: 'events-test', brokers: brokers(), logLevel: logLevel.ERROR });
    consumer = kafka.consumer({ groupId: `events-test-${randomUUID()}`, maxWaitTimeInMs: 50 });
    await consumer.connect();
    await consumer.subscribe({ topic: 'message.sent', fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message, partition }) => {
        const event = JSON.parse(message.value!.toString());
        const headers = Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]));
        seen.set(event.id, { key: message.key!.toString(), partition, headers, event });
      },
    });
  });
  after(async () => {
    await consumer?.disconnect();
  });
  return seen;
}

const CREATE = `mutation($i: CreateChatInput!) { createChat(input: $i) { id } }`;
const SEND = `mutation($i: SendMessageInput!) { sendMessage(input: $i) { id } }`;

async function ok(base: string, u: TestUser, query: string, variables: Record<string, unknown>) {
  const r = await gql(base, query, variables, u.accessToken);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.errors, undefined, r.text);
  return r.body.data;
}

/** Sends `n` messages in a new group chat of three and checks the outbox rows and the topic. */
async function sendAndCheck(env: { stack: any; db: any }, seen: Map<string, Seen>, producer: 'monolith' | 'chat') {
  const base = env.stack.url;
  const [a, b, c] = await Promise.all([newUser(base, 'Ann'), newUser(base, 'Ben'), newUser(base, 'Cy')]);
  const chat = (await ok(base, a, CREATE, { i: { memberIds: [b.id, c.id], title: 'Ops' } })).createChat;
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    const clientMessageId = randomUUID();
    const m = (await ok(base, a, SEND, { i: { chatId: chat.id, body: `hello ${i}`, clientMessageId } })).sendMessage;
    ids.push(m.id);
    if (i === 0) {
      // an idempotent repeat writes no event
      assert.equal((await ok(base, a, SEND, { i: { chatId: chat.id, body: 'hello 0', clientMessageId } })).sendMessage.id, m.id);
    }
  }
  const rows = await env.db.query(`SELECT id, topic, key, type, version, payload FROM legacy.outbox WHERE key = $1 ORDER BY seq`, [chat.id]);
  assert.equal(rows.rows.length, 5, 'one event per message, none for the repeat');
  const events = rows.rows.map((r: any) => {
    const e = JSON.parse(r.payload);
    assert.deepEqual(problems(SCHEMA, e), [], r.payload);
    assert.equal(r.id, e.id);
    assert.equal(r.topic, 'message.sent');
    return e;
  });
  assert.deepEqual(
    events.map((e: any) => e.messageId),
    ids,
    'in send order',
  );
  for (const [i, e] of events.entries()) {
    assert.equal(e.producer, producer);
    assert.equal(e.chatId, chat.id);
    assert.equal(e.senderId, a.id);
    assert.equal(e.senderName, 'Ann');
    assert.equal(e.chatTitle, 'Ops');
    assert.equal(e.body, `hello ${i}`);
    assert.deepEqual([...e.recipients].sort(), [b.id, c.id].sort());
    assert.equal(e.pushedInProcess, true, 'legacy.push_owner is monolith: the producer pushed it itself');
  }
  // published by a relay: on the topic, keyed by chat, with the headers, in order
  await waitFor(async () => events.every((e: any) => seen.has(e.id)), 'the events on message.sent', 20_000);
  // the partition Java's and kafkajs's partitioner (murmur2) give the key, whichever relay published
  const partitionMetadata = [0, 1, 2, 3].map((p) => ({ partitionId: p, leader: 0, partitionErrorCode: 0, replicas: [0], isr: [0] }));
  const partition = Partitioners.DefaultPartitioner()({ topic: 'message.sent', partitionMetadata, message: { key: chat.id, value: null } });
  for (const e of events) {
    const s = seen.get(e.id)!;
    assert.equal(s.key, chat.id);
    assert.equal(s.partition, partition, 'the murmur2 partition of the chat id');
    assert.deepEqual(s.headers, { 'event-id': e.id, 'event-type': 'message.sent', 'event-version': '1' });
    assert.deepEqual(s.event, e);
  }
  const published = await env.db.query('SELECT count(*)::int AS n FROM legacy.outbox WHERE key = $1 AND published_at IS NOT NULL', [chat.id]);
  assert.equal(published.rows[0].n, 5, 'marked published');
}

describe('the monolith', () => {
  const env = withStack({ KAFKA_BROKERS: brokers().join(',') }, { authService: false, chatService: false });
  const seen = readTopic();
  test('writes message.sent in the message transaction and its relay publishes it', async () => {
    await sendAndCheck(env, seen, 'monolith');
  });
});

describe('the chat service', () => {
  // only the service has a broker: its relay must publish
  const env = withStack({ CHAT_KAFKA_BROKERS: brokers().join(',') }, { authService: false, chatService: true });
  const seen = readTopic();
  test('writes the same message.sent and its relay publishes it', async () => {
    await sendAndCheck(env, seen, 'chat');
  });
});
