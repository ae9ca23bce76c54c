// messageAdded between processes — and, during the chat cut-over, between the monolith and the
// extracted chat service (extracted/chat/src/bus.rs) — through Redis pub/sub. Each new message is
// published once, after its commit, on `messageAdded:<chatId>` as `{"messageAdded": <Message>}`
// (JSON: ISO dates, the sender object, seq as a string). Every process subscribes to the channels
// of the chats its sockets watch and delivers what arrives to them, whichever side sent it.
//
// Pub/sub is fire-and-forget: a message published while a process is (re)connecting to Redis is
// lost for that process's subscribers; clients re-fetch `messages` after a reconnect
// (docs/api/chat.md).
import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { PubSubEngine } from 'graphql-subscriptions';
import { Redis } from 'ioredis';
import { RedisClient } from '../infra/infra.module';

export const messageAddedChannel = (chatId: string) => `messageAdded:${chatId}`;

/** Message fields that are Dates in resolvers (the DateTime scalar serialises Dates only). */
const DATE_FIELDS = new Set(['createdAt', 'editedAt', 'deletedAt']);
const revive = (key: string, value: unknown) => (DATE_FIELDS.has(key) && typeof value === 'string' ? new Date(value) : value);

@Injectable()
export class ChatBus extends PubSubEngine implements OnModuleInit, OnApplicationShutdown {
  private readonly log = new Logger('ChatBus');
  private sub: Redis;
  private nextId = 0;
  private readonly subscriptions = new Map<number, { channel: string; onMessage: (payload: unknown) => void }>();
  private readonly byChannel = new Map<string, Set<number>>();

  constructor(private readonly redis: RedisClient) {
    super();
  }

  onModuleInit() {
    // a subscribed connection cannot run other commands: use a dedicated one
    this.sub = this.redis.duplicate();
    this.sub.on('message', (channel: string, raw: string) => {
      const ids = this.byChannel.get(channel);
      if (!ids) return;
      let payload: unknown;
      try {
        payload = JSON.parse(raw, revive);
      } catch {
        this.log.warn(`ignoring a malformed message on ${channel}`);
        return;
      }
      for (const id of ids) this.subscriptions.get(id)?.onMessage(payload);
    });
  }

  async publish(channel: string, payload: unknown): Promise<void> {
    await this.redis.publish(channel, JSON.stringify(payload));
  }

  async subscribe(channel: string, onMessage: (payload: unknown) => void): Promise<number> {
    const id = ++this.nextId;
    this.subscriptions.set(id, { channel, onMessage });
    let ids = this.byChannel.get(channel);
    if (!ids) {
      ids = new Set();
      this.byChannel.set(channel, ids);
      ids.add(id);
      await this.sub.subscribe(channel);
    } else {
      ids.add(id);
    }
    return id;
  }

  unsubscribe(id: number) {
    const s = this.subscriptions.get(id);
    if (!s) return;
    this.subscriptions.delete(id);
    const ids = this.byChannel.get(s.channel);
    ids?.delete(id);
    if (ids && ids.size === 0) {
      this.byChannel.delete(s.channel);
      this.sub.unsubscribe(s.channel).catch(() => undefined);
    }
  }

  async onApplicationShutdown() {
    await this.sub?.quit().catch(() => undefined);
  }
}
