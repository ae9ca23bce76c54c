// The push job's cut-over, end to end with the real monolith, broker, notification service and
// FCM fake: first in shadow (the monolith pushes in-process, the job compares: 100% parity in
// `strangler report`), then the switch to the job and its rollback while messages keep coming,
// each one command (`bm-notification pushes --owner …`): no push doubled, none skipped.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from 'pg';
import { api, gql, newUser, REPO_DIR, Stack, startBroker, startNotificationService, startStack, TestUser, waitFor } from './harness';

// a private broker first, then the monolith relaying its outbox to it
const broker = { brokers: '', stop: async () => {} };
const env = {} as { stack: Stack; db: Client };
before(async () => {
  Object.assign(broker, await startBroker());
  env.stack = await startStack({ KAFKA_BROKERS: broker.brokers }, { authService: false, chatService: false });
  env.db = new Client({ connectionString: process.env.DATABASE_URL });
  await env.db.connect();
});
after(async () => {
  await env.db?.end();
  await env.stack?.stop();
  await broker.stop();
});

const SEND = `mutation($i: SendMessageInput!) { sendMessage(input: $i) { id } }`;
const CREATE = `mutation($i: CreateChatInput!) { createChat(input: $i) { id } }`;

function pushes(owner?: string): string {
  const args = ['pushes', ...(owner ? ['--owner', owner] : [])];
  return execFileSync(join(REPO_DIR, 'target', 'debug', 'bm-notification'), args, {
    env: { PATH: process.env.PATH, DATABASE_URL: process.env.DATABASE_URL },
    encoding: 'utf8',
  });
}

async function received(fakes: string): Promise<{ messageId: string; token: string; title: string; body: string }[]> {
  const list = (await (await fetch(`${fakes}/_fake/fcm/messages`)).json()).items;
  return list.map((m: any) => ({ messageId: m.message.data.messageId, token: m.message.token, title: m.message.notification.title, body: m.message.notification.body }));
}

