// The transactional outbox (docs/events.md): events are written in the transaction that causes
// them (`enqueueEvent`) and published to Kafka by a relay that marks them published. The same
// table and the same relay lock as the extracted services' relay (extracted/events/src/relay.rs):
// whichever process holds the lock publishes, in `seq` order, at least once.
import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger, Module, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { Kafka, logLevel, Partitioners, Producer } from 'kafkajs';
import { Client, PoolClient } from 'pg';
import { Config, CONFIG } from '../config';
import { Db } from './infra.module';

/** The relay's advisory lock: the bytes of "outbox", as in relay.rs LOCK_KEY. */
const LOCK_KEY = '122550254464888';
const NOTIFY_CHANNEL = 'legacy_outbox';
const BATCH = 500;
const POLL_MS = 1000;
const RETENTION_SECS = 24 * 3600;

export interface OutboxEvent {
  id: string;
  topic: string;
  key: string;
  type: string;
  version: number;
  payload: string;
}

/** Writes an event in the caller's transaction; the relay wakes at commit. */
export async function enqueueEvent(c: PoolClient, e: OutboxEvent): Promise<void> {
  await c.query(
    `WITH ins AS (INSERT INTO legacy.outbox (id, topic, key, type, version, payload) VALUES ($1, $2, $3, $4, $5, $6))
     SELECT pg_notify($7, '')`,
    [e.id, e.topic, e.key, e.type, e.version, e.payload, NOTIFY_CHANNEL],
  );
}

/** `message.sent` v1 (docs/events/message.sent.v1.json), keyed by chat. */
export function messageSentEvent(m: {
  chatId: string;
  messageId: string;
  seq: string;
  senderId: string;
  senderName: string;
  chatTitle: string | null;
  body: string;
  recipients: string[];
  pushedInProcess: boolean;
  at: Date;
}): OutboxEvent {
  const id = randomUUID();
  const payload = {
    id,
    type: 'message.sent',
    version: 1,
    occurredAt: m.at.toISOString(),
    producer: 'monolith',
    chatId: m.chatId,
    messageId: m.messageId,
    seq: m.seq,
    senderId: m.senderId,
    senderName: m.senderName,
    chatTitle: m.chatTitle,
    body: m.body,
    recipients: m.recipients,
    pushedInProcess: m.pushedInProcess,
  };
  return { id, topic: 'message.sent', key: m.chatId, type: 'message.sent', version: 1, payload: JSON.stringify(payload) };
}


@Injectable()
export class OutboxRelay implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly log = new Logger('OutboxRelay');
  private stopping = false;
  private running?: Promise<void>;
  private wake?: () => void;

  constructor(
    private readonly db: Db,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  onApplicationBootstrap() {
    if (this.config.kafka) this.running = this.run(this.config.kafka.brokers);
  }

  async onApplicationShutdown() {
    this.stopping = true;
    this.wake?.();
    await this.running;
  }

  /** Sleeps up to `ms`, or until woken (a notification, shutdown). */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    });
  }

  private async run(brokers: string[]) {
    while (!this.stopping) {
      try {
        await this.lead(brokers);
      } catch (e) {
        this.log.warn(`outbox relay: ${(e as Error).message}; retrying in 1 s`);
        if (!this.stopping) await this.pause(1000);
      }
    }
  }

  private async lead(brokers: string[]) {
    // the lock lives as long as this connection of its own; it also receives the notifications
    const lock = new Client({ connectionString: this.config.databaseUrl });
    lock.on('error', () => undefined);
    await lock.connect();
    let producer: Producer | undefined;
    try {
      for (;;) {
        if (this.stopping) return;
        const r = await lock.query<{ got: boolean }>('SELECT pg_try_advisory_lock($1::bigint) AS got', [LOCK_KEY]);
        if (r.rows[0].got) break;
        await this.pause(2 * POLL_MS);
      }
      lock.on('notification', () => this.wake?.());
      await lock.query(`LISTEN ${NOTIFY_CHANNEL}`);
      this.log.log('outbox relay: leading');
      // no idempotent producer: it wedges this broker (FACTS.md); one request in flight keeps
      // the order across retries instead. The default (Java-compatible murmur2) partitioner is
      // the one librdkafka's relay uses, so a chat's events land in one partition from either.
      const kafka = new Kafka({ clientId: 'brainmessenger-monolith', brokers, logLevel: logLevel.ERROR });
      producer = kafka.producer({ maxInFlightRequests: 1, allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
      await producer.connect();
      let pruned = 0;
      while (!this.stopping) {
        await lock.query('SELECT 1'); // still holding the lock?
        if (Date.now() - pruned > 60_000) {
          await this.db.query('DELETE FROM legacy.outbox WHERE published_at < now() - make_interval(secs => $1)', [RETENTION_SECS]);
          pruned = Date.now();
        }
        const n = await this.publishBatch(producer);
        if (n < BATCH) await this.pause(POLL_MS);
      }
    } finally {
      await producer?.disconnect().catch(() => undefined);
      await lock.end().catch(() => undefined);
    }
  }

  /** Publishes the oldest unpublished rows (all acknowledged, `acks: -1`) and marks them. */
  private async publishBatch(producer: Producer): Promise<number> {
    const rows = await this.db.query<OutboxEvent>(
      'SELECT id, topic, key, type, version, payload FROM legacy.outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1',
      [BATCH],
    );
    if (!rows.length) return 0;
    const byTopic = new Map<string, { key: string; value: string; headers: Record<string, string> }[]>();
    for (const r of rows) {
      const list = byTopic.get(r.topic) ?? [];
      list.push({
        key: r.key,
        value: r.payload,
        headers: { 'event-id': r.id, 'event-type': r.type, 'event-version': String(r.version) },
      });
      byTopic.set(r.topic, list);
    }
    await producer.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
    await this.db.query('UPDATE legacy.outbox SET published_at = now() WHERE id = ANY($1::uuid[])', [rows.map((r) => r.id)]);
    return rows.length;
  }
}

/** The relay, started when KAFKA_BROKERS is set. */
@Module({ providers: [OutboxRelay] })
export class OutboxModule {}
