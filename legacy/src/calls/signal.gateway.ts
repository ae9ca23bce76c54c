// WebRTC signalling over the WebSocket at /calls/signal (protocol in docs/api/calls.md).
//
// The `ws` server runs with noServer and takes from the Nest HTTP server's 'upgrade' event only
// the requests whose path is exactly /calls/signal; every other upgrade (GraphQL subscriptions on
// /graphql, ...) is left alone for its own listener. The token is checked before the handshake is
// accepted: a bad one gets a plain HTTP 401.
//
// A socket joins one call it is a participant of (joined through REST), then relays offer/answer/
// ice to other participants with `from` set by the server. Deliveries go through SignalBus (Redis
// pub/sub), so the sender and the receiver may be connected to different processes. Closing a
// user's last socket in a call (counted in Redis across processes) makes the user leave the call.
import {
  BeforeApplicationShutdown,
  Inject,
  Injectable,
  Logger,
  OnApplicationBootstrap,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { isUUID } from 'class-validator';
import { WebSocket, WebSocketServer } from 'ws';
import { bearerOf } from '../auth/auth.guard';
import { TokensService } from '../auth/tokens.service';
import { Config, CONFIG } from '../config';
import { CallsService } from './calls.service';
import { CallsStore } from './calls.store';
import { CallEvent, SignalBus } from './signal.bus';

export const SIGNAL_PATH = '/calls/signal';

/** Close codes sent to signalling clients. */
export const CloseCode = {
  callEnded: 4000,
  leftCall: 4001,
  notParticipant: 4403,
  callNotFound: 4404,
  callGone: 4410,
  shuttingDown: 1001,
} as const;

const RELAYED = new Set(['offer', 'answer', 'ice']);

interface Conn {
  ws: WebSocket;
  userId: string;
  /** set once the socket has joined a call */
  callId?: string;
  chatId?: string;
  alive: boolean;
  /** messages of one socket are handled one after the other, in order */
  queue: Promise<void>;
}

@Injectable()
export class SignalGateway implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly log = new Logger('SignalGateway');
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: 256 * 1024, clientTracking: false });
  /** every open socket of this process */
  private readonly conns = new Set<Conn>();
  /** sockets of this process by the call they joined */
  private readonly byCall = new Map<string, Set<Conn>>();
  /** close handlers still updating Redis (awaited at shutdown) */
  private readonly pending = new Set<Promise<void>>();
  private server?: Server;
  private heartbeat?: NodeJS.Timeout;

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly tokens: TokensService,
    private readonly calls: CallsService,
    private readonly store: CallsStore,
    private readonly bus: SignalBus,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  onApplicationBootstrap() {
    this.server = this.adapterHost.httpAdapter.getHttpServer() as Server;
    this.server.on('upgrade', this.onUpgrade);
    this.bus.onEvent((e) => this.deliver(e));
    // a socket that did not answer the previous ping is dead: drop it (its close handler runs)
    this.heartbeat = setInterval(() => {
      for (const c of this.conns) {
        if (!c.alive) {
          c.ws.terminate();
          continue;
        }
        c.alive = false;
        c.ws.ping();
      }
    }, this.config.calls.heartbeatMs);
    this.heartbeat.unref();
  }

  async beforeApplicationShutdown() {
    this.server?.off('upgrade', this.onUpgrade);
    clearInterval(this.heartbeat);
    const open = [...this.conns];
    const closed = Promise.all(open.map((c) => new Promise((r) => (c.ws.readyState === WebSocket.CLOSED ? r(null) : c.ws.once('close', r)))));
    for (const c of open) c.ws.close(CloseCode.shuttingDown, 'Server shutting down');
    // clients get a moment for the closing handshake, then the rest are cut
    await Promise.race([closed, new Promise((r) => setTimeout(r, 1000))]);
    for (const c of open) c.ws.terminate();
    await Promise.all([...this.pending]);
  }

  // ---- handshake ----

  private onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
    } catch {
      return; // not ours to answer
    }
    if (url.pathname !== SIGNAL_PATH) return;
    socket.on('error', () => socket.destroy());
    const token = url.searchParams.get('access_token') || bearerOf(req.headers.authorization);
    void this.authenticate(token).then((userId) => {
      if (socket.destroyed) return;
      if (!userId) return rejectUpgrade(socket, 401, 'Unauthorized');
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, userId));
    });
  };

  private async authenticate(token: string | null | undefined): Promise<string | undefined> {
    if (!token) return undefined;
    try {
      return (await this.tokens.verifyAccess(token)).sub;
    } catch {
      return undefined;
    }
  }

  private onConnection(ws: WebSocket, userId: string) {
    const conn: Conn = { ws, userId, alive: true, queue: Promise.resolve() };
    this.conns.add(conn);
    ws.on('pong', () => (conn.alive = true));
    ws.on('error', (e) => this.log.debug(`socket of ${userId}: ${e.message}`));
    ws.on('message', (data, isBinary) => {
      conn.queue = conn.queue
        .then(() => this.onMessage(conn, data.toString(), isBinary))
        .catch((e) => {
          this.log.error(`signalling message of ${userId} failed: ${(e as Error).stack ?? e}`);
          send(conn, { type: 'error', message: 'Internal error' });
        });
    });
    ws.on('close', () => {
      // after the messages already queued, so a join in flight is counted before it is undone
      const p = conn.queue.then(() => this.onClose(conn)).catch((e) => this.log.error(`closing a socket of ${userId}: ${e}`));
      this.pending.add(p);
      void p.finally(() => this.pending.delete(p));
    });
  }

  private async onClose(conn: Conn) {
    this.conns.delete(conn);
    if (!conn.callId) return;
    const set = this.byCall.get(conn.callId);
    set?.delete(conn);
    if (set?.size === 0) this.byCall.delete(conn.callId);
    const r = await this.store.disconnect(conn.callId, conn.chatId!, conn.userId);
    if (r === 'left' || r === 'last') await this.calls.announceLeft(conn.callId, conn.userId, r);
  }

  // ---- client messages ----

  private async onMessage(conn: Conn, raw: string, isBinary: boolean) {
    if (conn.ws.readyState !== WebSocket.OPEN) return;
    if (isBinary) return send(conn, { type: 'error', message: 'Binary messages are not supported' });
    let msg: any;
    try {
      msg = JSON.parse(raw);
    } catch {
      return send(conn, { type: 'error', message: 'Malformed JSON' });
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      return send(conn, { type: 'error', message: 'A message must be a JSON object' });
    }
    if (typeof msg.type !== 'string') return send(conn, { type: 'error', message: 'type must be a string' });
    if (msg.type === 'join') return this.join(conn, msg.callId);
    if (RELAYED.has(msg.type)) return this.relay(conn, msg);
    return send(conn, { type: 'error', message: `Unknown message type: ${msg.type}` });
  }

  private async join(conn: Conn, callId: unknown) {
    if (typeof callId !== 'string' || !isUUID(callId)) return send(conn, { type: 'error', message: 'callId must be a UUID' });
    if (conn.callId) {
      return send(conn, { type: 'error', message: conn.callId === callId ? 'Already joined this call' : 'This socket has already joined another call' });
    }
    const call = await this.store.get(callId);
    if (!call) return refuse(conn, CloseCode.callNotFound, 'Call not found');
    if (call.status !== 'active') return refuse(conn, CloseCode.callGone, 'Call has ended');
    const r = await this.store.connect(callId, call.chatId, conn.userId);
    if (r === 'missing') return refuse(conn, CloseCode.callNotFound, 'Call not found');
    if (r === 'ended') return refuse(conn, CloseCode.callGone, 'Call has ended');
    if (r === 'absent') return refuse(conn, CloseCode.notParticipant, 'You are not a participant of this call');
    conn.callId = callId;
    conn.chatId = call.chatId;
    let set = this.byCall.get(callId);
    if (!set) this.byCall.set(callId, (set = new Set()));
    set.add(conn);
    const now = (await this.store.get(callId)) ?? call;
    send(conn, { type: 'joined', callId, userId: conn.userId, participants: now.participants });
  }

  private async relay(conn: Conn, msg: { type: string; callId?: unknown; to?: unknown; payload?: unknown }) {
    if (!conn.callId) return send(conn, { type: 'error', message: 'Join a call first' });
    if (msg.callId !== conn.callId) return send(conn, { type: 'error', message: 'callId does not match the joined call' });
    if (typeof msg.to !== 'string' || !isUUID(msg.to)) return send(conn, { type: 'error', message: 'to must be a user id' });
    if (msg.to === conn.userId) return send(conn, { type: 'error', message: 'Cannot signal yourself' });
    if (msg.payload === undefined) return send(conn, { type: 'error', message: 'payload is required' });
    const [senderIn, recipientIn] = await this.store.isParticipant(conn.callId, conn.userId, msg.to);
    if (!senderIn) return refuse(conn, CloseCode.notParticipant, 'You are not a participant of this call');
    if (!recipientIn) return send(conn, { type: 'error', message: 'Recipient is not in this call' });
    // `from` is always the authenticated sender, whatever the client put in the message
    const message = { type: msg.type, callId: conn.callId, from: conn.userId, to: msg.to, payload: msg.payload };
    await this.bus.publish({ kind: 'relay', callId: conn.callId, to: msg.to, message });
  }

  // ---- events from any process ----

  private deliver(e: CallEvent) {
    const set = this.byCall.get(e.callId);
    if (!set) return;
    for (const c of [...set]) {
      switch (e.kind) {
        case 'relay':
          if (c.userId === e.to) send(c, e.message);
          break;
        case 'peer-joined':
          if (c.userId !== e.userId) send(c, { type: 'peer-joined', callId: e.callId, userId: e.userId, joinedAt: e.joinedAt });
          break;
        case 'peer-left':
          if (c.userId !== e.userId) send(c, { type: 'peer-left', callId: e.callId, userId: e.userId });
          // the user's own sockets in the call have nothing left to do
          else if (c.ws.readyState === WebSocket.OPEN) c.ws.close(CloseCode.leftCall, 'Left the call');
          break;
        case 'call-ended':
          send(c, { type: 'call-ended', callId: e.callId });
          if (c.ws.readyState === WebSocket.OPEN) c.ws.close(CloseCode.callEnded, 'Call ended');
          break;
      }
    }
  }
}

function send(conn: Conn, msg: unknown) {
  if (conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(msg));
}

/** An error message, then the socket is closed with `code`. */
function refuse(conn: Conn, code: number, message: string) {
  send(conn, { type: 'error', message });
  if (conn.ws.readyState === WebSocket.OPEN) conn.ws.close(code, message);
}

/** Answers an upgrade request with a plain HTTP error (Nest's error body) and closes the socket. */
function rejectUpgrade(socket: Duplex, status: number, error: string) {
  const body = JSON.stringify({ message: error, statusCode: status });
  socket.once('finish', () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${error}\r\n` +
      'Connection: close\r\n' +
      'Content-Type: application/json; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n` +
      body,
  );
}
