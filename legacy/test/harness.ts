// End-to-end test harness: starts the real monolith (dist/src/main.js) against the real
// Postgres and Redis of scripts/stack and the fake SaaS servers of the `fakes` crate, each on an
// ephemeral loopback port, and stops them after the test file.
import { ChildProcess, spawn } from 'node:child_process';
import { createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before } from 'node:test';
import { generateSync } from 'otplib';
import { Client } from 'pg';

export const LEGACY_DIR = resolve(__dirname, '..', '..');
export const REPO_DIR = resolve(LEGACY_DIR, '..');

export interface Stack {
  /** base URL clients use: the monolith, or the strangler proxy in front of it (auth service mode) */
  url: string;
  /** base URL of the monolith itself */
  legacyUrl: string;
  /** base URL of the extracted auth service (auth service mode only) */
  authUrl?: string;
  /** stops (SIGKILL) the auth service, to test what happens when it dies */
  killAuth?: () => Promise<void>;
  /** base URL of the extracted chat service (chat service mode only) */
  chatUrl?: string;
  /** stops (SIGKILL) the chat service */
  killChat?: () => Promise<void>;
  /** base URL of the fakes server (Stripe, FCM, Google, Gmail) */
  fakes: string;
  env: Record<string, string>;
  /** everything the monolith printed so far */
  logs(): string;
  stop(): Promise<void>;
}

export const STRIPE_WEBHOOK_SECRET = 'whsec_test_secret';

function requireEnv(name: string): string {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: run the tests with scripts/test, or \`scripts/stack up && source .run/stack.env\` first`);
  }
  return v;
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

let keyFile: string | undefined;
let publicKeyFile: string | undefined;
/** One RSA signing key per test process, like a deployment's configured key. */
export function jwtKeyFile(): string {
  if (!keyFile) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    keyFile = join(tmpdir(), `bm-legacy-test-${process.pid}.pem`);
    writeFileSync(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }));
  }
  return keyFile;
}

/** The public half of jwtKeyFile(), for services that only verify tokens (chat). */
export function jwtPublicKeyFile(): string {
  if (!publicKeyFile) {
    const pub = createPublicKey(createPrivateKey(readFileSync(jwtKeyFile())));
    publicKeyFile = join(tmpdir(), `bm-legacy-test-${process.pid}.pub.pem`);
    writeFileSync(publicKeyFile, pub.export({ format: 'pem', type: 'spki' }));
  }
  return publicKeyFile;
}

