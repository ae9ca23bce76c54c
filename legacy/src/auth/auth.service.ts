import { BadRequestException, ConflictException, Inject, Injectable, Logger, UnauthorizedException } from '@nestjs/common';
import bcrypt from 'bcryptjs';
import { randomBytes } from 'node:crypto';
import { generateSecret, generateURI, verifySync } from 'otplib';
import { Config, CONFIG } from '../config';
import { Db, HttpClient, RedisClient } from '../infra/infra.module';
import { UserRow, userView } from '../users/user.view';
import { RegisterDto } from './dto';
import { GmailService } from './gmail.service';
import { opaqueToken, sha256, TokenPair, TokensService } from './tokens.service';

export interface TwoFactorChallenge {
  twoFactorRequired: true;
  challengeToken: string;
  expiresIn: number;
}

const CHALLENGE_TTL_SECS = 300;
const CHALLENGE_MAX_ATTEMPTS = 5;
const OAUTH_STATE_TTL_SECS = 600;
const RESET_TTL_SECS = 3600;

@Injectable()
export class AuthService {
  private readonly log = new Logger('Auth');
  /** compared against when the e-mail is unknown, so both paths cost one bcrypt */
  private dummyHash: Promise<string>;

  constructor(
    private readonly db: Db,
    private readonly redis: RedisClient,
    private readonly http: HttpClient,
    private readonly tokens: TokensService,
    private readonly gmail: GmailService,
    @Inject(CONFIG) private readonly config: Config,
  ) {
    this.dummyHash = bcrypt.hash(randomBytes(16).toString('hex'), config.bcryptCost);
  }

  private byId(id: string) {
    return this.db.one<UserRow>('SELECT * FROM legacy.users WHERE id = $1', [id]);
  }

  private byEmail(email: string) {
    return this.db.one<UserRow>('SELECT * FROM legacy.users WHERE lower(email) = lower($1)', [email]);
  }

  /** The authenticated caller's row; a token for a deleted account is 401. */
  private async caller(id: string): Promise<UserRow> {
    const user = await this.byId(id);
    if (!user) throw new UnauthorizedException();
    return user;
  }

  async register(dto: RegisterDto): Promise<TokenPair> {
    const hash = await bcrypt.hash(dto.password, this.config.bcryptCost);
    try {
      return await this.db.tx(async (c) => {
        const user = (
          await c.query<UserRow>(
            'INSERT INTO legacy.users (email, password_hash, display_name) VALUES ($1, $2, $3) RETURNING *',
            [dto.email, hash, dto.displayName],
          )
        ).rows[0];
        return this.tokens.issue(user, c);
      });
    } catch (e: any) {
      if (e?.code === '23505') throw new ConflictException('Email is already registered');
      throw e;
    }
  }

  async login(email: string, password: string): Promise<TokenPair | TwoFactorChallenge> {
    const user = await this.byEmail(email);
    const ok = await bcrypt.compare(password, user?.password_hash ?? (await this.dummyHash));
    if (!user || !user.password_hash || !ok) throw new UnauthorizedException('Invalid email or password');
    if (user.totp_enabled) {
      const challengeToken = opaqueToken();
      await this.redis.set(`2fa:challenge:${sha256(challengeToken)}`, user.id, 'EX', CHALLENGE_TTL_SECS);
      return { twoFactorRequired: true, challengeToken, expiresIn: CHALLENGE_TTL_SECS };
    }
    return this.tokens.issue(user);
  }

  async verifyChallenge(challengeToken: string, code: string): Promise<TokenPair> {
    const key = `2fa:challenge:${sha256(challengeToken)}`;
    const userId = await this.redis.get(key);
    if (!userId) throw new UnauthorizedException('Two-factor challenge is invalid or expired');
    const user = await this.byId(userId);
    if (!user?.totp_secret || !this.totpValid(user.totp_secret, code)) {
      const attempts = await this.redis.incr(`${key}:attempts`);
      await this.redis.expire(`${key}:attempts`, CHALLENGE_TTL_SECS);
      if (attempts >= CHALLENGE_MAX_ATTEMPTS) await this.redis.del(key, `${key}:attempts`);
      throw new UnauthorizedException('Invalid two-factor code');
    }
    // single use: a second verify with the same challenge fails
    if ((await this.redis.del(key)) !== 1) throw new UnauthorizedException('Two-factor challenge is invalid or expired');
    await this.redis.del(`${key}:attempts`);
    return this.tokens.issue(user);
  }

  private totpValid(secret: string, code: string): boolean {
    try {
      return verifySync({ secret, token: code, epochTolerance: 30 }).valid;
    } catch {
      return false;
    }
  }

  async me(userId: string) {
    const user = await this.caller(userId);
    return userView(user);
  }

  async setupTotp(userId: string): Promise<{ secret: string; otpauthUrl: string }> {
    const user = await this.caller(userId);
    if (user.totp_enabled) throw new ConflictException('Two-factor authentication is already enabled');
    const secret = generateSecret();
    await this.db.query('UPDATE legacy.users SET totp_secret = $2, updated_at = now() WHERE id = $1', [userId, secret]);
    return { secret, otpauthUrl: generateURI({ issuer: 'BrainMessenger', label: user.email, secret }) };
  }

