// Payments against the real monolith, Postgres and the Stripe fake (which signs and delivers its
// webhooks to the monolith's /payments/webhook with STRIPE_WEBHOOK_SECRET).
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { api, newUser, Stack, startStack, withStack, STRIPE_WEBHOOK_SECRET, TestUser, waitFor } from './harness';

// the monolith + fakes for this file, and a Postgres client to check what it stored
const env = withStack();

const DAY = 86_400_000;
const stripeGet = (path: string) => api(env.stack.fakes, 'GET', path, { headers: { authorization: 'Bearer sk_test_reader' } });
const sql = async (q: string, params: unknown[] = []) => (await env.db.query(q, params)).rows;

async function checkout(u: TestUser, planId = 'pro-monthly') {
  return api(env.stack.url, 'POST', '/payments/checkout', { body: { planId }, token: u.accessToken });
}

/** Checkout + paying the session at the fake; returns the fake's events and deliveries. */
async function subscribe(u: TestUser, planId = 'pro-monthly') {
  const co = await checkout(u, planId);
  assert.equal(co.status, 201, co.text);
  const done = await api(env.stack.fakes, 'POST', `/_fake/stripe/checkout/sessions/${co.body.sessionId}/complete`);
  assert.equal(done.status, 200, done.text);
  return { sessionId: co.body.sessionId as string, events: done.body.events as any[], deliveries: done.body.deliveries as any[] };
}

const subscriptionOf = (u: TestUser) => api(env.stack.url, 'GET', '/payments/subscription', { token: u.accessToken });

// --- webhooks built by hand -------------------------------------------------------------------

