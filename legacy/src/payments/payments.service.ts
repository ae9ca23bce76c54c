// Plans, Checkout and the user's subscription. Stripe is the source of truth for subscriptions;
// legacy.subscriptions mirrors it from webhooks (see webhook.service.ts) and from Stripe's answers.
import { BadGatewayException, ConflictException, Injectable, Logger, NotFoundException } from '@nestjs/common';
import type { PoolClient } from 'pg';
import { Db } from '../infra/infra.module';
import { StripeClient, StripeSubscription } from './stripe.client';

/** Subscription statuses that count as "has a subscription": block a new checkout, can be canceled. */
export const LIVE_STATUSES = ['active', 'trialing', 'past_due'];

export interface PlanView {
  id: string;
  name: string;
  amountCents: number;
  currency: string;
  interval: 'month' | 'year';
}

export interface SubscriptionView {
  status: string; // 'none' or Stripe's status: active, trialing, past_due, canceled, incomplete, …
  planId: string | null;
  currentPeriodEnd: string | null;
  cancelAtPeriodEnd: boolean;
}

type Queryable = Pick<PoolClient, 'query'> | Db['pool'];

@Injectable()
export class PaymentsService {
  private readonly log = new Logger('Payments');

  constructor(
    private readonly db: Db,
    private readonly stripe: StripeClient,
  ) {}

  async plans(): Promise<PlanView[]> {
    const rows = await this.db.query(
      `SELECT id, name, amount_cents, currency, interval FROM legacy.plans ORDER BY amount_cents, id`,
    );
    return rows.map((r) => ({ id: r.id, name: r.name, amountCents: r.amount_cents, currency: r.currency, interval: r.interval }));
  }

  /** Starts a Stripe Checkout for a subscription to `planId`; the webhook records the outcome. */
  async checkout(user: { id: string; email: string }, planId: string): Promise<{ sessionId: string; url: string }> {
    const plan = await this.db.one<{ id: string; stripe_price_id: string }>(
      `SELECT id, stripe_price_id FROM legacy.plans WHERE id = $1`,
      [planId],
    );
    if (!plan) throw new NotFoundException('Plan not found');
    const live = await this.db.one(
      `SELECT 1 FROM legacy.subscriptions WHERE user_id = $1 AND status = ANY($2::text[]) LIMIT 1`,
      [user.id, LIVE_STATUSES],
    );
    if (live) throw new ConflictException('You already have an active subscription');

    const customer = await this.customerOf(user);
    const session = await this.upstream('create checkout session', () =>
      this.stripe.createSubscriptionCheckout({ customer, priceId: plan.stripe_price_id, userId: user.id, planId: plan.id }),
    );
    return { sessionId: session.id, url: session.url };
  }

  /** The user's Stripe customer id, created at Stripe on first use and remembered. */
  private async customerOf(user: { id: string; email: string }): Promise<string> {
    const known = await this.db.one<{ customer_id: string }>(`SELECT customer_id FROM legacy.stripe_customers WHERE user_id = $1`, [user.id]);
    if (known) return known.customer_id;
    const created = await this.upstream('create customer', () => this.stripe.createCustomer(user.id, user.email));
    // Two concurrent first checkouts: the first insert wins and both use its customer.
    await this.db.query(`INSERT INTO legacy.stripe_customers (user_id, customer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, [
      user.id,
      created.id,
    ]);
    const row = await this.db.one<{ customer_id: string }>(`SELECT customer_id FROM legacy.stripe_customers WHERE user_id = $1`, [user.id]);
    return row!.customer_id;
  }

  async subscription(userId: string): Promise<SubscriptionView> {
    const row = await this.currentRow(this.db.pool, userId, false);
    return toView(row);
  }

  /** Cancels the user's live subscription at Stripe (immediately) and mirrors Stripe's answer. */
  async cancel(userId: string): Promise<SubscriptionView> {
    const row = await this.currentRow(this.db.pool, userId, true);
    if (!row) throw new NotFoundException('No active subscription');
    const sub = await this.upstream('cancel subscription', () => this.stripe.cancelSubscription(row.stripe_subscription_id));
    await applySubscription(this.db.pool, sub, userId);
    return toView(await this.currentRowById(row.stripe_subscription_id));
  }

  /** The subscription to show: a live one first, else the most recently changed. */
  private async currentRow(q: Queryable, userId: string, liveOnly: boolean): Promise<SubscriptionRow | undefined> {
    const r = await q.query<SubscriptionRow>(
      `SELECT stripe_subscription_id, plan_id, status, current_period_end, cancel_at_period_end
         FROM legacy.subscriptions
        WHERE user_id = $1 AND (NOT $3 OR status = ANY($2::text[]))
        ORDER BY (status = ANY($2::text[])) DESC, updated_at DESC, created_at DESC
        LIMIT 1`,
      [userId, LIVE_STATUSES, liveOnly],
    );
    return r.rows[0];
  }

  private async currentRowById(id: string): Promise<SubscriptionRow | undefined> {
    return this.db.one<SubscriptionRow>(
      `SELECT stripe_subscription_id, plan_id, status, current_period_end, cancel_at_period_end
         FROM legacy.subscriptions WHERE stripe_subscription_id = $1`,
      [id],
    );
  }

  /** Runs a Stripe call; any failure becomes a 502 without Stripe's details (they are logged). */
  private async upstream<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      this.log.error(`Stripe: ${what} failed: ${(e as Error).message}`);
      throw new BadGatewayException('Payment provider request failed');
    }
  }
}

interface SubscriptionRow {
  stripe_subscription_id: string;
  plan_id: string | null;
  status: string;
  current_period_end: Date | null;
  cancel_at_period_end: boolean;
}

function toView(row: SubscriptionRow | undefined): SubscriptionView {
  if (!row) return { status: 'none', planId: null, currentPeriodEnd: null, cancelAtPeriodEnd: false };
  return {
    status: row.status,
    planId: row.plan_id,
    currentPeriodEnd: row.current_period_end ? row.current_period_end.toISOString() : null,
    cancelAtPeriodEnd: row.cancel_at_period_end,
  };
}

/**
 * Mirrors a Stripe Subscription object into legacy.subscriptions. The plan comes from the price id
 * (kept when the price is unknown). `canceled` is terminal at Stripe, so a late, out-of-order
 * event never resurrects a canceled subscription.
 */
export async function applySubscription(q: Queryable, sub: StripeSubscription, userId: string): Promise<void> {
  const item = sub.items?.data?.[0];
  const periodEnd = sub.current_period_end ?? item?.current_period_end ?? null;
  await q.query(
    `INSERT INTO legacy.subscriptions AS s
            (stripe_subscription_id, user_id, plan_id, status, current_period_end, cancel_at_period_end)
     VALUES ($1, $2, (SELECT id FROM legacy.plans WHERE stripe_price_id = $3), $4, to_timestamp($5::double precision), $6)
     ON CONFLICT (stripe_subscription_id) DO UPDATE
        SET plan_id = COALESCE(EXCLUDED.plan_id, s.plan_id),
            status = EXCLUDED.status,
            current_period_end = COALESCE(EXCLUDED.current_period_end, s.current_period_end),
            cancel_at_period_end = EXCLUDED.cancel_at_period_end,
            updated_at = now()
      WHERE s.status <> 'canceled'`,
    [sub.id, userId, item?.price?.id ?? null, sub.status, periodEnd, sub.cancel_at_period_end === true],
  );
}