/** Spawns a process and resolves with it once a line of its output matches `ready`. */
function spawnUntil(cmd: string, args: string[], opts: { env: NodeJS.ProcessEnv; cwd?: string }, ready: RegExp, what: string) {
  return new Promise<{ child: ChildProcess; match: RegExpMatchArray; output: () => string }>((res, rej) => {
    const child = spawn(cmd, args, { env: opts.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let done = false;
    const timer = setTimeout(() => finish(new Error(`${what} did not start within 30 s:\n${out}`)), 30_000);
    const finish = (err?: Error, match?: RegExpMatchArray) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        child.kill('SIGKILL');
        rej(err);
      } else res({ child, match: match!, output: () => out });
    };
    const onData = (b: Buffer) => {
      out += b.toString();
      // strip ANSI colours before matching
      const m = out.replace(/\x1b\[[0-9;]*m/g, '').match(ready);
      if (m) finish(undefined, m);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => finish(new Error(`${what} exited with ${code} before it was ready:\n${out}`)));
  });
}

async function stopChild(child: ChildProcess) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

/**
 * Auth service mode (`BM_AUTH_VIA=service`, or `authService: true`): the extracted auth service
 * (`extracted/auth`, binary AUTH_BIN) runs beside the monolith on the same database, Redis and
 * signing key, and the strangler proxy (STRANGLER_BIN) in front of both routes `/auth` and the
 * JWKS to the service with `extracted` mode, everything else to the monolith. `url` is then the
 * proxy's, so a test file written against the monolith runs unchanged against the service.
 */
export const authViaService = () => process.env.BM_AUTH_VIA === 'service';

/**
 * Chat service mode (`BM_CHAT_VIA=service`, or `chatService: true`): the extracted chat service
 * (`extracted/chat`, binary CHAT_BIN) runs beside the monolith on the same database and Redis,
 * and the proxy sends every chat root field of `/graphql` (HTTP and the WebSocket) to it with
 * `extracted` mode (`chatRoute` replaces that route for tests of other splits).
 */
export const chatViaService = () => process.env.BM_CHAT_VIA === 'service';

/**
 * Notification service mode (`BM_NOTIFICATION_VIA=service`, or `notificationService: true`): the
 * extracted notification service (`extracted/notification`, binary NOTIFICATION_BIN) runs beside
 * the monolith on the same database, with a broker of its own (its push job needs one; the
 * pushes stay the monolith's unless a test switches them), and the proxy sends `/notifications`
 * to it with `extracted` mode.
 */
export const notificationViaService = () => process.env.BM_NOTIFICATION_VIA === 'service';

/** Every root field of docs/api/chat.graphql. */
export const CHAT_FIELDS = ['chats', 'chat', 'messages', 'createChat', 'sendMessage', 'editMessage', 'deleteMessage', 'markRead', 'messageAdded'];

export interface StackOptions {
  authService?: boolean;
  chatService?: boolean;
  notificationService?: boolean;
  /** the proxy's chat route(s), TOML, when not "every chat field extracted" */
  chatRoute?: string;
}

/** The secret the test proxy signs dry runs with and the test services verify them with. */
export const DRY_RUN_SECRET = 'test-dry-run-secret-0123456789abcdef';

/**
 * Headers of a dry run as the proxy signs it (strangler-protocol: HMAC-SHA256 over
 * `v1\n<time>\n<request id>\n<method>\n<target>\n`), optionally `ageSecs` old.
 */
export function signedDryRun(method: string, target: string, opts: { requestId?: string; ageSecs?: number; secret?: string } = {}) {
  const id = opts.requestId ?? randomUUID();
  const t = Math.floor(Date.now() / 1000) - (opts.ageSecs ?? 0);
  const mac = createHmac('sha256', opts.secret ?? DRY_RUN_SECRET).update(`v1\n${t}\n${id}\n${method}\n${target}\n`).digest('hex');
  return { 'x-request-id': id, 'x-strangler-dry-run': `v1;t=${t};s=${mac}` };
}

export async function startStack(extraEnv: Record<string, string> = {}, opts: StackOptions = {}): Promise<Stack> {
  const withAuth = opts.authService ?? authViaService();
  const withChat = opts.chatService ?? chatViaService();
  const withNotification = opts.notificationService ?? notificationViaService();
  const withProxy = withAuth || withChat || withNotification;
  const databaseUrl = requireEnv('DATABASE_URL');
  const redisUrl = requireEnv('REDIS_URL');
  const fakesBin = process.env.FAKES_BIN || join(REPO_DIR, 'target', 'debug', 'fakes');
  if (!existsSync(fakesBin)) throw new Error(`${fakesBin} is missing: build it with \`cargo build -p fakes\``);

  const port = await freePort();
  const legacyUrl = `http://127.0.0.1:${port}`;
  const proxyPort = withProxy ? await freePort() : port;
  const url = `http://127.0.0.1:${proxyPort}`;
  const fakes = await spawnUntil(
    fakesBin,
    ['--listen', '127.0.0.1:0', '--stripe-webhook-url', `${legacyUrl}/payments/webhook`, '--stripe-webhook-secret', STRIPE_WEBHOOK_SECRET],
    { env: { ...process.env, RUST_LOG: 'warn' } },
    /listening on (http:\/\/\S+)/,
    'fakes',
  );
  const fakesUrl = fakes.match[1];
  const env: Record<string, string> = {
    PORT: String(port),
    HOST: '127.0.0.1',
    DATABASE_URL: databaseUrl,
    REDIS_URL: redisUrl,
    JWT_PRIVATE_KEY_FILE: jwtKeyFile(),
    BCRYPT_COST: '4',
    GOOGLE_ACCOUNTS_BASE_URL: fakesUrl,
    GOOGLE_OAUTH2_BASE_URL: fakesUrl,
    GOOGLE_OPENID_BASE_URL: fakesUrl,
    GMAIL_BASE_URL: fakesUrl,
    FCM_BASE_URL: fakesUrl,
    STRIPE_BASE_URL: fakesUrl,
    STRIPE_WEBHOOK_SECRET,
    // the extracted services verify the proxy's dry runs with it (the monolith ignores it)
    DRY_RUN_SECRET,
    // links and the OAuth redirect name the address clients use
    ...(withProxy ? { APP_URL: url } : {}),
    ...extraEnv,
  };
  let legacy;
  try {
    legacy = await spawnUntil(
      process.execPath,
      [join(LEGACY_DIR, 'dist', 'src', 'main.js')],
      { env: { PATH: process.env.PATH, ...env }, cwd: LEGACY_DIR },
      /listening on http:\/\//,
      'the monolith',
    );
  } catch (e) {
    await stopChild(fakes.child);
    throw e;
  }
  const children = [legacy.child, fakes.child];
  // stopped after the children (a broker outlives the service consuming from it)
  const stopLast: (() => Promise<void>)[] = [];
  const stack: Stack = {
    url,
    legacyUrl,
    fakes: fakesUrl,
    env,
    logs: legacy.output,
    async stop() {
      await Promise.all(children.map(stopChild));
      for (const stop of stopLast) await stop();
    },
  };
  if (!withProxy) return stack;
  try {
    const upstreams: Upstreams = {};
    const prevLogs = stack.logs;
    const logs: (() => string)[] = [];
    if (withAuth) {
      const auth = await startAuthService(env);
      children.push(auth.child);
      stack.authUrl = upstreams.auth = auth.url;
      stack.killAuth = () => kill(auth.child);
      logs.push(() => `--- auth service ---\n${auth.output()}`);
    }
    if (withChat) {
      const chat = await startChatService(env);
      children.push(chat.child);
      stack.chatUrl = upstreams.chat = chat.url;
      stack.killChat = () => kill(chat.child);
      upstreams.chatRoute = opts.chatRoute;
      logs.push(() => `--- chat service ---\n${chat.output()}`);
    }
    if (withNotification) {
      const broker = await startBroker();
      stopLast.push(broker.stop);
      const n = await startNotificationService({
        DATABASE_URL: env.DATABASE_URL,
        FCM_BASE_URL: env.FCM_BASE_URL,
        KAFKA_BROKERS: broker.brokers,
        PUSH_GROUP: `notification-${randomUUID()}`,
      });
      children.push(n.child);
      upstreams.notification = n.url;
      logs.push(() => `--- notification service ---\n${n.output()}`);
    }
    const proxy = await startProxy(proxyPort, legacyUrl, upstreams);
    children.push(proxy);
    stack.logs = () => [prevLogs(), ...logs.map((l) => l())].join('\n');
  } catch (e) {
    await stack.stop();
    throw e;
  }
  return stack;
}

async function kill(child: ChildProcess) {
  child.kill('SIGKILL');
  if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
}

/**
 * An extracted service's binary (`$<binVar>` or target/debug/<crate>) on an ephemeral port of
 * loopback, with warnings-only logs, the test key that verifies access tokens and `env`; resolved
 * once it prints where it listens.
 */
async function startExtracted(crate: string, binVar: string, what: string, env: Record<string, string | undefined>) {
  const bin = process.env[binVar] || join(REPO_DIR, 'target', 'debug', crate);
  if (!existsSync(bin)) throw new Error(`${bin} is missing: build it with \`cargo build -p ${crate}\``);
  const s = await spawnUntil(
    bin,
    [],
    { env: { PATH: process.env.PATH, RUST_LOG: 'warn', PORT: '0', HOST: '127.0.0.1', JWT_PUBLIC_KEY_FILE: jwtPublicKeyFile(), ...env } },
    /listening on (http:\/\/\S+)/,
    what,
  );
  return { child: s.child, url: s.match[1], output: s.output, stop: () => stopChild(s.child) };
}

/** The extracted chat service on an ephemeral port, with the monolith's database, Redis and FCM. */
export async function startChatService(env: Record<string, string>) {
  return startExtracted('bm-chat', 'CHAT_BIN', 'the chat service', {
    DATABASE_URL: env.DATABASE_URL,
    REDIS_URL: env.REDIS_URL,
    FCM_BASE_URL: env.FCM_BASE_URL,
    DRY_RUN_SECRET: env.DRY_RUN_SECRET,
    ...(env.NODE_ENV ? { NODE_ENV: env.NODE_ENV } : {}),
    // its outbox relay: CHAT_KAFKA_BROKERS gives the service a broker the monolith lacks
    ...(env.CHAT_KAFKA_BROKERS || env.KAFKA_BROKERS ? { KAFKA_BROKERS: env.CHAT_KAFKA_BROKERS || env.KAFKA_BROKERS } : {}),
    // the chat shards' URLs, as the shard map names them (docs/chat-sharding.md)
    ...Object.fromEntries(Object.entries(env).filter(([k]) => k.startsWith('CHAT_SHARD_'))),
  });
}

/** The extracted auth service on an ephemeral port, with the monolith's environment. */
export async function startAuthService(env: Record<string, string>) {
  const bin = process.env.AUTH_BIN || join(REPO_DIR, 'target', 'debug', 'bm-auth');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: build it with \`cargo build -p bm-auth\``);
  const port = await freePort();
  const s = await spawnUntil(
    bin,
    [],
    { env: { PATH: process.env.PATH, RUST_LOG: 'warn', ...env, PORT: String(port) } },
    /listening on (http:\/\/\S+)/,
    'the auth service',
  );
  return { child: s.child, url: s.match[1], output: s.output };
}

