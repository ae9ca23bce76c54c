// Call state in Redis. Every state change is one Lua script, so concurrent joins, leaves and ends
// see a consistent call (the participant limit cannot be overshot) and no lock is needed.
//
// Keys (all with a TTL safety net, refreshed on every change, so a call abandoned by a crashed
// process disappears by itself):
//   calls:{id}               hash   id, chatId, startedBy, startedAt, status (active|ended), endedAt, endedBy
//   calls:{id}:participants  hash   userId -> joinedAt (ISO 8601)
//   calls:{id}:conns         hash   userId -> number of open signalling sockets (any process)
//   calls:chat:{chatId}      string id of the chat's active call (exists only while it is active)
import { Inject, Injectable } from '@nestjs/common';
import { Config, CONFIG } from '../config';
import { RedisClient } from '../infra/infra.module';

/** TTL of an active call's keys: a call nobody touches for a day is gone. */
export const ACTIVE_TTL_SECS = 24 * 3600;

export const callKey = (id: string) => `calls:${id}`;
const participantsKey = (id: string) => `calls:${id}:participants`;
const connsKey = (id: string) => `calls:${id}:conns`;
const chatKey = (chatId: string) => `calls:chat:${chatId}`;

export interface CallState {
  id: string;
  chatId: string;
  startedBy: string;
  startedAt: string;
  status: 'active' | 'ended';
  endedAt: string | null;
  endedBy: string | null;
  participants: { userId: string; joinedAt: string }[];
}

// Shared Lua: KEYS[1] call hash, KEYS[2] participants, KEYS[3] chat pointer, KEYS[4] conns.
// end_call(now, endedBy, retention) marks the call ended, keeps the hash readable for `retention`
// seconds and drops everything else.
const END_CALL = `
local function end_call(now, ended_by, retention)
  redis.call('HSET', KEYS[1], 'status', 'ended', 'endedAt', now, 'endedBy', ended_by)
  redis.call('EXPIRE', KEYS[1], retention)
  redis.call('DEL', KEYS[2], KEYS[4])
  if redis.call('GET', KEYS[3]) == redis.call('HGET', KEYS[1], 'id') then redis.call('DEL', KEYS[3]) end
end
-- removes ARGV[1] from the call; the last one out ends it
local function leave(user, now, retention)
  local st = redis.call('HGET', KEYS[1], 'status')
  if not st then return 'missing' end
  if st ~= 'active' then return 'ended' end
  if redis.call('HDEL', KEYS[2], user) == 0 then return 'absent' end
  if redis.call('HLEN', KEYS[2]) == 0 then
    end_call(now, user, retention)
    return 'last'
  end
  return 'left'
end
`;

// KEYS: call, participants, chat pointer, conns. ARGV: callId, chatId, userId, now, ttl
const START = `
local cur = redis.call('GET', KEYS[3])
if cur then return {0, cur} end
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'chatId', ARGV[2], 'startedBy', ARGV[3], 'startedAt', ARGV[4], 'status', 'active')
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {1, ARGV[1]}
`;

// KEYS: call, participants, chat pointer, conns. ARGV: userId, now, max, ttl
const JOIN = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'active' then return 'ended' end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'already' end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[3]) then return 'full' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 'joined'
`;

// ARGV: userId, now, retention
const LEAVE = `${END_CALL}
return leave(ARGV[1], ARGV[2], ARGV[3])
`;

// ARGV: userId (who ends it), now, retention
const END = `${END_CALL}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'active' then return 'ended' end
end_call(ARGV[2], ARGV[1], ARGV[3])
return 'ended-now'
`;

// A signalling socket of a participant opened. ARGV: userId, ttl.
// 'ok' | 'missing' | 'ended' | 'absent' (not a participant)
const CONNECT = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'active' then return 'ended' end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 'absent' end
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('EXPIRE', KEYS[4], ARGV[2])
return 'ok'
`;

// A signalling socket closed. When it was the user's last one (in any process) the user leaves
// the call, in the same step, so a reconnect racing the close cannot be lost.
// ARGV: userId, now, retention. 'still-connected' | 'gone' (already out) | leave()'s results
const DISCONNECT = `${END_CALL}
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then return 'gone' end
if redis.call('HINCRBY', KEYS[4], ARGV[1], -1) > 0 then return 'still-connected' end
redis.call('HDEL', KEYS[4], ARGV[1])
return leave(ARGV[1], ARGV[2], ARGV[3])
`;

