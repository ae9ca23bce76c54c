// Call rules: who may start, see, join, leave and end a call. State lives in Redis (CallsStore);
// chat membership is read from Postgres (legacy.chats / legacy.chat_members).
import {
  ConflictException,
  ForbiddenException,
  GoneException,
  Injectable,
  NotFoundException,
} from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { Db } from '../infra/infra.module';
import { CallsStore, CallState } from './calls.store';
import { SignalBus } from './signal.bus';

/** The call as REST answers it: the stored state without who ended it. */
export type CallView = Omit<CallState, 'endedBy'>;

export const callView = ({ endedBy: _endedBy, ...view }: CallState): CallView => view;

@Injectable()
export class CallsService {
  constructor(
    private readonly db: Db,
    private readonly store: CallsStore,
    private readonly bus: SignalBus,
  ) {}

  /** The caller's role in the chat; 404 when the chat does not exist, 403 when not a member. */
  async memberRole(chatId: string, userId: string): Promise<'owner' | 'member'> {
    const row = await this.db.one<{ role: 'owner' | 'member' | null }>(
      `SELECT m.role FROM legacy.chats c
         LEFT JOIN legacy.chat_members m ON m.chat_id = c.id AND m.user_id = $2
        WHERE c.id = $1`,
      [chatId, userId],
    );
    if (!row) throw new NotFoundException('Chat not found');
    if (!row.role) throw new ForbiddenException('You are not a member of this chat');
    return row.role;
  }

  /** The call, checked to exist (404) and to belong to a chat the caller is in (403). */
  async visible(callId: string, userId: string): Promise<{ call: CallState; role: 'owner' | 'member' }> {
    const call = await this.store.get(callId);
    if (!call) throw new NotFoundException('Call not found');
    let role: 'owner' | 'member';
    try {
      role = await this.memberRole(call.chatId, userId);
    } catch (e) {
      // a chat deleted under a call: the caller cannot be in it
      if (e instanceof NotFoundException) throw new ForbiddenException('You are not a member of this chat');
      throw e;
    }
    return { call, role };
  }

  private async reload(callId: string): Promise<CallState> {
    const call = await this.store.get(callId);
    if (!call) throw new NotFoundException('Call not found');
    return call;
  }

  async start(chatId: string, userId: string): Promise<CallState> {
    await this.memberRole(chatId, userId);
    const r = await this.store.start(randomUUID(), chatId, userId);
    if (!r.created) {
      throw new ConflictException({ statusCode: 409, message: 'Chat already has an active call', error: 'Conflict', callId: r.callId });
    }
    return this.reload(r.callId);
  }

  async get(callId: string, userId: string): Promise<CallState> {
    return (await this.visible(callId, userId)).call;
  }

  async activeInChat(chatId: string, userId: string): Promise<CallState> {
    await this.memberRole(chatId, userId);
    const id = await this.store.activeCallOf(chatId);
    const call = id ? await this.store.get(id) : undefined;
    if (!call || call.status !== 'active') throw new NotFoundException('No active call in this chat');
    return call;
  }

  async join(callId: string, userId: string): Promise<CallState> {
    const { call } = await this.visible(callId, userId);
    const r = await this.store.join(callId, call.chatId, userId);
    switch (r) {
      case 'missing':
        throw new NotFoundException('Call not found');
      case 'ended':
        throw new GoneException('Call has ended');
      case 'full':
        throw new ConflictException('Call is full');
      case 'already':
        return this.reload(callId);
      case 'joined': {
        const now = await this.reload(callId);
        const me = now.participants.find((p) => p.userId === userId);
        await this.bus.publish({ kind: 'peer-joined', callId, userId, joinedAt: me?.joinedAt ?? new Date().toISOString() });
        return now;
      }
    }
  }

  async leave(callId: string, userId: string): Promise<CallState> {
    const { call } = await this.visible(callId, userId);
    const r = await this.store.leave(callId, call.chatId, userId);
    switch (r) {
      case 'missing':
        throw new NotFoundException('Call not found');
      case 'ended':
        throw new GoneException('Call has ended');
      case 'absent':
        throw new ConflictException('You are not in this call');
      case 'left':
      case 'last':
        await this.announceLeft(callId, userId, r);
        return this.reload(callId);
    }
  }

  async end(callId: string, userId: string): Promise<CallState> {
    const { call, role } = await this.visible(callId, userId);
    if (call.status !== 'active') throw new GoneException('Call has ended');
    if (call.startedBy !== userId && role !== 'owner') {
      throw new ForbiddenException('Only the participant who started the call or a chat owner can end it');
    }
    const r = await this.store.end(callId, call.chatId, userId);
    if (r === 'missing') throw new NotFoundException('Call not found');
    if (r === 'ended') throw new GoneException('Call has ended');
    await this.bus.publish({ kind: 'call-ended', callId, endedBy: userId });
    return this.reload(callId);
  }

  /** Tells the call's sockets that `userId` left and, when it was the last one, that it ended. */
  async announceLeft(callId: string, userId: string, r: 'left' | 'last') {
    await this.bus.publish({ kind: 'peer-left', callId, userId });
    if (r === 'last') await this.bus.publish({ kind: 'call-ended', callId, endedBy: null });
  }
}