interface Upstreams {
  auth?: string;
  chat?: string;
  notification?: string;
  chatRoute?: string;
}

/**
 * The strangler proxy on `port`: /auth and the JWKS to the auth service, the chat fields of
 * /graphql to the chat service, /notifications to the notification service (each when given,
 * `extracted`), the rest to the monolith.
 */
async function startProxy(port: number, legacyUrl: string, up: Upstreams): Promise<ChildProcess> {
  const bin = process.env.STRANGLER_BIN || join(REPO_DIR, 'target', 'debug', 'strangler');
  if (!existsSync(bin)) throw new Error(`${bin} is missing: build it with \`cargo build -p strangler\``);
  const dir = mkdtempSync(join(tmpdir(), 'bm-proxy-'));
  const config = join(dir, 'routes.toml');
  let toml = `[server]
default_upstream = "legacy"
threads = 1
grace_period_secs = 0
shutdown_timeout_secs = 1
[[listeners]]
addr = "127.0.0.1:${port}"
[admin]
addr = "127.0.0.1:${await freePort()}"
[upstreams.legacy]
url = "${legacyUrl}"
`;
  if (up.chat) {
    toml = `[graphql]\nschema = "${join(REPO_DIR, 'docs', 'api', 'chat.graphql')}"\n` + toml;
    toml += `[upstreams.chat]
url = "${up.chat}"
dry_run = true
${
  up.chatRoute ??
  `[[routes]]
name = "chat"
match = { path = "/graphql", graphql_fields = ${JSON.stringify(CHAT_FIELDS)} }
target = "chat"
mode = "extracted"
breaker = { failures = 3, cooldown_secs = 2 }
`
}
`;
  }
  if (up.notification) {
    toml += `[upstreams.notification]
url = "${up.notification}"
dry_run = true
[[routes]]
name = "notification"
match = { path_prefix = "/notifications" }
target = "notification"
mode = "extracted"
breaker = { failures = 3, cooldown_secs = 2 }
`;
  }
  if (up.auth) {
    toml += `[upstreams.auth]
url = "${up.auth}"
[[routes]]
name = "auth"
match = { path_prefix = "/auth" }
target = "auth"
mode = "extracted"
breaker = { failures = 3, cooldown_secs = 2 }
[[routes]]
name = "jwks"
match = { path = "/.well-known/jwks.json" }
target = "auth"
mode = "extracted"
`;
  }
  writeFileSync(config, toml);
  const child = spawn(bin, ['serve', '--config', config], {
    env: { PATH: process.env.PATH, STRANGLER_LOG: 'warn', STRANGLER_DRY_RUN_SECRET: DRY_RUN_SECRET },
    stdio: 'ignore',
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => (await fetch(`${url}/health`).catch(() => undefined))?.status === 200, 'the strangler proxy', 20_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return child;
}

export interface Res {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

export async function api(
  base: string,
  method: string,
  path: string,
  opts: { body?: unknown; token?: string; headers?: Record<string, string>; redirect?: RequestRedirect } = {},
): Promise<Res> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(base + path, { method, headers, body, redirect: opts.redirect ?? 'manual' });
  const text = await res.text();
  let parsed: any = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON */
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** A GraphQL request over HTTP POST /graphql. */
export async function gql(base: string, query: string, variables: Record<string, unknown> = {}, token?: string): Promise<Res> {
  return api(base, 'POST', '/graphql', { body: { query, variables }, token });
}

export const uniqueEmail = (prefix = 'user') => `${prefix}.${randomBytes(6).toString('hex')}@example.test`;

export interface TestUser {
  id: string;
  email: string;
  password: string;
  displayName: string;
  accessToken: string;
  refreshToken: string;
}

/** Registers a fresh user and returns its credentials and tokens. */
export async function newUser(base: string, displayName = 'Test User'): Promise<TestUser> {
  const email = uniqueEmail(displayName.toLowerCase().replace(/\W+/g, '') || 'user');
  const password = `pw-${randomBytes(8).toString('hex')}`;
  const r = await api(base, 'POST', '/auth/register', { body: { email, password, displayName } });
  if (r.status !== 201) throw new Error(`register failed: ${r.status} ${r.text}`);
  return { id: r.body.user.id, email, password, displayName, accessToken: r.body.accessToken, refreshToken: r.body.refreshToken };
}

export const totp = (secret: string) => generateSync({ secret });

/** Polls `probe` until it returns a truthy value (or throws after `timeoutMs`). */
export async function waitFor<T>(probe: () => Promise<T | undefined | null | false>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts the monolith + fakes before the file's tests and stops them after, with a Postgres
 * client on the same database for checking what the monolith stored.
 */
export function withStack(extraEnv: Record<string, string> = {}, opts: StackOptions = {}): { stack: Stack; db: Client } {
  const ctx = {} as { stack: Stack; db: Client };
  before(async () => {
    ctx.stack = await startStack(extraEnv, opts);
    ctx.db = new Client({ connectionString: process.env.DATABASE_URL });
    await ctx.db.connect();
  });
  after(async () => {
    await ctx.db?.end();
    await ctx.stack?.stop();
  });
  return ctx;
}

/**
 * A private Kafka-protocol broker (tansu, TANSU_BIN, SQLite engine in a temporary folder) on a
 * free port, with the stack's topics (bm-events ensure-topics): a test that consumes from the
 * beginning or switches consumer groups sees only its own events.
 */
export async function startBroker(): Promise<{ brokers: string; stop: () => Promise<void> }> {
  const bin = requireEnv('TANSU_BIN');
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'tansu-'));
  const url = `tcp://127.0.0.1:${port}`;
  const child = spawn(bin, ['broker', '--storage-engine', 'sqlite://tansu.db', '--listener-url', url, '--advertised-listener-url', url], {
    cwd: dir,
    env: { PATH: process.env.PATH, RUST_LOG: 'warn' },
    stdio: 'ignore',
  });
  const brokers = `127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGINT');
    await exited;
  };
  try {
    await waitFor(
      () =>
        new Promise<boolean>((res) => {
          const s = connect(port, '127.0.0.1');
          s.once('connect', () => (s.destroy(), res(true)));
          s.once('error', () => res(false));
        }),
      'the broker',
      30_000,
    );
    const topics = spawn(join(REPO_DIR, 'target', 'debug', 'bm-events'), ['ensure-topics'], {
      env: { PATH: process.env.PATH, KAFKA_BROKERS: brokers },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const code = await new Promise((r) => topics.once('exit', r));
    if (code !== 0) throw new Error(`bm-events ensure-topics exited with ${code}`);
  } catch (e) {
    await stop();
    throw e;
  }
  return { brokers, stop };
}

/** The notification service (NOTIFICATION_BIN) on an ephemeral port: its push job on `brokers`. */
export async function startNotificationService(env: Record<string, string>) {
  return startExtracted('bm-notification', 'NOTIFICATION_BIN', 'the notification service', { DRY_RUN_SECRET, ...env });
}