const now = () => Math.floor(Date.now() / 1000);
const sign = (payload: string, secret = STRIPE_WEBHOOK_SECRET, t = now()) =>
  `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${payload}`).digest('hex')}`;
const sendWebhook = (payload: string, signature?: string) =>
  api(env.stack.url, 'POST', '/payments/webhook', {
    body: payload,
    headers: { 'content-type': 'application/json', ...(signature !== undefined ? { 'stripe-signature': signature } : {}) },
  });

function subscriptionEvent(type: string, userId: string, sub: Partial<Record<string, unknown>> = {}) {
  const id = (sub.id as string) ?? `sub_hand_${randomBytes(6).toString('hex')}`;
  return {
    id: `evt_hand_${randomBytes(8).toString('hex')}`,
    object: 'event',
    type,
    created: now(),
    data: {
      object: {
        id,
        object: 'subscription',
        customer: `cus_hand_${randomBytes(4).toString('hex')}`,
        status: 'active',
        cancel_at_period_end: false,
        current_period_end: now() + 30 * 86_400,
        items: { object: 'list', data: [{ id: 'si_x', price: { id: 'price_pro_yearly', object: 'price' } }] },
        metadata: { user_id: userId },
        ...sub,
      },
    },
  };
}

describe('plans', () => {
  test('GET /payments/plans is public and lists the seeded plans', async () => {
    const r = await api(env.stack.url, 'GET', '/payments/plans');
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, [
      { id: 'pro-monthly', name: 'Pro (monthly)', amountCents: 499, currency: 'usd', interval: 'month' },
      { id: 'pro-yearly', name: 'Pro (yearly)', amountCents: 4990, currency: 'usd', interval: 'year' },
    ]);
  });
});

describe('checkout', () => {
  test('authentication is required (401)', async () => {
    for (const [m, p] of [
      ['POST', '/payments/checkout'],
      ['GET', '/payments/subscription'],
      ['POST', '/payments/subscription/cancel'],
    ]) {
      const r = await api(env.stack.url, m, p, { body: m === 'POST' ? { planId: 'pro-monthly' } : undefined });
      assert.equal(r.status, 401, `${m} ${p}`);
      assert.deepEqual(r.body, { statusCode: 401, message: 'Unauthorized' });
    }
    const bad = await api(env.stack.url, 'POST', '/payments/checkout', { body: { planId: 'pro-monthly' }, token: 'not-a-jwt' });
    assert.equal(bad.status, 401);
  });

  test('validation errors are 400', async () => {
    const u = await newUser(env.stack.url, 'Val');
    const r = await api(env.stack.url, 'POST', '/payments/checkout', { body: { extra: 1 }, token: u.accessToken });
    assert.equal(r.status, 400);
    assert.equal(r.body.error, 'Bad Request');
    assert.ok(r.body.message.includes('planId must be a string'), r.text);
    assert.ok(r.body.message.includes('property extra should not exist'), r.text);
    const num = await api(env.stack.url, 'POST', '/payments/checkout', { body: { planId: 7 }, token: u.accessToken });
    assert.equal(num.status, 400);
    const empty = await api(env.stack.url, 'POST', '/payments/checkout', { body: { planId: '' }, token: u.accessToken });
    assert.equal(empty.status, 400);
    assert.ok(empty.body.message.includes('planId should not be empty'), empty.text);
  });

  test('an unknown plan is 404 and nothing is created at Stripe', async () => {
    const u = await newUser(env.stack.url, 'NoPlan');
    const r = await checkout(u, 'gold-forever');
    assert.equal(r.status, 404);
    assert.deepEqual(r.body, { statusCode: 404, message: 'Plan not found', error: 'Not Found' });
    assert.equal((await sql('SELECT 1 FROM legacy.stripe_customers WHERE user_id = $1', [u.id])).length, 0);
  });

  test('creates the session at Stripe with the customer, price and metadata; the customer only once', async () => {
    const u = await newUser(env.stack.url, 'Buyer');
    const a = await checkout(u, 'pro-monthly');
    assert.equal(a.status, 201, a.text);
    assert.deepEqual(Object.keys(a.body).sort(), ['sessionId', 'url']);
    assert.match(a.body.sessionId, /^cs_test_/);
    assert.ok(a.body.url.endsWith(`/_fake/stripe/pay/${a.body.sessionId}`), a.body.url);

    const session = (await stripeGet(`/v1/checkout/sessions/${a.body.sessionId}`)).body;
    assert.equal(session.mode, 'subscription');
    assert.equal(session.client_reference_id, u.id);
    assert.deepEqual(session.metadata, { user_id: u.id, plan_id: 'pro-monthly' });
    assert.equal(session.status, 'open');
    assert.match(session.success_url, /\/payments\/success$/);
    assert.match(session.cancel_url, /\/payments\/cancel$/);

    const rows = await sql('SELECT customer_id FROM legacy.stripe_customers WHERE user_id = $1', [u.id]);
    assert.equal(rows.length, 1);
    assert.equal(session.customer, rows[0].customer_id);
    const customer = (await stripeGet(`/v1/customers/${session.customer}`)).body;
    assert.equal(customer.email, u.email);
    assert.deepEqual(customer.metadata, { user_id: u.id });

    // a second checkout (nothing paid yet) reuses the customer
    const b = await checkout(u, 'pro-yearly');
    assert.equal(b.status, 201);
    assert.notEqual(b.body.sessionId, a.body.sessionId);
    const session2 = (await stripeGet(`/v1/checkout/sessions/${b.body.sessionId}`)).body;
    assert.equal(session2.customer, session.customer);
    assert.deepEqual(session2.metadata, { user_id: u.id, plan_id: 'pro-yearly' });
    assert.equal((await sql('SELECT 1 FROM legacy.stripe_customers WHERE user_id = $1', [u.id])).length, 1);
  });
});

describe('subscription lifecycle through the fake', () => {
  test('none before checkout; cancel without one is 404', async () => {
    const u = await newUser(env.stack.url, 'Nobody');
    const r = await subscriptionOf(u);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { status: 'none', planId: null, currentPeriodEnd: null, cancelAtPeriodEnd: false });
    const c = await api(env.stack.url, 'POST', '/payments/subscription/cancel', { token: u.accessToken });
    assert.equal(c.status, 404);
    assert.deepEqual(c.body, { statusCode: 404, message: 'No active subscription', error: 'Not Found' });
  });

  test('paying the session activates the subscription via signed webhooks; redelivery is a no-op; cancel', async () => {
    const u = await newUser(env.stack.url, 'Subscriber');
    const { sessionId, events, deliveries } = await subscribe(u, 'pro-yearly');
    assert.deepEqual(
      events.map((e) => e.type),
      ['checkout.session.completed', 'customer.subscription.created'],
    );
    assert.deepEqual(
      deliveries.map((d) => d.status),
      [200, 200],
      'the monolith accepted both signed deliveries',
    );
    const subId: string = events[1].data.object.id;

    const view = await waitFor(async () => {
      const r = await subscriptionOf(u);
      return r.body.status === 'active' && r.body.currentPeriodEnd ? r.body : undefined;
    }, 'the subscription to become active');
    assert.equal(view.planId, 'pro-yearly');
    assert.equal(view.cancelAtPeriodEnd, false);
    const end = Date.parse(view.currentPeriodEnd);
    assert.ok(Math.abs(end - (Date.now() + 30 * DAY)) < 60_000, view.currentPeriodEnd);
    assert.equal(new Date(events[1].data.object.current_period_end * 1000).toISOString(), view.currentPeriodEnd);

    const rows = await sql('SELECT stripe_subscription_id, plan_id, status FROM legacy.subscriptions WHERE user_id = $1', [u.id]);
    assert.deepEqual(rows, [{ stripe_subscription_id: subId, plan_id: 'pro-yearly', status: 'active' }]);
    const recorded = await sql('SELECT id, type FROM legacy.stripe_events WHERE id = ANY($1) ORDER BY received_at', [events.map((e) => e.id)]);
    assert.equal(recorded.length, 2);
    const session = (await stripeGet(`/v1/checkout/sessions/${sessionId}`)).body;
    assert.equal(session.status, 'complete');

    // a second checkout while subscribed is refused before anything reaches Stripe
    const again = await checkout(u, 'pro-monthly');
    assert.equal(again.status, 409);
    assert.deepEqual(again.body, { statusCode: 409, message: 'You already have an active subscription', error: 'Conflict' });

    // Redelivery: change the row behind the webhook's back, resend the created event; an event
    // that was processed once must not be applied again.
    await env.db.query(`UPDATE legacy.subscriptions SET cancel_at_period_end = true WHERE stripe_subscription_id = $1`, [subId]);
    for (const e of events) {
      const re = await api(env.stack.fakes, 'POST', `/_fake/stripe/events/${e.id}/resend`);
      assert.equal(re.status, 200);
      assert.equal(re.body.status, 200, 'a redelivered event is acknowledged with 200');
    }
    const after = await sql('SELECT status, cancel_at_period_end FROM legacy.subscriptions WHERE user_id = $1', [u.id]);
    assert.deepEqual(after, [{ status: 'active', cancel_at_period_end: true }], 'still one row, untouched by the redelivery');
    const counted = await sql('SELECT id, count(*)::int AS n FROM legacy.stripe_events WHERE id = ANY($1) GROUP BY id', [events.map((e) => e.id)]);
    assert.deepEqual(counted.map((r) => r.n), [1, 1]);
    await env.db.query(`UPDATE legacy.subscriptions SET cancel_at_period_end = false WHERE stripe_subscription_id = $1`, [subId]);

    // cancel: Stripe cancels, its customer.subscription.deleted webhook and our answer agree
    const cancel = await api(env.stack.url, 'POST', '/payments/subscription/cancel', { token: u.accessToken });
    assert.equal(cancel.status, 200, cancel.text);
    assert.equal(cancel.body.status, 'canceled');
    assert.equal(cancel.body.planId, 'pro-yearly');
    assert.equal(cancel.body.currentPeriodEnd, view.currentPeriodEnd);
    assert.equal((await stripeGet(`/v1/subscriptions/${subId}`)).body.status, 'canceled');
    const fakeEvents = (await api(env.stack.fakes, 'GET', '/_fake/stripe/events')).body;
    const deleted = fakeEvents.events.find((e: any) => e.type === 'customer.subscription.deleted' && e.data.object.id === subId);
    assert.ok(deleted, 'the fake emitted customer.subscription.deleted');
    assert.deepEqual(
      fakeEvents.deliveries.filter((d: any) => d.event === deleted.id).map((d: any) => d.status),
      [200],
    );
    assert.equal((await sql('SELECT 1 FROM legacy.stripe_events WHERE id = $1', [deleted.id])).length, 1);
    assert.equal((await subscriptionOf(u)).body.status, 'canceled');
    assert.equal((await api(env.stack.url, 'POST', '/payments/subscription/cancel', { token: u.accessToken })).status, 404);

    // once canceled, a late redelivery of the created event changes nothing, and a new checkout is allowed
    await api(env.stack.fakes, 'POST', `/_fake/stripe/events/${events[1].id}/resend`);
    assert.equal((await subscriptionOf(u)).body.status, 'canceled');
    const next = await checkout(u, 'pro-monthly');
    assert.equal(next.status, 201);
  });
});

describe('webhook signature and events', () => {
  const expect400 = async (payload: string, signature: string | undefined, userId: string, message = 'Invalid Stripe signature') => {
    const r = await sendWebhook(payload, signature);
    assert.equal(r.status, 400, r.text);
    assert.deepEqual(r.body, { statusCode: 400, message, error: 'Bad Request' });
    const ev = JSON.parse(payload);
    assert.equal((await sql('SELECT 1 FROM legacy.stripe_events WHERE id = $1', [ev.id])).length, 0, 'event not recorded');
    assert.equal((await sql('SELECT 1 FROM legacy.subscriptions WHERE user_id = $1', [userId])).length, 0, 'no subscription');
  };

  test('bad, missing, foreign or stale signatures are 400 and change nothing', async () => {
    const u = await newUser(env.stack.url, 'Forger');
    const payload = JSON.stringify(subscriptionEvent('customer.subscription.created', u.id));
    await expect400(payload, undefined, u.id);
    await expect400(payload, 'garbage', u.id);
    await expect400(payload, `t=${now()}`, u.id);
    await expect400(payload, sign(payload, 'whsec_someone_else'), u.id);
    await expect400(payload, sign(payload, STRIPE_WEBHOOK_SECRET, now() - 301), u.id);
    await expect400(payload, sign(payload, STRIPE_WEBHOOK_SECRET, now() + 3600), u.id);
    // tampered: the signature of the original body, a body that grants a different plan
    const tampered = payload.replace('price_pro_yearly', 'price_pro_monthly');
    assert.notEqual(tampered, payload);
    await expect400(tampered, sign(payload), u.id);
    // signature made for another timestamp than the one claimed
    const sig = sign(payload, STRIPE_WEBHOOK_SECRET, now() - 10).replace(/^t=\d+/, `t=${now()}`);
    await expect400(payload, sig, u.id);

    // control: the same payload correctly signed (4 minutes old, within tolerance) is accepted
    const ok = await sendWebhook(payload, sign(payload, STRIPE_WEBHOOK_SECRET, now() - 240));
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(ok.body, { received: true });
    assert.equal((await subscriptionOf(u)).body.status, 'active');
  });

  test('one valid v1 among several is enough (secret rotation)', async () => {
    const u = await newUser(env.stack.url, 'Rotate');
    const payload = JSON.stringify(subscriptionEvent('customer.subscription.created', u.id));
    const t = now();
    const good = sign(payload, STRIPE_WEBHOOK_SECRET, t).split(',')[1];
    const bad = sign(payload, 'whsec_old', t).split(',')[1];
    const r = await sendWebhook(payload, `t=${t},${bad},${good},v0=deadbeef`);
    assert.equal(r.status, 200, r.text);
  });

  test('a signed body that is not an event is 400; unknown event types are acknowledged and ignored', async () => {
    const u = await newUser(env.stack.url, 'Odd');
    const notEvent = JSON.stringify({ hello: 'world' });
    const r = await sendWebhook(notEvent, sign(notEvent));
    assert.equal(r.status, 400);
    assert.deepEqual(r.body, { statusCode: 400, message: 'Malformed event', error: 'Bad Request' });

    // not JSON: no raw body to verify
    const text = await api(env.stack.url, 'POST', '/payments/webhook', {
      body: notEvent,
      headers: { 'content-type': 'text/plain', 'stripe-signature': sign(notEvent) },
    });
    assert.equal(text.status, 400);
    assert.deepEqual(text.body, { statusCode: 400, message: 'Missing request body', error: 'Bad Request' });

    const ev = { ...subscriptionEvent('customer.subscription.created', u.id), type: 'invoice.paid' };
    const payload = JSON.stringify(ev);
    const ok = await sendWebhook(payload, sign(payload));
    assert.equal(ok.status, 200);
    assert.deepEqual(await sql('SELECT type FROM legacy.stripe_events WHERE id = $1', [ev.id]), [{ type: 'invoice.paid' }]);
    assert.equal((await sql('SELECT 1 FROM legacy.subscriptions WHERE user_id = $1', [u.id])).length, 0);
  });

  test('subscription.updated mirrors status and cancel_at_period_end; a late event never revives a canceled one', async () => {
    const u = await newUser(env.stack.url, 'Updates');
    const created = subscriptionEvent('customer.subscription.created', u.id);
    const subId = created.data.object.id;
    const send = async (e: object) => {
      const p = JSON.stringify(e);
      const r = await sendWebhook(p, sign(p));
      assert.equal(r.status, 200, r.text);
    };
    await send(created);
    const end = now() + 40 * 86_400;
    await send(subscriptionEvent('customer.subscription.updated', u.id, { id: subId, status: 'past_due', cancel_at_period_end: true, current_period_end: end }));
    assert.deepEqual((await subscriptionOf(u)).body, {
      status: 'past_due',
      planId: 'pro-yearly',
      currentPeriodEnd: new Date(end * 1000).toISOString(),
      cancelAtPeriodEnd: true,
    });
    await send(subscriptionEvent('customer.subscription.deleted', u.id, { id: subId, status: 'canceled' }));
    assert.equal((await subscriptionOf(u)).body.status, 'canceled');
    await send(subscriptionEvent('customer.subscription.updated', u.id, { id: subId, status: 'active' }));
    assert.equal((await subscriptionOf(u)).body.status, 'canceled');
    assert.equal((await sql('SELECT 1 FROM legacy.subscriptions WHERE user_id = $1', [u.id])).length, 1);
  });

  test('events for unknown users are acknowledged and create nothing', async () => {
    const ghost = '00000000-0000-4000-8000-000000000000';
    const e = subscriptionEvent('customer.subscription.created', ghost);
    const p = JSON.stringify(e);
    const r = await sendWebhook(p, sign(p));
    assert.equal(r.status, 200);
    assert.equal((await sql('SELECT 1 FROM legacy.subscriptions WHERE stripe_subscription_id = $1', [e.data.object.id])).length, 0);
    assert.equal((await sql('SELECT 1 FROM legacy.stripe_events WHERE id = $1', [e.id])).length, 1);
  });
});

describe('Stripe failures', () => {
  let broken: Stack;
  before(async () => {
    // Stripe (the fake) answers 401 to a key that is not sk_…
    broken = await startStack({ STRIPE_SECRET_KEY: 'rk_not_a_secret_key' });
  });
  after(async () => {
    await broken?.stop();
  });

  test('are 502 with a Nest body that does not leak Stripe’s error', async () => {
    const u = await newUser(broken.url, 'Unlucky');
    const r = await api(broken.url, 'POST', '/payments/checkout', { body: { planId: 'pro-monthly' }, token: u.accessToken });
    assert.equal(r.status, 502);
    assert.deepEqual(r.body, { statusCode: 502, message: 'Payment provider request failed', error: 'Bad Gateway' });
    assert.ok(!/api key|invalid_request_error/i.test(r.text));
    assert.equal((await sql('SELECT 1 FROM legacy.stripe_customers WHERE user_id = $1', [u.id])).length, 0);
  });
});
