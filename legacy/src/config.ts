// Typed configuration from the environment, validated as a whole at start-up: every problem is
// reported at once and the process exits before it listens.
import { createPrivateKey, createPublicKey, KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';

export interface Config {
  host: string;
  port: number;
  databaseUrl: string;
  redisUrl: string;
  /** Public base URL of this API (links in e-mails, OAuth redirect). */
  appUrl: string;
  jwt: {
    privateKey: KeyObject;
    publicKey: KeyObject;
    keyId: string;
    issuer: string;
    audience: string;
    accessTtlSecs: number;
    refreshTtlSecs: number;
  };
  bcryptCost: number;
  google: {
    clientId: string;
    clientSecret: string;
    accountsBaseUrl: string;
    oauth2BaseUrl: string;
    openidBaseUrl: string;
    redirectUri: string;
  };
  gmail: { baseUrl: string; accessToken: string; from: string };
  fcm: { baseUrl: string; projectId: string; accessToken: string };
  /** The brokers the outbox relay publishes to (KAFKA_BROKERS); null: events stay in the outbox for another relay. */
  kafka: { brokers: string[] } | null;
  stripe: { baseUrl: string; secretKey: string; webhookSecret: string; successUrl: string; cancelUrl: string };
  calls: {
    maxParticipants: number;
    /** signalling WebSocket heartbeat: a socket that misses one ping interval is dropped */
    heartbeatMs: number;
    /** how long an ended call stays readable through GET /calls/:id */
    endedRetentionSecs: number;
  };
}

export class ConfigError extends Error {}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];
  const str = (name: string, fallback?: string): string => {
    const v = env[name] ?? fallback;
    if (v === undefined || v === '') {
      problems.push(`${name} is not set`);
      return '';
    }
    return v;
  };
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) {
      problems.push(`${name}=${raw} is not an integer in ${min}..${max}`);
      return fallback;
    }
    return n;
  };
  const url = (name: string, fallback?: string): string => {
    const v = str(name, fallback).replace(/\/+$/, '');
    if (v) {
      try {
        new URL(v);
      } catch {
        problems.push(`${name}=${v} is not a URL`);
      }
    }
    return v;
  };

  const port = int('PORT', 3000, 0, 65535);
  const appUrl = url('APP_URL', `http://127.0.0.1:${port}`);
  let privateKey: KeyObject | undefined;
  let publicKey: KeyObject | undefined;
  const keyFile = str('JWT_PRIVATE_KEY_FILE');
  if (keyFile) {
    try {
      privateKey = createPrivateKey(readFileSync(keyFile));
      if (privateKey.asymmetricKeyType !== 'rsa') problems.push(`JWT_PRIVATE_KEY_FILE ${keyFile}: an RSA key is required (RS256)`);
      publicKey = createPublicKey(privateKey);
    } catch (e) {
      problems.push(`JWT_PRIVATE_KEY_FILE ${keyFile}: ${(e as Error).message}`);
    }
  }
  const config: Config = {
    host: env.HOST || '127.0.0.1',
    port,
    databaseUrl: str('DATABASE_URL'),
    redisUrl: str('REDIS_URL'),
    appUrl,
    jwt: {
      privateKey: privateKey as KeyObject,
      publicKey: publicKey as KeyObject,
      keyId: env.JWT_KEY_ID || 'brainmessenger-1',
      issuer: env.JWT_ISSUER || 'https://brainmessenger.local',
      audience: env.JWT_AUDIENCE || 'brainmessenger-api',
      accessTtlSecs: int('JWT_ACCESS_TTL_SECS', 900, 10, 86400),
      refreshTtlSecs: int('JWT_REFRESH_TTL_SECS', 30 * 86400, 60, 365 * 86400),
    },
    bcryptCost: int('BCRYPT_COST', 10, 4, 15),
    google: {
      clientId: env.GOOGLE_CLIENT_ID || 'brainmessenger-dev.apps.googleusercontent.com',
      clientSecret: env.GOOGLE_CLIENT_SECRET || 'dev-secret',
      accountsBaseUrl: url('GOOGLE_ACCOUNTS_BASE_URL', 'https://accounts.google.com'),
      oauth2BaseUrl: url('GOOGLE_OAUTH2_BASE_URL', 'https://oauth2.googleapis.com'),
      openidBaseUrl: url('GOOGLE_OPENID_BASE_URL', 'https://openidconnect.googleapis.com'),
      redirectUri: url('GOOGLE_REDIRECT_URI', `${appUrl}/auth/google/callback`),
    },
    gmail: {
      baseUrl: url('GMAIL_BASE_URL', 'https://gmail.googleapis.com'),
      accessToken: env.GMAIL_ACCESS_TOKEN || 'dev-gmail-token',
      from: env.MAIL_FROM || 'BrainMessenger <no-reply@brainmessenger.local>',
    },
    fcm: {
      baseUrl: url('FCM_BASE_URL', 'https://fcm.googleapis.com'),
      projectId: env.FCM_PROJECT_ID || 'brainmessenger-dev',
      accessToken: env.FCM_ACCESS_TOKEN || 'dev-fcm-token',
    },
    kafka: env.KAFKA_BROKERS ? { brokers: env.KAFKA_BROKERS.split(',').map((b) => b.trim()) } : null,
    stripe: {
      baseUrl: url('STRIPE_BASE_URL', 'https://api.stripe.com'),
      secretKey: env.STRIPE_SECRET_KEY || 'sk_test_dev',
      webhookSecret: env.STRIPE_WEBHOOK_SECRET || 'whsec_dev',
      successUrl: url('STRIPE_SUCCESS_URL', `${appUrl}/payments/success`),
      cancelUrl: url('STRIPE_CANCEL_URL', `${appUrl}/payments/cancel`),
    },
    calls: {
      maxParticipants: int('CALL_MAX_PARTICIPANTS', 50, 2, 1000),
      heartbeatMs: int('CALL_HEARTBEAT_MS', 30_000, 100, 600_000),
      endedRetentionSecs: int('CALL_ENDED_RETENTION_SECS', 3600, 1, 86400),
    },
  };
  if (problems.length) throw new ConfigError(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
  return config;
}

export const CONFIG = Symbol('CONFIG');
