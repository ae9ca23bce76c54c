// Minimal Stripe REST client: form-encoded requests with the secret key, over the shared
// HttpClient (so base URL, timeout and upstream-error handling are the same as other providers).
import { Inject, Injectable } from '@nestjs/common';
import { Config, CONFIG } from '../config';
import { HttpClient } from '../infra/infra.module';

export interface StripeCustomer {
  id: string;
}
export interface StripeCheckoutSession {
  id: string;
  url: string;
}
/** The subset of a Stripe Subscription object this module reads. */
export interface StripeSubscription {
  id: string;
  customer: string;
  status: string;
  cancel_at_period_end?: boolean;
  current_period_end?: number | null;
  items?: { data?: Array<{ price?: { id?: string }; current_period_end?: number }> };
  metadata?: Record<string, string>;
}

@Injectable()
export class StripeClient {
  constructor(
    @Inject(CONFIG) private readonly config: Config,
    private readonly http: HttpClient,
  ) {}

  /** Calls Stripe; throws UpstreamError on a non-2xx answer, or fetch's error when unreachable. */
  private call<T>(method: string, path: string, params?: Record<string, string>, idempotencyKey?: string): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.config.stripe.secretKey}` };
    let body: string | undefined;
    if (params) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      body = new URLSearchParams(params).toString();
    }
    if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
    return this.http.json('stripe', `${this.config.stripe.baseUrl}${path}`, { method, headers, body });
  }

  createCustomer(userId: string, email: string): Promise<StripeCustomer> {
    // The idempotency key makes concurrent/retried creations for one user return the same customer
    // at real Stripe (keys live 24 h); the database's unique user_id settles the rest.
    return this.call('POST', '/v1/customers', { email, 'metadata[user_id]': userId }, `customer-${userId}`);
  }

  createSubscriptionCheckout(p: { customer: string; priceId: string; userId: string; planId: string }): Promise<StripeCheckoutSession> {
    return this.call('POST', '/v1/checkout/sessions', {
      mode: 'subscription',
      customer: p.customer,
      'line_items[0][price]': p.priceId,
      'line_items[0][quantity]': '1',
      success_url: this.config.stripe.successUrl,
      cancel_url: this.config.stripe.cancelUrl,
      client_reference_id: p.userId,
      'metadata[user_id]': p.userId,
      'metadata[plan_id]': p.planId,
    });
  }

  /** Cancels immediately (Stripe's DELETE /v1/subscriptions/{id}); returns the canceled subscription. */
  cancelSubscription(id: string): Promise<StripeSubscription> {
    return this.call('DELETE', `/v1/subscriptions/${encodeURIComponent(id)}`);
  }
}
