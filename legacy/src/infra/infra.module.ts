// Process-wide resources: configuration, the Postgres pool, Redis, and the outbound HTTP client
// for third-party APIs. (The outbox relay to Kafka is outbox.ts's OutboxModule.) Global, so feature modules inject them without importing this module.
import { Global, Inject, Injectable, Module, OnApplicationShutdown } from '@nestjs/common';
import { Redis } from 'ioredis';
import { Pool, PoolClient, QueryResultRow } from 'pg';
import { Config, CONFIG, loadConfig } from '../config';

@Injectable()
export class Db implements OnApplicationShutdown {
  readonly pool: Pool;
  constructor(@Inject(CONFIG) config: Config) {
    this.pool = new Pool({ connectionString: config.databaseUrl, max: 20 });
  }
  async query<R extends QueryResultRow = any>(sql: string, params: unknown[] = []): Promise<R[]> {
    return (await this.pool.query<R>(sql, params)).rows;
  }
  async one<R extends QueryResultRow = any>(sql: string, params: unknown[] = []): Promise<R | undefined> {
    return (await this.pool.query<R>(sql, params)).rows[0];
  }
  /** Runs `fn` in a transaction: committed when it resolves, rolled back when it throws. */
  async tx<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      c.release();
    }
  }
  async onApplicationShutdown() {
    await this.pool.end();
  }
}

@Injectable()
export class RedisClient extends Redis implements OnApplicationShutdown {
  constructor(@Inject(CONFIG) config: Config) {
    super(config.redisUrl, { maxRetriesPerRequest: 2, lazyConnect: false });
  }
  async onApplicationShutdown() {
    await this.quit().catch(() => undefined);
  }
}

/** Error from a third-party API, with its status and body (for logs; never shown to clients). */
export class UpstreamError extends Error {
  constructor(
    readonly service: string,
    readonly status: number,
    readonly body: unknown,
  ) {
    super(`${service} answered ${status}: ${JSON.stringify(body).slice(0, 300)}`);
  }
}

/** Outbound HTTP to third-party APIs (Stripe, FCM, Google, Gmail) with a timeout. */
@Injectable()
export class HttpClient {
  async request(
    service: string,
    url: string,
    init: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs?: number } = {},
  ): Promise<{ status: number; body: any }> {
    const res = await fetch(url, {
      method: init.method ?? 'GET',
      headers: init.headers,
      body: init.body,
      signal: AbortSignal.timeout(init.timeoutMs ?? 10_000),
    });
    const text = await res.text();
    let body: any = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON: keep the text */
    }
    return { status: res.status, body };
  }
  async json(service: string, url: string, init: Parameters<HttpClient['request']>[2] = {}): Promise<any> {
    const r = await this.request(service, url, init);
    if (r.status < 200 || r.status >= 300) throw new UpstreamError(service, r.status, r.body);
    return r.body;
  }
}

@Global()
@Module({
  providers: [{ provide: CONFIG, useFactory: () => loadConfig() }, Db, RedisClient, HttpClient],
  exports: [CONFIG, Db, RedisClient, HttpClient],
})
export class InfraModule {}
