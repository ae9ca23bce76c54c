// Processing of verified Stripe events. Each event id is recorded in legacy.stripe_events in the
// same transaction as its effect, so a redelivery (Stripe retries, or the same event sent twice
// concurrently: the second insert waits on the primary key) is acknowledged and changes nothing.
import { Injectable, Logger } from '@nestjs/common';
import type { PoolClient } from 'pg';
import { Db } from '../infra/infra.module';
import { applySubscription } from './payments.service';
import { StripeSubscription } from './stripe.client';

export interface StripeEvent {
  id: string;
  type: string;
  data?: { object?: any };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

@Injectable()
export class WebhookService {
  private readonly log = new Logger('StripeWebhook');

  constructor(private readonly db: Db) {}

  /** Returns false when the event had already been processed. */
  async process(event: StripeEvent): Promise<boolean> {
    return this.db.tx(async (c) => {
      const fresh = await c.query(`INSERT INTO legacy.stripe_events (id, type) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING id`, [
        event.id,
        event.type,
      ]);
      if (fresh.rowCount === 0) return false;
      const object = event.data?.object;
      switch (event.type) {
        case 'checkout.session.completed':
          await this.sessionCompleted(c, object);
          break;
        case 'customer.subscription.created':
        case 'customer.subscription.updated':
        case 'customer.subscription.deleted':
          await this.subscriptionChanged(c, event, object);
          break;
        default:
          // not subscribed to / not needed: recorded and acknowledged
          break;
      }
      return true;
    });
  }

  /** A paid Checkout: links the customer to the user and records the subscription (if not yet known). */
  private async sessionCompleted(c: PoolClient, session: any) {
    if (!session || session.mode !== 'subscription' || typeof session.subscription !== 'string') return;
    const customer = typeof session.customer === 'string' ? session.customer : undefined;
    const userId = await this.userOf(c, customer, session.client_reference_id ?? session.metadata?.user_id);
    if (!userId) {
      this.log.warn(`checkout session ${session.id}: no matching user, ignored`);
      return;
    }
    if (customer) {
      await c.query(`INSERT INTO legacy.stripe_customers (user_id, customer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, [userId, customer]);
    }
    const planId = typeof session.metadata?.plan_id === 'string' ? session.metadata.plan_id : null;
    // The subscription events carry the full state; this only covers the window before they arrive.
    await c.query(
      `INSERT INTO legacy.subscriptions (stripe_subscription_id, user_id, plan_id, status)
       VALUES ($1, $2, (SELECT id FROM legacy.plans WHERE id = $3), $4)
       ON CONFLICT (stripe_subscription_id) DO NOTHING`,
      [session.subscription, userId, planId, session.payment_status === 'paid' ? 'active' : 'incomplete'],
    );
  }

  private async subscriptionChanged(c: PoolClient, event: StripeEvent, sub: StripeSubscription | undefined) {
    if (!sub || typeof sub.id !== 'string' || typeof sub.status !== 'string') {
      this.log.warn(`${event.type} ${event.id}: no subscription object, ignored`);
      return;
    }
    const known = await c.query<{ user_id: string }>(`SELECT user_id FROM legacy.subscriptions WHERE stripe_subscription_id = $1`, [sub.id]);
    const userId = known.rows[0]?.user_id ?? (await this.userOf(c, sub.customer, sub.metadata?.user_id));
    if (!userId) {
      this.log.warn(`${event.type} ${event.id}: subscription ${sub.id} of no known user, ignored`);
      return;
    }
    await applySubscription(c, sub, userId);
  }

  /** The user of a Stripe customer, else the user id Checkout carried (if that user exists). */
  private async userOf(c: PoolClient, customer: string | undefined, candidate: unknown): Promise<string | undefined> {
    if (typeof customer === 'string') {
      const r = await c.query<{ user_id: string }>(`SELECT user_id FROM legacy.stripe_customers WHERE customer_id = $1`, [customer]);
      if (r.rows[0]) return r.rows[0].user_id;
    }
    if (typeof candidate === 'string' && UUID.test(candidate)) {
      const r = await c.query<{ id: string }>(`SELECT id FROM legacy.users WHERE id = $1`, [candidate]);
      if (r.rows[0]) return r.rows[0].id;
    }
    return undefined;
  }
}
