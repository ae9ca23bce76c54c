// Fan-out of call events between monolith processes through Redis pub/sub. Every event (a relayed
// offer/answer/ice, a peer joining or leaving, a call ending) is published on one channel; every
// process, this one included, receives it and delivers it to the sockets it holds. So a sender
// and a receiver connected to different instances still reach each other.
//
// Pub/sub is fire-and-forget: an event published while a process is (re)subscribing is lost for
// that process's sockets. Signalling clients recover by renegotiating (see docs/api/calls.md).
import { Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { Redis } from 'ioredis';
import { RedisClient } from '../infra/infra.module';

export const SIGNAL_CHANNEL = 'calls:signal';

export type CallEvent =
  | { kind: 'peer-joined'; callId: string; userId: string; joinedAt: string }
  | { kind: 'peer-left'; callId: string; userId: string }
  | { kind: 'call-ended'; callId: string; endedBy: string | null }
  | { kind: 'relay'; callId: string; to: string; message: Record<string, unknown> };

@Injectable()
export class SignalBus implements OnModuleInit, OnApplicationShutdown {
  private readonly log = new Logger('SignalBus');
  private sub: Redis;
  private handlers: ((e: CallEvent) => void)[] = [];

  constructor(private readonly redis: RedisClient) {}

  async onModuleInit() {
    // a subscribed connection cannot run other commands: use a dedicated one
    this.sub = this.redis.duplicate();
    this.sub.on('message', (_channel: string, raw: string) => {
      let e: CallEvent;
      try {
        e = JSON.parse(raw);
      } catch {
        this.log.warn(`ignoring a malformed event on ${SIGNAL_CHANNEL}`);
        return;
      }
      for (const h of this.handlers) h(e);
    });
    await this.sub.subscribe(SIGNAL_CHANNEL);
  }

  onEvent(handler: (e: CallEvent) => void) {
    this.handlers.push(handler);
  }

  async publish(e: CallEvent): Promise<void> {
    await this.redis.publish(SIGNAL_CHANNEL, JSON.stringify(e));
  }

  async onApplicationShutdown() {
    await this.sub?.quit().catch(() => undefined);
  }
}
