// Chats, members and messages in Postgres (schema `legacy`). Errors are Nest HttpExceptions;
// graphql-errors.ts turns them into GraphQL error codes (400 BAD_USER_INPUT, 403 FORBIDDEN,
// 404 NOT_FOUND).
import { BadRequestException, ForbiddenException, Injectable, NotFoundException } from '@nestjs/common';
import { PoolClient } from 'pg';
import { Db } from '../infra/infra.module';
import { enqueueEvent, messageSentEvent } from '../infra/outbox';
import { NotificationsService } from '../notifications/notifications.service';
import { ChatBus, messageAddedChannel } from './chat.bus';
import { Chat, ChatMember, CreateChatInput, Message, MessageConnection, SendMessageInput } from './chat.types';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface ChatRow {
  id: string;
  title: string | null;
  is_group: boolean;
  created_at: Date;
  updated_at: Date;
}

interface MessageRow {
  id: string;
  seq: string;
  chat_id: string;
  sender_id: string;
  body: string;
  client_message_id: string | null;
  created_at: Date;
  edited_at: Date | null;
  deleted_at: Date | null;
  sender_display_name: string;
  sender_avatar_url: string | null;
}

/** Selects a message with its sender's public fields (alias m for messages). */
const MESSAGE_SELECT = `SELECT m.*, u.display_name AS sender_display_name, u.avatar_url AS sender_avatar_url
  FROM legacy.messages m JOIN legacy.users u ON u.id = m.sender_id`;

const chatOf = (r: ChatRow): Chat => ({ id: r.id, title: r.title, isGroup: r.is_group, createdAt: r.created_at, updatedAt: r.updated_at });

const messageOf = (r: MessageRow): Message => ({
  id: r.id,
  seq: String(r.seq),
  chatId: r.chat_id,
  senderId: r.sender_id,
  sender: { id: r.sender_id, displayName: r.sender_display_name, avatarUrl: r.sender_avatar_url },
  // a deleted message keeps its id and timestamps; its text is gone
  body: r.deleted_at ? '' : r.body,
  clientMessageId: r.client_message_id,
  createdAt: r.created_at,
  editedAt: r.edited_at,
  deletedAt: r.deleted_at,
});

/** Opaque cursor: base64 of the message's seq. */
export const encodeCursor = (seq: string) => Buffer.from(seq, 'utf8').toString('base64');
function decodeCursor(cursor: string): string {
  const seq = Buffer.from(cursor, 'base64').toString('utf8');
  if (!/^[1-9]\d{0,18}$/.test(seq) || encodeCursor(seq) !== cursor) throw new BadRequestException('after is not a valid cursor');
  return seq;
}

export function assertUuid(value: string, name: string) {
  if (!UUID.test(value)) throw new BadRequestException(`${name} must be a UUID`);
}

function assertBody(body: string) {
  if (typeof body !== 'string' || body.length < 1 || body.length > 4000) {
    throw new BadRequestException('body must be longer than or equal to 1 and shorter than or equal to 4000 characters');
  }
  if (!/\S/.test(body)) throw new BadRequestException('body must not be blank');
}

@Injectable()
export class ChatService {
  constructor(
    private readonly db: Db,
    private readonly notifications: NotificationsService,
    /** messageAdded through Redis: subscribers on any instance, and on the chat service, see it */
    readonly bus: ChatBus,
  ) {}

  /** 404 when the chat does not exist, 403 when the caller is not a member. */
  async requireMember(chatId: string, userId: string, c?: PoolClient): Promise<ChatRow> {
    assertUuid(chatId, 'chatId');
    const q = c ? (sql: string, p: unknown[]) => c.query(sql, p).then((r) => r.rows[0]) : (sql: string, p: unknown[]) => this.db.one(sql, p);
    const row = await q(
      `SELECT c.*, EXISTS (SELECT 1 FROM legacy.chat_members cm WHERE cm.chat_id = c.id AND cm.user_id = $2) AS is_member
       FROM legacy.chats c WHERE c.id = $1`,
      [chatId, userId],
    );
    if (!row) throw new NotFoundException('Chat not found');
    if (!row.is_member) throw new ForbiddenException('You are not a member of this chat');
    return row;
  }

