// Auth and users against the real monolith, Postgres, Redis and the Google/Gmail fakes.
import assert from 'node:assert/strict';
import { createPublicKey, createVerify } from 'node:crypto';
import { describe, test } from 'node:test';
import { api, newUser, withStack, totp, uniqueEmail, waitFor } from './harness';

// the monolith + fakes for this file, and a Postgres client to check what it stored
const env = withStack();

const post = (path: string, body: unknown, token?: string) => api(env.stack.url, 'POST', path, { body, token });

describe('register and login', () => {
  test('register returns tokens and stores a bcrypt hash, never the password', async () => {
    const email = uniqueEmail('reg');
    const r = await post('/auth/register', { email: `  ${email.toUpperCase()} `, password: 'correct horse 1', displayName: ' Reg ' });
    assert.equal(r.status, 201);
    assert.equal(r.body.tokenType, 'Bearer');
    assert.equal(r.body.expiresIn, 900);
    assert.equal(r.body.user.email, email, 'e-mail is trimmed and lower-cased');
    assert.equal(r.body.user.displayName, 'Reg');
    assert.equal(r.body.user.twoFactorEnabled, false);
    const row = (await env.db.query('SELECT password_hash FROM legacy.users WHERE id = $1', [r.body.user.id])).rows[0];
    assert.match(row.password_hash, /^\$2[aby]\$04\$/);
    assert.ok(!JSON.stringify(r.body).includes('correct horse'));
  });

  test('a second account with the same address (any case) is 409', async () => {
    const u = await newUser(env.stack.url);
    const r = await post('/auth/register', { email: u.email.toUpperCase(), password: 'password123', displayName: 'X' });
    assert.equal(r.status, 409);
    assert.deepEqual(r.body, { statusCode: 409, message: 'Email is already registered', error: 'Conflict' });
  });

  test('validation errors list every problem with 400', async () => {
    const r = await post('/auth/register', { email: 'not-an-email', password: 'short', extra: 1 });
    assert.equal(r.status, 400);
    assert.equal(r.body.error, 'Bad Request');
    const msgs: string[] = r.body.message;
    assert.ok(msgs.includes('email must be an email'));
    assert.ok(msgs.includes('password must be longer than or equal to 8 characters'));
    assert.ok(msgs.some((m) => m.startsWith('displayName')));
    assert.ok(msgs.includes('property extra should not exist'));
  });

  test('malformed JSON is 400, not 500', async () => {
    const r = await api(env.stack.url, 'POST', '/auth/login', { body: '{"email":', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
    assert.equal(r.body.statusCode, 400);
  });

  test('login: right password 200, wrong password and unknown user the same 401', async () => {
    const u = await newUser(env.stack.url);
    const ok = await post('/auth/login', { email: u.email, password: u.password });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.user.id, u.id);
    const wrong = await post('/auth/login', { email: u.email, password: 'wrong-password' });
    const unknown = await post('/auth/login', { email: uniqueEmail('ghost'), password: 'wrong-password' });
    assert.equal(wrong.status, 401);
    assert.deepEqual(wrong.body, unknown.body, 'no user enumeration through the error');
    assert.deepEqual(wrong.body, { statusCode: 401, message: 'Invalid email or password', error: 'Unauthorized' });
  });
});

describe('access tokens', () => {
  test('are RS256 JWTs verifiable with the JWKS, with issuer, audience and expiry', async () => {
    const u = await newUser(env.stack.url);
    const jwks = await api(env.stack.url, 'GET', '/.well-known/jwks.json');
    assert.equal(jwks.status, 200);
    const [h, p, s] = u.accessToken.split('.');
    const header = JSON.parse(Buffer.from(h, 'base64url').toString());
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    assert.equal(header.alg, 'RS256');
    const jwk = jwks.body.keys.find((k: any) => k.kid === header.kid);
    assert.ok(jwk, 'the token kid is in the JWKS');
    const key = createPublicKey({ key: jwk, format: 'jwk' });
    assert.ok(createVerify('RSA-SHA256').update(`${h}.${p}`).verify(key, Buffer.from(s, 'base64url')));
    assert.equal(claims.sub, u.id);
    assert.equal(claims.aud, 'brainmessenger-api');
    assert.equal(claims.exp - claims.iat, 900);
    assert.ok(claims.iss);
  });

  test('me needs a valid token', async () => {
    const u = await newUser(env.stack.url);
    const me = await api(env.stack.url, 'GET', '/auth/me', { token: u.accessToken });
    assert.equal(me.status, 200);
    assert.equal(me.body.email, u.email);
    for (const token of [undefined, 'garbage', u.accessToken.slice(0, -4) + 'AAAA']) {
      const r = await api(env.stack.url, 'GET', '/auth/me', { token });
      assert.equal(r.status, 401);
      assert.deepEqual(r.body, { statusCode: 401, message: 'Unauthorized' });
    }
  });
});

describe('refresh-token rotation', () => {
  test('rotates, and reuse of a rotated token revokes the whole family', async () => {
    const u = await newUser(env.stack.url);
    const r1 = await post('/auth/refresh', { refreshToken: u.refreshToken });
    assert.equal(r1.status, 200);
    assert.notEqual(r1.body.refreshToken, u.refreshToken);
    const r2 = await post('/auth/refresh', { refreshToken: r1.body.refreshToken });
    assert.equal(r2.status, 200);
    // the first token again: a replay
    const reuse = await post('/auth/refresh', { refreshToken: u.refreshToken });
    assert.equal(reuse.status, 401);
    assert.equal(reuse.body.message, 'Refresh token reuse detected');
    // the newest token of the family is dead too
    const after = await post('/auth/refresh', { refreshToken: r2.body.refreshToken });
    assert.equal(after.status, 401);
    const { rows } = await env.db.query('SELECT count(*)::int AS n, count(revoked_at)::int AS revoked FROM legacy.refresh_tokens WHERE user_id = $1', [u.id]);
    assert.deepEqual(rows[0], { n: 3, revoked: 3 });
  });

  test('two concurrent refreshes with one token: exactly one wins', async () => {
    const u = await newUser(env.stack.url);
    const rs = await Promise.all([1, 2, 3].map(() => post('/auth/refresh', { refreshToken: u.refreshToken })));
    assert.equal(rs.filter((r) => r.status === 200).length, 1);
  });

  test('unknown token 401; logout revokes the session, other sessions live on', async () => {
    assert.equal((await post('/auth/refresh', { refreshToken: 'nope' })).status, 401);
    const u = await newUser(env.stack.url);
    const other = await post('/auth/login', { email: u.email, password: u.password });
    const out = await post('/auth/logout', { refreshToken: u.refreshToken });
    assert.equal(out.status, 204);
    assert.equal(out.text, '');
    assert.equal((await post('/auth/refresh', { refreshToken: u.refreshToken })).status, 401);
    assert.equal((await post('/auth/refresh', { refreshToken: other.body.refreshToken })).status, 200);
    assert.equal((await post('/auth/logout', { refreshToken: u.refreshToken })).status, 204, 'logout is idempotent');
  });
});

describe('TOTP two-factor authentication', () => {
  test('setup, enable, login challenge, verify, disable', async () => {
    const u = await newUser(env.stack.url);
    const setup = await post('/auth/2fa/setup', {}, u.accessToken);
    assert.equal(setup.status, 201);
    assert.match(setup.body.secret, /^[A-Z2-7]{16,}$/);
    assert.ok(setup.body.otpauthUrl.startsWith('otpauth://totp/BrainMessenger:'));
    assert.ok(setup.body.otpauthUrl.includes(`secret=${setup.body.secret}`));
    assert.equal((await post('/auth/2fa/enable', { code: '000000' }, u.accessToken)).status, 400);
    assert.equal((await post('/auth/2fa/enable', { code: 'abc' }, u.accessToken)).status, 400);
    const en = await post('/auth/2fa/enable', { code: totp(setup.body.secret) }, u.accessToken);
    assert.equal(en.status, 200);
    assert.deepEqual(en.body, { twoFactorEnabled: true });
    assert.equal((await post('/auth/2fa/setup', {}, u.accessToken)).status, 409);

    const login = await post('/auth/login', { email: u.email, password: u.password });
    assert.equal(login.status, 200);
    assert.equal(login.body.twoFactorRequired, true);
    assert.equal(login.body.accessToken, undefined, 'no tokens before the second factor');
    const bad = await post('/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: '123456' });
    assert.equal(bad.status, 401);
    const ok = await post('/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: totp(setup.body.secret) });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.user.twoFactorEnabled, true);
    const again = await post('/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: totp(setup.body.secret) });
    assert.equal(again.status, 401, 'a challenge is single-use');

    const dis = await post('/auth/2fa/disable', { code: totp(setup.body.secret) }, ok.body.accessToken);
    assert.deepEqual(dis.body, { twoFactorEnabled: false });
    const plain = await post('/auth/login', { email: u.email, password: u.password });
    assert.ok(plain.body.accessToken);
  });

  test('five wrong codes burn the challenge', async () => {
    const u = await newUser(env.stack.url);
    const setup = await post('/auth/2fa/setup', {}, u.accessToken);
    await post('/auth/2fa/enable', { code: totp(setup.body.secret) }, u.accessToken);
    const login = await post('/auth/login', { email: u.email, password: u.password });
    for (let i = 0; i < 5; i++) await post('/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: '000000' });
    const r = await post('/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: totp(setup.body.secret) });
    assert.equal(r.status, 401);
    assert.equal(r.body.message, 'Two-factor challenge is invalid or expired');
  });
});

describe('Google sign-in', () => {
  async function signIn(email: string, name: string) {
    await api(env.stack.fakes, 'POST', '/_fake/google/users', { body: { email, name } });
    const start = await api(env.stack.url, 'GET', `/auth/google?login_hint=${encodeURIComponent(email)}`);
    assert.equal(start.status, 302);
    const authorize = new URL(start.headers.get('location')!);
    assert.equal(authorize.origin + authorize.pathname, `${env.stack.fakes}/o/oauth2/v2/auth`);
    assert.equal(authorize.searchParams.get('redirect_uri'), `${env.stack.url}/auth/google/callback`);
    const consent = await fetch(authorize, { redirect: 'manual' });
    assert.equal(consent.status, 302);
    const callback = new URL(consent.headers.get('location')!);
    return api(env.stack.url, 'GET', callback.pathname + callback.search);
  }

  test('creates an account on first sign-in and finds it the next time', async () => {
    const email = uniqueEmail('google');
    const first = await signIn(email, 'Goo Gle');
    assert.equal(first.status, 200, first.text);
    assert.equal(first.body.user.email, email);
    const second = await signIn(email, 'Goo Gle');
    assert.equal(second.body.user.id, first.body.user.id);
    // a Google-only account has no password: password login fails like any wrong password
    const pw = await post('/auth/login', { email, password: 'anything-at-all' });
    assert.equal(pw.status, 401);
  });

  test('links to an existing password account with the same verified address', async () => {
    const u = await newUser(env.stack.url);
    const r = await signIn(u.email, 'Linked');
    assert.equal(r.body.user.id, u.id);
  });

  test('a callback with a forged or replayed state is 400', async () => {
    const r = await api(env.stack.url, 'GET', '/auth/google/callback?code=4/x&state=forged');
    assert.equal(r.status, 400);
    assert.equal(r.body.message, 'Invalid OAuth state');
  });

  test('a code the provider rejects is 401', async () => {
    const start = await api(env.stack.url, 'GET', '/auth/google');
    const state = new URL(start.headers.get('location')!).searchParams.get('state');
    const r = await api(env.stack.url, 'GET', `/auth/google/callback?code=4/invalid&state=${state}`);
    assert.equal(r.status, 401);
    assert.equal(r.body.message, 'Google sign-in failed');
  });
});

describe('password reset by e-mail', () => {
  test('sends a Gmail message with a link; the token resets once and revokes sessions', async () => {
    const u = await newUser(env.stack.url);
    const r = await post('/auth/password/forgot', { email: u.email });
    assert.equal(r.status, 202);
    const unknown = await post('/auth/password/forgot', { email: uniqueEmail('nobody') });
    assert.deepEqual(unknown.body, r.body, 'same answer for unknown addresses');
    assert.equal(unknown.status, 202);

    const mail = await waitFor(async () => {
      const sent = await api(env.stack.fakes, 'GET', '/_fake/gmail/messages');
      return (sent.body.items as any[]).find((m) => m.to === u.email);
    }, 'the reset mail');
    const token = decodeURIComponent(/reset-password\?token=([A-Za-z0-9_%-]+)/.exec(mail.body)![1]);
    assert.equal(mail.subject, 'Reset your BrainMessenger password');

    assert.equal((await post('/auth/password/reset', { token, password: 'short' })).status, 400);
    const ok = await post('/auth/password/reset', { token, password: 'brand-new-password' });
    assert.equal(ok.status, 200);
    assert.equal((await post('/auth/password/reset', { token, password: 'brand-new-password-2' })).status, 400, 'single use');
    assert.equal((await post('/auth/login', { email: u.email, password: u.password })).status, 401);
    assert.equal((await post('/auth/login', { email: u.email, password: 'brand-new-password' })).status, 200);
    assert.equal((await post('/auth/refresh', { refreshToken: u.refreshToken })).status, 401, 'old sessions are revoked');
  });
});

describe('users', () => {
  test('profile read and update; public profile of others; 404 and 400', async () => {
    const a = await newUser(env.stack.url, 'Alice');
    const b = await newUser(env.stack.url, 'Bob');
    const upd = await api(env.stack.url, 'PATCH', '/users/me', {
      token: a.accessToken,
      body: { displayName: 'Alice A.', bio: 'hi', avatarUrl: 'https://cdn.example/a.png' },
    });
    assert.equal(upd.status, 200);
    assert.equal(upd.body.displayName, 'Alice A.');
    assert.equal(upd.body.bio, 'hi');
    const cleared = await api(env.stack.url, 'PATCH', '/users/me', { token: a.accessToken, body: { bio: null } });
    assert.equal(cleared.body.bio, null);
    assert.equal(cleared.body.avatarUrl, 'https://cdn.example/a.png', 'fields not sent stay as they were');
    const pub = await api(env.stack.url, 'GET', `/users/${a.id}`, { token: b.accessToken });
    assert.deepEqual(pub.body, { id: a.id, displayName: 'Alice A.', avatarUrl: 'https://cdn.example/a.png', bio: null });
    assert.equal((await api(env.stack.url, 'GET', '/users/00000000-0000-4000-8000-000000000000', { token: b.accessToken })).status, 404);
    assert.equal((await api(env.stack.url, 'GET', '/users/not-a-uuid', { token: b.accessToken })).status, 400);
    assert.equal((await api(env.stack.url, 'PATCH', '/users/me', { token: a.accessToken, body: { avatarUrl: 'javascript:x' } })).status, 400);
    assert.equal((await api(env.stack.url, 'PATCH', '/users/me', { token: a.accessToken, body: { email: 'x@y.z' } })).status, 400);
    assert.equal((await api(env.stack.url, 'GET', '/users/me')).status, 401);
  });
});

test('health reports Postgres and Redis', async () => {
  const r = await api(env.stack.url, 'GET', '/health');
  assert.equal(r.status, 200);
  assert.deepEqual(r.body, { status: 'ok', checks: { database: 'up', redis: 'up' } });
});
