// Access tokens (RS256 JWTs other services verify through the JWKS) and opaque refresh tokens
// with rotation and reuse detection.
import { Inject, Injectable, UnauthorizedException } from '@nestjs/common';
import { JwtService } from '@nestjs/jwt';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { PoolClient } from 'pg';
import { Config, CONFIG } from '../config';
import { Db } from '../infra/infra.module';
import { UserRow, userView, UserView } from '../users/user.view';

export interface AccessClaims {
  sub: string;
  email: string;
  /** refresh-token family the session belongs to */
  sid: string;
}

export interface TokenPair {
  accessToken: string;
  refreshToken: string;
  tokenType: 'Bearer';
  expiresIn: number;
  user: UserView;
}

export const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
export const opaqueToken = () => randomBytes(32).toString('base64url');

@Injectable()
export class TokensService {
  constructor(
    private readonly jwt: JwtService,
    private readonly db: Db,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  /** Starts a new session (a new refresh-token family) for a user. */
  async issue(user: UserRow, client?: PoolClient): Promise<TokenPair> {
    return this.pair(user, randomUUID(), client);
  }

  private async pair(user: UserRow, familyId: string, client?: PoolClient, replaces?: string): Promise<TokenPair> {
    const refreshToken = opaqueToken();
    const q = client ?? this.db.pool;
    const row = await q.query<{ id: string }>(
      `INSERT INTO legacy.refresh_tokens (user_id, family_id, token_hash, expires_at)
       VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING id`,
      [user.id, familyId, sha256(refreshToken), this.config.jwt.refreshTtlSecs],
    );
    if (replaces) await q.query('UPDATE legacy.refresh_tokens SET replaced_by = $1 WHERE id = $2', [row.rows[0].id, replaces]);
    const claims: AccessClaims = { sub: user.id, email: user.email, sid: familyId };
    const accessToken = await this.jwt.signAsync(claims);
    return { accessToken, refreshToken, tokenType: 'Bearer', expiresIn: this.config.jwt.accessTtlSecs, user: userView(user) };
  }

  /**
   * Rotates a refresh token: the presented one becomes used and a new one in the same family is
   * returned. A token presented after it was used is a stolen copy or a replay: the whole
   * family is revoked and the caller gets 401.
   */
  async rotate(refreshToken: string): Promise<TokenPair> {
    const hash = sha256(refreshToken);
    const outcome = await this.db.tx(async (c) => {
      const claimed = await c.query(
        `UPDATE legacy.refresh_tokens SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
          RETURNING id, user_id, family_id`,
        [hash],
      );
      if (claimed.rowCount === 1) {
        const { id, user_id, family_id } = claimed.rows[0];
        const user = (await c.query<UserRow>('SELECT * FROM legacy.users WHERE id = $1', [user_id])).rows[0];
        return { pair: await this.pair(user, family_id, c, id) };
      }
      const seen = await c.query('SELECT family_id, used_at FROM legacy.refresh_tokens WHERE token_hash = $1', [hash]);
      if (seen.rowCount === 1 && seen.rows[0].used_at) {
        await c.query('UPDATE legacy.refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL', [
          seen.rows[0].family_id,
        ]);
        return { error: 'Refresh token reuse detected' };
      }
      return { error: 'Invalid refresh token' };
    });
    if ('error' in outcome) throw new UnauthorizedException(outcome.error);
    return outcome.pair;
  }

  /** Logout: revokes the session (refresh-token family) the token belongs to. */
  async revokeFamilyOf(refreshToken: string): Promise<void> {
    await this.db.query(
      `UPDATE legacy.refresh_tokens SET revoked_at = now()
        WHERE revoked_at IS NULL AND family_id = (SELECT family_id FROM legacy.refresh_tokens WHERE token_hash = $1)`,
      [sha256(refreshToken)],
    );
  }

  async revokeAllOf(userId: string, client?: PoolClient): Promise<void> {
    await (client ?? this.db.pool).query('UPDATE legacy.refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL', [
      userId,
    ]);
  }

  async verifyAccess(token: string): Promise<AccessClaims> {
    return this.jwt.verifyAsync<AccessClaims>(token);
  }

  jwks() {
    const jwk = this.config.jwt.publicKey.export({ format: 'jwk' });
    return { keys: [{ ...jwk, kid: this.config.jwt.keyId, use: 'sig', alg: 'RS256' }] };
  }
}
