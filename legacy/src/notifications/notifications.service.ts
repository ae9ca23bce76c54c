// Devices, in-app notifications, and push delivery through FCM HTTP v1.
import { BadRequestException, Inject, Injectable, Logger, NotFoundException } from '@nestjs/common';
import { PoolClient } from 'pg';
import { Config, CONFIG } from '../config';
import { Db, HttpClient } from '../infra/infra.module';

export interface DeviceRow {
  token: string;
  user_id: string;
  platform: string;
  created_at: Date;
  last_seen_at: Date;
}

export interface NotificationRow {
  id: string;
  user_id: string;
  kind: string;
  payload: Record<string, unknown>;
  created_at: Date;
  read_at: Date | null;
}

export const deviceView = (d: DeviceRow) => ({
  token: d.token,
  platform: d.platform,
  createdAt: d.created_at.toISOString(),
  lastSeenAt: d.last_seen_at.toISOString(),
});

export const notificationView = (n: NotificationRow) => ({
  id: n.id,
  kind: n.kind,
  payload: n.payload,
  createdAt: n.created_at.toISOString(),
  readAt: n.read_at?.toISOString() ?? null,
});

/** What the chat module tells us about a new message. */
export interface NewMessage {
  chatId: string;
  messageId: string;
  senderId: string;
  senderName: string;
  /** group title, null for a direct chat */
  chatTitle: string | null;
  body: string;
}

const PREVIEW_CHARS = 100;
const preview = (body: string) => (body.length > PREVIEW_CHARS ? `${body.slice(0, PREVIEW_CHARS - 1)}…` : body);

@Injectable()
export class NotificationsService {
  private readonly log = new Logger('Notifications');