  async chats(userId: string): Promise<Chat[]> {
    const rows = await this.db.query<ChatRow>(
      `SELECT c.* FROM legacy.chats c JOIN legacy.chat_members cm ON cm.chat_id = c.id AND cm.user_id = $1
       ORDER BY c.updated_at DESC, c.id DESC`,
      [userId],
    );
    return rows.map(chatOf);
  }

  async chat(chatId: string, userId: string): Promise<Chat> {
    assertUuid(chatId, 'id');
    return chatOf(await this.requireMember(chatId, userId));
  }

  async members(chatId: string): Promise<ChatMember[]> {
    const rows = await this.db.query(
      `SELECT cm.role, cm.joined_at, u.id, u.display_name, u.avatar_url
       FROM legacy.chat_members cm JOIN legacy.users u ON u.id = cm.user_id
       WHERE cm.chat_id = $1 ORDER BY cm.joined_at, u.id`,
      [chatId],
    );
    return rows.map((r) => ({ role: r.role, joinedAt: r.joined_at, user: { id: r.id, displayName: r.display_name, avatarUrl: r.avatar_url } }));
  }

  async lastMessage(chatId: string): Promise<Message | null> {
    const row = await this.db.one<MessageRow>(`${MESSAGE_SELECT} WHERE m.chat_id = $1 ORDER BY m.seq DESC LIMIT 1`, [chatId]);
    return row ? messageOf(row) : null;
  }

  async unreadCount(chatId: string, userId: string): Promise<number> {
    const r = await this.db.one<{ n: number }>(
      `SELECT count(*)::int AS n FROM legacy.messages m
       JOIN legacy.chat_members cm ON cm.chat_id = m.chat_id AND cm.user_id = $2
       WHERE m.chat_id = $1 AND m.seq > cm.last_read_seq AND m.sender_id <> $2 AND m.deleted_at IS NULL`,
      [chatId, userId],
    );
    return r?.n ?? 0;
  }