  async setTotpEnabled(userId: string, code: string, enabled: boolean): Promise<{ twoFactorEnabled: boolean }> {
    const user = await this.caller(userId);
    if (!user.totp_secret) throw new BadRequestException('Two-factor setup has not been started');
    if (user.totp_enabled === enabled) {
      throw new ConflictException(`Two-factor authentication is already ${enabled ? 'enabled' : 'disabled'}`);
    }
    if (!this.totpValid(user.totp_secret, code)) throw new BadRequestException('Invalid two-factor code');
    await this.db.query(
      `UPDATE legacy.users SET totp_enabled = $2, totp_secret = CASE WHEN $2 THEN totp_secret END, updated_at = now() WHERE id = $1`,
      [userId, enabled],
    );
    return { twoFactorEnabled: enabled };
  }

  // ---- Google sign-in (OAuth 2.0 authorization code flow) ----

  async googleRedirect(loginHint?: string): Promise<string> {
    const state = opaqueToken();
    await this.redis.set(`oauth:state:${state}`, '1', 'EX', OAUTH_STATE_TTL_SECS);
    const g = this.config.google;
    const q = new URLSearchParams({
      client_id: g.clientId,
      redirect_uri: g.redirectUri,
      response_type: 'code',
      scope: 'openid email profile',
      state,
      access_type: 'online',
      prompt: 'select_account',
    });
    if (loginHint) q.set('login_hint', loginHint);
    return `${g.accountsBaseUrl}/o/oauth2/v2/auth?${q}`;
  }

  async googleCallback(q: { code?: string; state?: string; error?: string }): Promise<TokenPair> {
    if (!q.state || (await this.redis.del(`oauth:state:${q.state}`)) !== 1) throw new BadRequestException('Invalid OAuth state');
    if (q.error || !q.code) throw new UnauthorizedException('Google sign-in failed');
    const g = this.config.google;
    let profile: { sub: string; email: string; email_verified?: boolean; name?: string; picture?: string | null };
    try {
      const token = await this.http.json('google', `${g.oauth2BaseUrl}/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({
          code: q.code,
          client_id: g.clientId,
          client_secret: g.clientSecret,
          redirect_uri: g.redirectUri,
          grant_type: 'authorization_code',
        }).toString(),
      });
      profile = await this.http.json('google', `${g.openidBaseUrl}/v1/userinfo`, {
        headers: { authorization: `Bearer ${token.access_token}` },
      });
    } catch (e) {
      this.log.warn(`Google sign-in failed: ${(e as Error).message}`);
      throw new UnauthorizedException('Google sign-in failed');
    }
    if (!profile?.sub || !profile.email) throw new UnauthorizedException('Google sign-in failed');
    const user = await this.db.tx(async (c) => {
      const bySub = await c.query<UserRow>('SELECT * FROM legacy.users WHERE google_sub = $1', [profile.sub]);
      if (bySub.rows[0]) return bySub.rows[0];
      if (profile.email_verified) {
        // link an existing password account with the same verified address
        const linked = await c.query<UserRow>(
          'UPDATE legacy.users SET google_sub = $2, updated_at = now() WHERE lower(email) = lower($1) AND google_sub IS NULL RETURNING *',
          [profile.email, profile.sub],
        );
        if (linked.rows[0]) return linked.rows[0];
      }
      const created = await c.query<UserRow>(
        'INSERT INTO legacy.users (email, display_name, avatar_url, google_sub) VALUES ($1, $2, $3, $4) RETURNING *',
        [profile.email.toLowerCase(), (profile.name || profile.email.split('@')[0]).slice(0, 64), profile.picture ?? null, profile.sub],
      );
      return created.rows[0];
    });
    return this.tokens.issue(user);
  }

  // ---- password reset by e-mail ----

  /** Always resolves the same way, whether the address is registered or not (no enumeration). */
  async forgotPassword(email: string): Promise<void> {
    const user = await this.byEmail(email);
    if (!user) return;
    const token = opaqueToken();
    await this.db.query(
      `INSERT INTO legacy.password_resets (token_hash, user_id, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))`,
      [sha256(token), user.id, RESET_TTL_SECS],
    );
    const link = `${this.config.appUrl}/reset-password?token=${encodeURIComponent(token)}`;
    // off the request path: the answer must not take longer for registered addresses
    this.gmail
      .send(
        user.email,
        'Reset your BrainMessenger password',
        `Hello ${user.display_name},\r\n\r\nTo choose a new password, open ${link}\r\nThe link is valid for one hour. If you did not ask for it, ignore this mail.\r\n`,
      )
      .catch((e) => this.log.error(`password reset mail failed: ${(e as Error).message}`));
  }

  async resetPassword(token: string, password: string): Promise<void> {
    const hash = await bcrypt.hash(password, this.config.bcryptCost);
    const done = await this.db.tx(async (c) => {
      const r = await c.query(
        `UPDATE legacy.password_resets SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id`,
        [sha256(token)],
      );
      if (r.rowCount !== 1) return false;
      const userId = r.rows[0].user_id;
      await c.query('UPDATE legacy.users SET password_hash = $2, updated_at = now() WHERE id = $1', [userId, hash]);
      await this.tokens.revokeAllOf(userId, c);
      return true;
    });
    if (!done) throw new BadRequestException('Invalid or expired reset token');
  }
}