  constructor(
    private readonly db: Db,
    private readonly http: HttpClient,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  // ---- devices ----

  /** Upsert: a token registered again (by anyone) now belongs to the caller. */
  async registerDevice(userId: string, token: string, platform: string): Promise<DeviceRow> {
    return (await this.db.one<DeviceRow>(
      `INSERT INTO legacy.devices (token, user_id, platform) VALUES ($1, $2, $3)
       ON CONFLICT (token) DO UPDATE SET user_id = EXCLUDED.user_id, platform = EXCLUDED.platform, last_seen_at = now()
       RETURNING *`,
      [token, userId, platform],
    ))!;
  }

  async removeDevice(userId: string, token: string): Promise<void> {
    const gone = await this.db.one('DELETE FROM legacy.devices WHERE token = $1 AND user_id = $2 RETURNING token', [token, userId]);
    if (!gone) throw new NotFoundException('Device not found');
  }

  // ---- in-app notifications ----

  async list(userId: string, limit: number, before?: string) {
    if (before) {
      const exists = await this.db.one('SELECT 1 FROM legacy.notifications WHERE id = $1 AND user_id = $2', [before, userId]);
      if (!exists) throw new BadRequestException('before does not name one of your notifications');
    }
    // keyset pagination on (created_at, id), compared in SQL to keep microsecond precision
    const rows = await this.db.query<NotificationRow>(
      `SELECT * FROM legacy.notifications n
       WHERE n.user_id = $1
         AND ($2::uuid IS NULL OR (n.created_at, n.id) < (SELECT created_at, id FROM legacy.notifications WHERE id = $2))
       ORDER BY n.created_at DESC, n.id DESC
       LIMIT $3`,
      [userId, before ?? null, limit + 1],
    );
    const more = rows.length > limit;
    const items = rows.slice(0, limit).map(notificationView);
    return { items, nextBefore: more ? items[items.length - 1].id : null };
  }

  async unreadCount(userId: string): Promise<number> {
    const r = await this.db.one<{ n: number }>(
      'SELECT count(*)::int AS n FROM legacy.notifications WHERE user_id = $1 AND read_at IS NULL',
      [userId],
    );
    return r!.n;
  }

  /** Marks one notification read; reading it again keeps the first read time. */
  async markRead(userId: string, id: string) {
    const row = await this.db.one<NotificationRow>(
      `UPDATE legacy.notifications SET read_at = COALESCE(read_at, now()) WHERE id = $1 AND user_id = $2 RETURNING *`,
      [id, userId],
    );
    if (!row) throw new NotFoundException('Notification not found');
    return notificationView(row);
  }

  async markAllRead(userId: string): Promise<number> {
    const rows = await this.db.query('UPDATE legacy.notifications SET read_at = now() WHERE user_id = $1 AND read_at IS NULL RETURNING id', [
      userId,
    ]);
    return rows.length;
  }

  // ---- new chat messages ----

  /**
   * In the sender's transaction: one `message.new` notification per other member of the chat.
   * Returns the recipients' user ids.
   */
  async recordNewMessage(c: PoolClient, m: NewMessage): Promise<string[]> {
    const payload = {
      chatId: m.chatId,
      messageId: m.messageId,
      senderId: m.senderId,
      senderName: m.senderName,
      chatTitle: m.chatTitle,
      preview: preview(m.body),
    };
    const r = await c.query<{ user_id: string }>(
      `INSERT INTO legacy.notifications (user_id, kind, payload)
       SELECT user_id, 'message.new', $3::jsonb FROM legacy.chat_members WHERE chat_id = $1 AND user_id <> $2
       RETURNING user_id`,
      [m.chatId, m.senderId, JSON.stringify(payload)],
    );
    return r.rows.map((x) => x.user_id);
  }

  /**
   * Pushes a new message to every device of the recipients. Called without awaiting, after the
   * message is committed, while legacy.push_owner is `monolith`: never throws, failures are
   * logged; tokens FCM reports as unregistered are deleted. Each push is recorded in
   * legacy.push_log for the notification push job's shadow.
   */
  async pushNewMessage(m: NewMessage, recipients: string[]): Promise<void> {
    try {
      if (!recipients.length) return;
      const devices = await this.db.query<DeviceRow>('SELECT * FROM legacy.devices WHERE user_id = ANY($1::uuid[])', [recipients]);
      const notification = m.chatTitle
        ? { title: m.chatTitle, body: `${m.senderName}: ${preview(m.body)}` }
        : { title: m.senderName, body: preview(m.body) };
      // FCM `data` values must be strings
      const data = { kind: 'message.new', chatId: m.chatId, messageId: m.messageId, senderId: m.senderId };
      await Promise.all(devices.map((d) => this.pushOne(m.messageId, d, notification, data)));
    } catch (e) {
      this.log.error(`push for message ${m.messageId} failed: ${(e as Error).message}`);
    }
  }

  private async pushOne(messageId: string, device: DeviceRow, notification: { title: string; body: string }, data: Record<string, string>) {
    const { baseUrl, projectId, accessToken } = this.config.fcm;
    const message = { token: device.token, notification, data };
    // what the notification push job's shadow compares with (docs/events.md "Who pushes")
    const record = (status: number | null) =>
      this.db
        .query(`INSERT INTO legacy.push_log (message_id, user_id, request, status, sender) VALUES ($1, $2, $3, $4, 'monolith')`, [
          messageId,
          device.user_id,
          JSON.stringify(message),
          status,
        ])
        .catch((e) => this.log.warn(`recording a push in legacy.push_log: ${(e as Error).message}`));
    try {
      let r;
      try {
        r = await this.http.request('fcm', `${baseUrl}/v1/projects/${encodeURIComponent(projectId)}/messages:send`, {
          method: 'POST',
          headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ message }),
        });
      } catch (e) {
        await record(null);
        throw e;
      }
      await record(r.status);
      if (r.status >= 200 && r.status < 300) return;
      const codes: string[] = (r.body?.error?.details ?? []).map((d: any) => d?.errorCode).filter(Boolean);
      if (r.status === 404 || codes.includes('UNREGISTERED')) {
        // the app was uninstalled or the token expired: stop pushing to it (unless it moved meanwhile)
        await this.db.query('DELETE FROM legacy.devices WHERE token = $1 AND user_id = $2', [device.token, device.user_id]);
        this.log.log(`device token of user ${device.user_id} is unregistered: removed`);
        return;
      }
      this.log.warn(`FCM answered ${r.status} for a device of user ${device.user_id}: ${JSON.stringify(r.body).slice(0, 300)}`);
    } catch (e) {
      this.log.warn(`FCM request for a device of user ${device.user_id} failed: ${(e as Error).message}`);
    }
  }
}
