// Outgoing mail through the Gmail API (users.messages.send with an RFC 2822 message, base64url).
import { Inject, Injectable, Logger } from '@nestjs/common';
import { Config, CONFIG } from '../config';
import { HttpClient } from '../infra/infra.module';

@Injectable()
export class GmailService {
  private readonly log = new Logger('Gmail');
  constructor(
    private readonly http: HttpClient,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  async send(to: string, subject: string, text: string): Promise<string> {
    const raw = [
      `From: ${this.config.gmail.from}`,
      `To: ${to}`,
      `Subject: ${subject}`,
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset="UTF-8"',
      '',
      text,
    ].join('\r\n');
    const body = await this.http.json('gmail', `${this.config.gmail.baseUrl}/gmail/v1/users/me/messages/send`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.config.gmail.accessToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ raw: Buffer.from(raw).toString('base64url') }),
    });
    this.log.log(`sent "${subject}" (message ${body?.id})`);
    return body?.id;
  }
}
