// The January cut-over: the extracted auth service (extracted/auth) beside the monolith, on the
// same Postgres, Redis and signing key, behind the strangler proxy. Tokens must work across both
// sides in every direction (rolling the route back logs nobody out), answers must be the same,
// and the rest of the API must survive the service dying.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { api, newUser, signedDryRun, totp, uniqueEmail, waitFor, withStack } from './harness';

const env = withStack({ LOGIN_MAX_FAILURES_PER_ACCOUNT: '3', RATE_LIMIT_WINDOW_SECS: '60' }, { authService: true });
const legacy = () => env.stack.legacyUrl;
const svc = () => env.stack.authUrl!;
const post = (base: string, path: string, body: unknown, token?: string, headers?: Record<string, string>) =>
  api(base, 'POST', path, { body, token, headers });

describe('tokens are interchangeable', () => {
  test('registered on the service: the monolith accepts its access token and rotates its refresh token', async () => {
    const u = await newUser(svc(), 'Svc Born');
    const me = await api(legacy(), 'GET', '/users/me', { token: u.accessToken });
    assert.equal(me.status, 200, me.text);
    assert.equal(me.body.email, u.email);
    const r1 = await post(legacy(), '/auth/refresh', { refreshToken: u.refreshToken });
    assert.equal(r1.status, 200, r1.text);
    // and back: the monolith's new pair works on the service
    assert.equal((await api(svc(), 'GET', '/auth/me', { token: r1.body.accessToken })).status, 200);
    const r2 = await post(svc(), '/auth/refresh', { refreshToken: r1.body.refreshToken });
    assert.equal(r2.status, 200, r2.text);
    assert.equal(r2.body.user.id, u.id);
  });

  test('logged in on the monolith, refreshed on the service; a login on the service works on the monolith', async () => {
    const u = await newUser(legacy(), 'Legacy Born');
    const login = await post(svc(), '/auth/login', { email: u.email, password: u.password });
    assert.equal(login.status, 200, login.text);
    assert.equal((await api(legacy(), 'GET', '/auth/me', { token: login.body.accessToken })).status, 200);
    const r = await post(svc(), '/auth/refresh', { refreshToken: u.refreshToken });
    assert.equal(r.status, 200, r.text);
    assert.equal((await api(legacy(), 'GET', '/users/me', { token: r.body.accessToken })).body.id, u.id);
  });

  test('a logout on one side is honoured by the other', async () => {
    const u = await newUser(legacy());
    assert.equal((await post(svc(), '/auth/logout', { refreshToken: u.refreshToken })).status, 204);
    const r = await post(legacy(), '/auth/refresh', { refreshToken: u.refreshToken });
    assert.equal(r.status, 401);
    assert.equal(r.body.message, 'Invalid refresh token');
    const v = await newUser(svc());
    assert.equal((await post(legacy(), '/auth/logout', { refreshToken: v.refreshToken })).status, 204);
    assert.equal((await post(svc(), '/auth/refresh', { refreshToken: v.refreshToken })).status, 401);
  });

  test('reuse detected on one side revokes the session on the other', async () => {
    const u = await newUser(svc());
    const rotated = await post(legacy(), '/auth/refresh', { refreshToken: u.refreshToken });
    assert.equal(rotated.status, 200);
    const reuse = await post(svc(), '/auth/refresh', { refreshToken: u.refreshToken });
    assert.equal(reuse.status, 401);
    assert.equal(reuse.body.message, 'Refresh token reuse detected');
    const after = await post(legacy(), '/auth/refresh', { refreshToken: rotated.body.refreshToken });
    assert.equal(after.status, 401, 'the whole family is revoked');
  });

  test('two-factor set up on the monolith, enabled on the service, challenge issued by one and answered on the other', async () => {
    const u = await newUser(legacy());
    const setup = await post(legacy(), '/auth/2fa/setup', undefined, u.accessToken);
    assert.equal(setup.status, 201);
    assert.equal((await post(svc(), '/auth/2fa/enable', { code: totp(setup.body.secret) }, u.accessToken)).status, 200);
    const login = await post(svc(), '/auth/login', { email: u.email, password: u.password });
    assert.equal(login.body.twoFactorRequired, true, login.text);
    const wrong = await post(legacy(), '/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: '000000' });
    assert.equal(wrong.status, 401);
    const ok = await post(legacy(), '/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: totp(setup.body.secret) });
    assert.equal(ok.status, 200, ok.text);
    const again = await post(svc(), '/auth/2fa/verify', { challengeToken: login.body.challengeToken, code: totp(setup.body.secret) });
    assert.equal(again.status, 401, 'single use across both sides');
    assert.equal(again.body.message, 'Two-factor challenge is invalid or expired');
    // and the other way round
    const login2 = await post(legacy(), '/auth/login', { email: u.email, password: u.password });
    const ok2 = await post(svc(), '/auth/2fa/verify', { challengeToken: login2.body.challengeToken, code: totp(setup.body.secret) });
    assert.equal(ok2.status, 200, ok2.text);
    assert.equal((await post(svc(), '/auth/2fa/setup', undefined, ok2.body.accessToken)).status, 409);
  });

  test('a password reset mailed by the service is redeemed on the monolith', async () => {
    const u = await newUser(legacy());
    assert.equal((await post(svc(), '/auth/password/forgot', { email: u.email })).status, 202);
    const mail = await waitFor(async () => {
      const sent = await api(env.stack.fakes, 'GET', '/_fake/gmail/messages');
      return (sent.body.items as any[]).find((m) => m.to === u.email);
    }, 'the reset mail');
    assert.ok(mail.body.includes(`${env.stack.url}/reset-password?token=`), mail.body);
    const token = decodeURIComponent(/reset-password\?token=([A-Za-z0-9_%-]+)/.exec(mail.body)![1]);
    assert.equal((await post(legacy(), '/auth/password/reset', { token, password: 'reset-by-legacy' })).status, 200);
    assert.equal((await post(svc(), '/auth/password/reset', { token, password: 'again-and-again' })).status, 400);
    assert.equal((await post(svc(), '/auth/login', { email: u.email, password: 'reset-by-legacy' })).status, 200);
    assert.equal((await post(svc(), '/auth/refresh', { refreshToken: u.refreshToken })).status, 401, 'old sessions revoked');
  });

  test('both sides publish the same JWKS', async () => {
    const a = await api(legacy(), 'GET', '/.well-known/jwks.json');
    const b = await api(svc(), 'GET', '/.well-known/jwks.json');
    assert.deepEqual(b.body, a.body);
    assert.equal(b.headers.get('etag'), a.headers.get('etag'));
  });
});

describe('same answers', () => {
  const cases: [string, string, unknown][] = [
    ['POST', '/auth/register', {}],
    ['POST', '/auth/register', { email: 5, password: 5, displayName: 5 }],
    ['POST', '/auth/register', { zeta: 1, email: 'bad', alpha: 2 }],
    ['POST', '/auth/register', 'null'],
    ['POST', '/auth/login', {}],
    ['POST', '/auth/login', { email: 'nobody@example.test', password: 'whatever-1' }],
    ['POST', '/auth/2fa/verify', { code: '12345a', challengeToken: '' }],
    ['POST', '/auth/2fa/verify', { code: '123456', challengeToken: 'unknown' }],
    ['POST', '/auth/refresh', { refreshToken: 'unknown' }],
    ['POST', '/auth/logout', { refreshToken: 'unknown' }],
    ['POST', '/auth/password/forgot', { email: 'nobody@example.test' }],
    ['POST', '/auth/password/reset', { token: 'x', password: 'long-enough' }],
    ['GET', '/auth/me', undefined],
    ['POST', '/auth/2fa/enable', { code: 'x' }],
    ['GET', '/auth/google/callback?code=1', undefined],
    ['GET', '/auth/nothing?x=1', undefined],
    ['DELETE', '/auth/login', undefined],
    ['POST', '/auth/Login/', {}],
    ['POST', '/auth/refresh/', { refreshToken: 'unknown' }],
    ['POST', '/auth/login', '  '],
    ['POST', '/auth/login', '\ufeff{"email":"x"}'],
  ];
  for (const [method, path, body] of cases) {
    test(`${method} ${path} ${body === undefined ? '' : JSON.stringify(body)}`, async () => {
      const a = await api(legacy(), method, path, { body });
      const b = await api(svc(), method, path, { body });
      assert.equal(b.status, a.status);
      assert.equal(b.headers.get('content-type'), a.headers.get('content-type'));
      assert.equal(b.headers.get('etag'), a.headers.get('etag'), 'same bytes');
      for (const h of ['allow', 'vary', 'location', 'cache-control', 'www-authenticate']) assert.equal(b.headers.get(h), a.headers.get(h), h);
      assert.deepEqual(b.body, a.body);
    });
  }

  test('body limits as express.json(): 413 for a big JSON body, other types not read at all', async () => {
    const big = JSON.stringify({ email: 'a'.repeat(200_000) });
    for (const ct of ['application/json', 'text/plain']) {
      const a = await api(legacy(), 'POST', '/auth/login', { body: big, headers: { 'content-type': ct } });
      const b = await api(svc(), 'POST', '/auth/login', { body: big, headers: { 'content-type': ct } });
      assert.equal(a.status, ct === 'application/json' ? 413 : 400);
      assert.equal(b.status, a.status, ct);
      assert.deepEqual(b.body, a.body, ct);
    }
  });

  test('what Express does around the handlers: body parsing on every route, redirects, caching, bearer syntax', async () => {
    const u = await newUser(legacy());
    const both = async (method: string, path: string, opts: Parameters<typeof api>[3]) =>
      [await api(legacy(), method, path, opts), await api(svc(), method, path, opts)];
    // a malformed JSON body is a 400 before the guard, even where the handler reads no body
    for (const token of [undefined, u.accessToken]) {
      const [a, b] = await both('POST', '/auth/2fa/setup', { body: '{bad', token });
      assert.equal(a.status, 400);
      assert.equal(b.status, a.status);
    }
    const charset = await both('POST', '/auth/login', { body: '{}', headers: { 'content-type': 'application/json; charset=latin1' } });
    assert.deepEqual([charset[1].status, charset[1].body], [charset[0].status, charset[0].body]);
    for (const accept of ['application/json', 'text/html, text/plain', 'text/plain, text/html', '*/*']) {
      const [a, b] = await both('GET', '/auth/google', { headers: { accept } });
      assert.equal(b.status, 302, accept);
      assert.equal(b.headers.get('content-type'), a.headers.get('content-type'), accept);
      assert.equal(b.text.replace(/state=[^&<"]+/, ''), a.text.replace(/state=[^&<"]+/, ''), accept);
    }
    const jwks = await api(legacy(), 'GET', '/.well-known/jwks.json');
    const etag = jwks.headers.get('etag')!;
    const conditional: Record<string, string>[] = [{ 'if-none-match': etag }, { 'if-none-match': etag, 'cache-control': 'no-cache' }];
    for (const headers of conditional) {
      const [a, b] = await both('GET', '/.well-known/jwks.json', { headers });
      assert.equal(b.status, a.status, JSON.stringify(headers));
    }
    const [ta, tb] = await both('GET', '/auth/me', { headers: { authorization: `Bearer\t${u.accessToken}` } });
    assert.deepEqual([tb.status, ta.status], [200, 200]);
  });

  test('a token pair has the same shape and claims', async () => {
    const u = await newUser(legacy());
    const a = await post(legacy(), '/auth/login', { email: u.email, password: u.password });
    const b = await post(svc(), '/auth/login', { email: u.email, password: u.password });
    assert.deepEqual({ ...b.body, accessToken: 0, refreshToken: 0 }, { ...a.body, accessToken: 0, refreshToken: 0 });
    assert.equal(b.body.refreshToken.length, a.body.refreshToken.length);
    const parts = (t: string) => t.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url').toString()));
    const [ha, ca] = parts(a.body.accessToken);
    const [hb, cb] = parts(b.body.accessToken);
    assert.deepEqual(hb, ha);
    assert.deepEqual(Object.keys(cb), Object.keys(ca));
    assert.deepEqual([cb.sub, cb.email, cb.aud, cb.iss], [ca.sub, ca.email, ca.aud, ca.iss]);
    assert.equal(cb.exp - cb.iat, ca.exp - ca.iat);
  });
});

describe('what the service adds', () => {
  test('failed logins are rate limited per address, known or not; the monolith is unaffected', async () => {
    const u = await newUser(legacy());
    for (const email of [u.email, uniqueEmail('ghost')]) {
      for (let i = 0; i < 3; i++) assert.equal((await post(svc(), '/auth/login', { email, password: 'wrong-password' })).status, 401);
      const limited = await post(svc(), '/auth/login', { email, password: u.password });
      assert.equal(limited.status, 429, limited.text);
      assert.equal(limited.body.message, 'Too many attempts, try again later');
      assert.ok(Number(limited.headers.get('retry-after')) > 0);
    }
    assert.equal((await post(legacy(), '/auth/login', { email: u.email, password: u.password })).status, 200);
  });

  test('a success clears the account counter', async () => {
    const u = await newUser(legacy());
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 2; i++) await post(svc(), '/auth/login', { email: u.email, password: 'wrong-password' });
      assert.equal((await post(svc(), '/auth/login', { email: u.email, password: u.password })).status, 200);
    }
  });

  test('a dry run (the proxy shadow copy) answers in full and leaves nothing behind', async () => {
    const email = uniqueEmail('dry');
    const r = await post(svc(), '/auth/register', { email, password: 'password-1', displayName: 'Dry' }, undefined, signedDryRun('POST', '/auth/register'));
    assert.equal(r.status, 201, r.text);
    assert.equal(r.body.user.email, email);
    assert.equal((await env.db.query('SELECT 1 FROM legacy.users WHERE email = $1', [email])).rowCount, 0);
    assert.equal((await post(legacy(), '/auth/register', { email, password: 'password-1', displayName: 'Dry' })).status, 201);
  });

  // See: issue 10, "A dry run must never mint a usable credential and must never skip a rate limit".
  test('a dry-run login answers like a real one but its tokens work nowhere', async () => {
    const u = await newUser(legacy());
    const r = await post(svc(), '/auth/login', { email: u.email, password: u.password }, undefined, signedDryRun('POST', '/auth/login'));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.accessToken.split('.').length, 3);
    for (const side of [svc(), legacy()]) {
      const me = await api(side, 'GET', '/auth/me', { token: r.body.accessToken });
      assert.equal(me.status, 401, `a dry run's access token was accepted: ${me.text}`);
      const refreshed = await post(side, '/auth/refresh', { refreshToken: r.body.refreshToken });
      assert.equal(refreshed.status, 401, `a dry run's refresh token was accepted: ${refreshed.text}`);
    }
  });

  test('failed dry-run logins count towards the limit like real ones', async () => {
    const u = await newUser(legacy());
    for (let i = 0; i < 3; i++) {
      const r = await post(svc(), '/auth/login', { email: u.email, password: 'wrong-password' }, undefined, signedDryRun('POST', '/auth/login'));
      assert.equal(r.status, 401, r.text);
    }
    const limited = await post(svc(), '/auth/login', { email: u.email, password: u.password }, undefined, signedDryRun('POST', '/auth/login'));
    assert.equal(limited.status, 429, `a dry run skipped the limit: ${limited.text}`);
    assert.equal((await post(svc(), '/auth/login', { email: u.email, password: u.password })).status, 429);
  });

  // See: issue 10, "The dry-run header is trusted from anyone who can reach a service".
  test('a dry-run header the proxy did not sign runs nothing: 400', async () => {
    const email = uniqueEmail('forged');
    for (const headers of [
      { 'x-strangler-dry-run': '1' },
      signedDryRun('POST', '/auth/register', { secret: 'not-the-proxy-secret-0123456789ab' }),
      signedDryRun('POST', '/auth/register', { ageSecs: 120 }),
      signedDryRun('POST', '/auth/login'),
    ]) {
      const r = await post(svc(), '/auth/register', { email, password: 'password-1', displayName: 'Forged' }, undefined, headers);
      assert.equal(r.status, 400, r.text);
      assert.equal(r.body.statusCode, 400);
    }
    assert.equal((await env.db.query('SELECT 1 FROM legacy.users WHERE email = $1', [email])).rowCount, 0, 'a forged dry run wrote');
  });
});