export type JoinResult = 'missing' | 'ended' | 'already' | 'full' | 'joined';
export type LeaveResult = 'missing' | 'ended' | 'absent' | 'left' | 'last';
export type EndResult = 'missing' | 'ended' | 'ended-now';
export type ConnectResult = 'missing' | 'ended' | 'absent' | 'ok';
export type DisconnectResult = 'gone' | 'still-connected' | LeaveResult;

@Injectable()
export class CallsStore {
  constructor(
    private readonly redis: RedisClient,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  private keys(callId: string, chatId: string) {
    return [callKey(callId), participantsKey(callId), chatKey(chatId), connsKey(callId)];
  }

  private run<T>(script: string, callId: string, chatId: string, args: (string | number)[]): Promise<T> {
    // EVAL, not EVALSHA: the scripts are small and this keeps the code free of NOSCRIPT handling
    return this.redis.eval(script, 4, ...this.keys(callId, chatId), ...args) as Promise<T>;
  }

  private now = () => new Date().toISOString();

  /** Creates the chat's active call with `userId` in it, or returns the id of the one already active. */
  async start(callId: string, chatId: string, userId: string): Promise<{ created: boolean; callId: string }> {
    const [created, id] = await this.run<[number, string]>(START, callId, chatId, [callId, chatId, userId, this.now(), ACTIVE_TTL_SECS]);
    return { created: created === 1, callId: id };
  }

  join(callId: string, chatId: string, userId: string): Promise<JoinResult> {
    return this.run(JOIN, callId, chatId, [userId, this.now(), this.config.calls.maxParticipants, ACTIVE_TTL_SECS]);
  }

  leave(callId: string, chatId: string, userId: string): Promise<LeaveResult> {
    return this.run(LEAVE, callId, chatId, [userId, this.now(), this.config.calls.endedRetentionSecs]);
  }

  end(callId: string, chatId: string, userId: string): Promise<EndResult> {
    return this.run(END, callId, chatId, [userId, this.now(), this.config.calls.endedRetentionSecs]);
  }

  connect(callId: string, chatId: string, userId: string): Promise<ConnectResult> {
    return this.run(CONNECT, callId, chatId, [userId, ACTIVE_TTL_SECS]);
  }

  disconnect(callId: string, chatId: string, userId: string): Promise<DisconnectResult> {
    return this.run(DISCONNECT, callId, chatId, [userId, this.now(), this.config.calls.endedRetentionSecs]);
  }

  /** The call with its participants (oldest first), or undefined when unknown or expired. */
  async get(callId: string): Promise<CallState | undefined> {
    const [[e1, h], [e2, p]] = (await this.redis.multi().hgetall(callKey(callId)).hgetall(participantsKey(callId)).exec()) as [
      [Error | null, Record<string, string>],
      [Error | null, Record<string, string>],
    ];
    if (e1 || e2) throw e1 ?? e2;
    if (!h.id) return undefined;
    const participants = Object.entries(p)
      .map(([userId, joinedAt]) => ({ userId, joinedAt }))
      .sort((a, b) => a.joinedAt.localeCompare(b.joinedAt) || a.userId.localeCompare(b.userId));
    return {
      id: h.id,
      chatId: h.chatId,
      startedBy: h.startedBy,
      startedAt: h.startedAt,
      status: h.status === 'active' ? 'active' : 'ended',
      endedAt: h.endedAt ?? null,
      endedBy: h.endedBy ?? null,
      participants: h.status === 'active' ? participants : [],
    };
  }

  /** Id of the chat's active call, if any. */
  async activeCallOf(chatId: string): Promise<string | undefined> {
    return (await this.redis.get(chatKey(chatId))) ?? undefined;
  }

  async isParticipant(callId: string, ...userIds: string[]): Promise<boolean[]> {
    const r = await this.redis.hmget(participantsKey(callId), ...userIds);
    return r.map((v) => v !== null);
  }
}
