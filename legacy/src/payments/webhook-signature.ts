// Verification of Stripe's `Stripe-Signature: t=<unix secs>,v1=<hex hmac>[,v1=…][,v0=…]` header:
// v1 is HMAC-SHA256 of `${t}.${rawBody}` keyed with the endpoint secret (whsec_…).
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Stripe's default tolerance: a signature more than 5 minutes away from now is rejected (replay). */
export const SIGNATURE_TOLERANCE_SECS = 300;

export type SignatureCheck = { ok: true } | { ok: false; reason: string };

export function verifyStripeSignature(
  rawBody: Buffer,
  header: string | undefined,
  secret: string,
  nowSecs = Math.floor(Date.now() / 1000),
  toleranceSecs = SIGNATURE_TOLERANCE_SECS,
): SignatureCheck {
  if (!header) return { ok: false, reason: 'missing Stripe-Signature header' };
  let t: number | undefined;
  const v1: string[] = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (k === 't' && /^\d{1,12}$/.test(v)) t = Number(v);
    else if (k === 'v1' && /^[0-9a-f]{64}$/i.test(v)) v1.push(v.toLowerCase());
  }
  if (t === undefined || v1.length === 0) return { ok: false, reason: 'malformed Stripe-Signature header' };
  // Both directions: an old timestamp is a replay, one far in the future is forged or a broken clock.
  if (Math.abs(nowSecs - t) > toleranceSecs) return { ok: false, reason: 'timestamp outside the tolerance' };
  const expected = createHmac('sha256', secret).update(`${t}.`).update(rawBody).digest();
  // Constant-time comparison against every v1 (several during a secret rotation).
  const match = v1.some((sig) => timingSafeEqual(Buffer.from(sig, 'hex'), expected));
  return match ? { ok: true } : { ok: false, reason: 'no matching v1 signature' };
}