describe('pushes move from the monolith to the notification push job', () => {
  let job: Awaited<ReturnType<typeof startNotificationService>>;
  let a: TestUser, b: TestUser, c: TestUser;
  let chatId: string;
  const tokens: string[] = [];
  const since = new Date().toISOString();

  before(async () => {
    pushes('monolith');
    job = await startNotificationService({
      DATABASE_URL: process.env.DATABASE_URL!,
      KAFKA_BROKERS: broker.brokers,
      FCM_BASE_URL: env.stack.fakes,
      PUSH_GROUP: `push-cutover-${randomUUID()}`,
      PUSH_SHADOW_WAIT_MS: '5000',
    });
    const base = env.stack.url;
    [a, b, c] = await Promise.all([newUser(base, 'Ann'), newUser(base, 'Ben'), newUser(base, 'Cy')]);
    for (const [u, t] of [
      [b, `ben-phone-${randomUUID()}`],
      [b, `ben-tablet-${randomUUID()}`],
      [c, `cy-phone-${randomUUID()}`],
    ] as const) {
      const r = await api(base, 'POST', '/notifications/devices', { body: { token: t, platform: 'android' }, token: u.accessToken });
      assert.equal(r.status, 201, r.text);
      tokens.push(t);
    }
    const r = await gql(base, CREATE, { i: { memberIds: [b.id, c.id], title: 'Ops' } }, a.accessToken);
    chatId = r.body.data.createChat.id;
  });

  after(async () => {
    pushes('monolith');
    await job?.stop();
  });

  const send = async (body: string) => {
    const r = await gql(env.stack.url, SEND, { i: { chatId, body, clientMessageId: randomUUID() } }, a.accessToken);
    assert.equal(r.body.errors, undefined, r.text);
    return r.body.data.sendMessage.id as string;
  };

  const ours = async () => (await received(env.stack.fakes)).filter((p) => tokens.includes(p.token));

  test('in shadow the job pushes nothing and agrees with every push the monolith sent', async () => {
    assert.match(pushes(), /sent by: monolith/);
    assert.equal(env.stack.env.KAFKA_BROKERS, broker.brokers, 'the monolith relays to the private broker');
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(await send(`shadow ${i} ${'x'.repeat(i * 15)}`));
    // every comparison stored (route notification-push in the shadow store)
    const compared = async () => {
      const r = await env.db.query(
        `SELECT record->'request_body'->>'messageId' AS m, outcome FROM strangler.shadow_comparisons WHERE route = 'notification-push' AND record->'request_body'->>'messageId' = ANY($1)`,
        [ids],
      );
      return r.rows.length === ids.length && r.rows;
    };
    const rows = await waitFor(compared, 'the push shadow comparisons', 30_000).catch((e) => {
      throw new Error(`${e.message}\n--- monolith ---\n${env.stack.logs().slice(-3000)}\n--- notification ---\n${job.output().slice(-3000)}`);
    });
    assert.deepEqual(
      rows.map((r: any) => r.outcome),
      ids.map(() => 'match'),
    );
    // the monolith pushed each once per device; the job sent nothing of its own
    const got = await ours();
    assert.equal(got.length, ids.length * 3);
    const jobPushes = await env.db.query('SELECT count(*)::int AS n FROM notification.pushes WHERE message_id = ANY($1)', [ids]);
    assert.equal(jobPushes.rows[0].n, 0);
    // the parity report, in strangler report's formats
    const out = execFileSync(join(REPO_DIR, 'target', 'debug', 'strangler'), ['report', '--database-url-env', 'DATABASE_URL', '--since', since, '--format', 'json'], {
      env: { PATH: process.env.PATH, DATABASE_URL: process.env.DATABASE_URL },
      encoding: 'utf8',
    });
    const report = JSON.parse(out);
    const route = report.routes?.['notification-push'] ?? report.routes?.find?.((r: any) => r.route === 'notification-push');
    assert.ok(route, out);
    assert.equal(route.mismatches ?? route.mismatch ?? 0, 0, out);
  });

  test('the switch and its rollback, while messages keep coming: every push exactly once', async () => {
    const before = (await ours()).length;
    const ids: string[] = [];
    for (let i = 0; i < 45; i++) {
      ids.push(await send(`switch ${i}`));
      if (i === 14) assert.match(pushes('notification'), /monolith → notification/);
      if (i === 29) assert.match(pushes('monolith'), /notification → monolith/);
    }
    // the job pushed the middle third (it wrote its own rows), the monolith the rest
    const expected = ids.length * tokens.length;
    await waitFor(async () => (await ours()).length - before >= expected, 'every push', 30_000);
    await waitFor(
      async () => {
        const done = await env.db.query(`SELECT count(*)::int AS n FROM notification.pushes WHERE message_id = ANY($1) AND status = 'sent'`, [ids]);
        const shadowed = await env.db.query(
          `SELECT count(*)::int AS n FROM strangler.shadow_comparisons WHERE route = 'notification-push' AND record->'request_body'->>'messageId' = ANY($1)`,
          [ids],
        );
        return done.rows[0].n + shadowed.rows[0].n * tokens.length >= expected;
      },
      'the job to have handled every event',
      30_000,
    );
    const got = (await ours()).filter((p) => ids.includes(p.messageId));
    const count = new Map<string, number>();
    for (const p of got) count.set(`${p.messageId} ${p.token}`, (count.get(`${p.messageId} ${p.token}`) ?? 0) + 1);
    for (const id of ids) for (const t of tokens) assert.equal(count.get(`${id} ${t}`), 1, `message ${id} to ${t}`);
    const byJob = await env.db.query(`SELECT DISTINCT message_id::text AS m FROM notification.pushes WHERE message_id = ANY($1)`, [ids]);
    assert.ok(byJob.rows.length > 0 && byJob.rows.length < ids.length, `the job pushed some, not all: ${byJob.rows.length}`);
    // what the job sent says what the monolith's said: same title and body shape
    const sample = got.find((p) => byJob.rows.some((r: any) => r.m === p.messageId))!;
    assert.equal(sample.title, 'Ops');
    assert.match(sample.body, /^Ann: switch \d+$/);
  });
});