  /**
   * A direct chat when there is exactly one other member and no title (the existing one between
   * the two users is returned); otherwise a group. The creator is the owner.
   */
  async createChat(userId: string, input: CreateChatInput): Promise<Chat> {
    const others = [...new Set(input.memberIds.map((id) => id.toLowerCase()))].filter((id) => id !== userId);
    if (!others.length) throw new BadRequestException('memberIds must name at least one other user');
    const known = await this.db.query<{ id: string }>('SELECT id FROM legacy.users WHERE id = ANY($1::uuid[])', [others]);
    const unknown = others.filter((id) => !known.some((k) => k.id === id));
    if (unknown.length) throw new BadRequestException(`Unknown user ids: ${unknown.join(', ')}`);
    const title = input.title ?? null;
    const direct = others.length === 1 && !title;

    return this.db.tx(async (c) => {
      if (direct) {
        // serialise concurrent creations of the same pair, then reuse an existing direct chat
        const pair = [userId, others[0]].sort().join(':');
        await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`direct-chat:${pair}`]);
        const existing = await c.query<ChatRow>(
          `SELECT c.* FROM legacy.chats c
           WHERE NOT c.is_group
             AND EXISTS (SELECT 1 FROM legacy.chat_members WHERE chat_id = c.id AND user_id = $1)
             AND EXISTS (SELECT 1 FROM legacy.chat_members WHERE chat_id = c.id AND user_id = $2)
           ORDER BY c.created_at LIMIT 1`,
          [userId, others[0]],
        );
        if (existing.rows[0]) return chatOf(existing.rows[0]);
      }
      const chat = (
        await c.query<ChatRow>('INSERT INTO legacy.chats (title, is_group, created_by) VALUES ($1, $2, $3) RETURNING *', [
          title,
          !direct,
          userId,
        ])
      ).rows[0];
      await c.query(
        `INSERT INTO legacy.chat_members (chat_id, user_id, role)
         SELECT $1, u, CASE WHEN u = $2 THEN 'owner' ELSE 'member' END FROM unnest($3::uuid[]) AS u`,
        [chat.id, userId, [userId, ...others]],
      );
      return chatOf(chat);
    });
  }

  async messages(chatId: string, userId: string, first: number, after?: string | null): Promise<MessageConnection> {
    if (!Number.isInteger(first) || first < 1 || first > 100) throw new BadRequestException('first must be between 1 and 100');
    const before = after ? decodeCursor(after) : null;
    await this.requireMember(chatId, userId);
    const rows = await this.db.query<MessageRow>(
      `${MESSAGE_SELECT} WHERE m.chat_id = $1 AND ($2::bigint IS NULL OR m.seq < $2::bigint) ORDER BY m.seq DESC LIMIT $3`,
      [chatId, before, first + 1],
    );
    const page = rows.slice(0, first).map(messageOf);
    const edges = page.map((node) => ({ cursor: encodeCursor(node.seq), node }));
    return { edges, pageInfo: { hasNextPage: rows.length > first, endCursor: edges.length ? edges[edges.length - 1].cursor : null } };
  }

  /**
   * Idempotent per (chat, sender, clientMessageId): a repeat returns the first message and
   * neither notifies nor publishes again.
   */
  async sendMessage(userId: string, input: SendMessageInput): Promise<Message> {
    const { row, created, recipients, chat, pushInProcess } = await this.db.tx(async (c) => {
      const chat = await this.requireMember(input.chatId, userId, c);
      // one sender at a time per chat, from before the message takes its seq to the commit: a
      // chat's messages commit (and their events reach the outbox, and the bus) in seq order
      await c.query('SELECT 1 FROM legacy.chats WHERE id = $1 FOR NO KEY UPDATE', [input.chatId]);
      const ins = await c.query<{ id: string; seq: string }>(
        `INSERT INTO legacy.messages (chat_id, sender_id, body, client_message_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (chat_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL DO NOTHING
         RETURNING id, seq`,
        [input.chatId, userId, input.body, input.clientMessageId],
      );
      if (!ins.rows[0]) {
        const prev = await c.query<MessageRow>(
          `${MESSAGE_SELECT} WHERE m.chat_id = $1 AND m.sender_id = $2 AND m.client_message_id = $3`,
          [input.chatId, userId, input.clientMessageId],
        );
        return { row: prev.rows[0], created: false, recipients: [] as string[], chat, pushInProcess: false };
      }
      const { id, seq } = ins.rows[0];
      await c.query('UPDATE legacy.chats SET updated_at = now() WHERE id = $1', [input.chatId]);
      // the sender has read everything up to their own message
      await c.query('UPDATE legacy.chat_members SET last_read_seq = GREATEST(last_read_seq, $3) WHERE chat_id = $1 AND user_id = $2', [
        input.chatId,
        userId,
        seq,
      ]);
      const row = (await c.query<MessageRow>(`${MESSAGE_SELECT} WHERE m.id = $1`, [id])).rows[0];
      const recipients = await this.notifications.recordNewMessage(c, {
        chatId: input.chatId,
        messageId: id,
        senderId: userId,
        senderName: row.sender_display_name,
        chatTitle: chat.is_group ? chat.title : null,
        body: row.body,
      });
      // who pushes it, decided in its transaction (docs/events.md "Who pushes"): this process
      // after the commit, or the notification push job from the event
      const owner = (await c.query<{ owner: string }>('SELECT owner FROM legacy.push_owner')).rows[0]?.owner;
      const pushInProcess = owner === 'monolith';
      // message.sent in the message's transaction (docs/events.md): published by the outbox relay
      await enqueueEvent(
        c,
        messageSentEvent({
          chatId: input.chatId,
          messageId: id,
          seq: String(seq),
          senderId: userId,
          senderName: row.sender_display_name,
          chatTitle: chat.is_group ? chat.title : null,
          body: row.body,
          recipients,
          pushedInProcess: pushInProcess,
          at: row.created_at,
        }),
      );
      return { row, created: true, recipients, chat, pushInProcess };
    });
    const message = messageOf(row);
    if (created) {
      await this.bus.publish(messageAddedChannel(message.chatId), { messageAdded: message });
      // off the request path: the answer never waits for FCM
      if (pushInProcess) void this.notifications.pushNewMessage(
        {
          chatId: message.chatId,
          messageId: message.id,
          senderId: userId,
          senderName: message.sender.displayName,
          chatTitle: chat.is_group ? chat.title : null,
          body: row.body,
        },
        recipients,
      );
    }
    return message;
  }

  /** The message, if the caller may see it: 404 unknown, 403 not a member of its chat. */
  private async visibleMessage(messageId: string, userId: string): Promise<MessageRow> {
    assertUuid(messageId, 'id');
    const row = await this.db.one<MessageRow>(`${MESSAGE_SELECT} WHERE m.id = $1`, [messageId]);
    if (!row) throw new NotFoundException('Message not found');
    await this.requireMember(row.chat_id, userId);
    return row;
  }

  /** Only the sender edits; a deleted message cannot be edited (404). */
  async editMessage(userId: string, messageId: string, body: string): Promise<Message> {
    assertBody(body);
    const row = await this.visibleMessage(messageId, userId);
    if (row.sender_id !== userId) throw new ForbiddenException('Only the sender can edit a message');
    if (row.deleted_at) throw new NotFoundException('Message not found');
    const updated = await this.db.one<MessageRow>(
      `WITH upd AS (UPDATE legacy.messages SET body = $2, edited_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING *)
       SELECT upd.*, u.display_name AS sender_display_name, u.avatar_url AS sender_avatar_url FROM upd JOIN legacy.users u ON u.id = upd.sender_id`,
      [messageId, body],
    );
    if (!updated) throw new NotFoundException('Message not found'); // deleted meanwhile
    return messageOf(updated);
  }

  /** Soft delete by the sender; deleting again returns the deleted message unchanged. */
  async deleteMessage(userId: string, messageId: string): Promise<Message> {
    const row = await this.visibleMessage(messageId, userId);
    if (row.sender_id !== userId) throw new ForbiddenException('Only the sender can delete a message');
    if (row.deleted_at) return messageOf(row);
    const updated = await this.db.one<MessageRow>(
      `WITH upd AS (UPDATE legacy.messages SET deleted_at = COALESCE(deleted_at, now()) WHERE id = $1 RETURNING *)
       SELECT upd.*, u.display_name AS sender_display_name, u.avatar_url AS sender_avatar_url FROM upd JOIN legacy.users u ON u.id = upd.sender_id`,
      [messageId],
    );
    return messageOf(updated!);
  }

  /** Moves the caller's read marker forward to `messageId` (never backwards). */
  async markRead(userId: string, chatId: string, messageId: string): Promise<Chat> {
    assertUuid(messageId, 'messageId');
    const chat = await this.requireMember(chatId, userId);
    const msg = await this.db.one<{ seq: string }>('SELECT seq FROM legacy.messages WHERE id = $1 AND chat_id = $2', [messageId, chatId]);
    if (!msg) throw new NotFoundException('Message not found');
    await this.db.query('UPDATE legacy.chat_members SET last_read_seq = GREATEST(last_read_seq, $3) WHERE chat_id = $1 AND user_id = $2', [
      chatId,
      userId,
      msg.seq,
    ]);
    return chatOf(chat);
  }
}