describe('isolation: the service dies', () => {
  test('the rest of the API keeps working and idempotent auth reads fall back to the monolith', async () => {
    const u = await newUser(env.stack.url, 'Survivor');
    assert.equal((await api(env.stack.url, 'GET', '/auth/me', { token: u.accessToken })).status, 200);
    await env.stack.killAuth!();
    const me = await api(env.stack.url, 'GET', '/auth/me', { token: u.accessToken });
    assert.equal(me.status, 200, `GET /auth/me falls back to the monolith: ${me.text}`);
    assert.equal(me.body.id, u.id);
    assert.equal((await api(env.stack.url, 'GET', '/.well-known/jwks.json')).status, 200);
    assert.equal((await api(env.stack.url, 'GET', '/users/me', { token: u.accessToken })).status, 200);
    const chat = await api(env.stack.url, 'POST', '/graphql', {
      token: u.accessToken,
      body: { query: '{ chats { id } }' },
    });
    assert.equal(chat.status, 200, chat.text);
    assert.deepEqual(chat.body, { data: { chats: [] } });
    // the service never saw the login (its connection was refused): the monolith answers it
    const login = await post(env.stack.url, '/auth/login', { email: u.email, password: u.password });
    assert.equal(login.status, 200, login.text);
    assert.equal(login.body.user.id, u.id);
  });
});
