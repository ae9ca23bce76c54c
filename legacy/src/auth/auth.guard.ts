// Bearer-token guard for REST controllers and GraphQL resolvers. Puts the caller on
// `req.user` as { id, email, sid }.
import { CanActivate, createParamDecorator, ExecutionContext, Injectable, UnauthorizedException } from '@nestjs/common';
import { GqlContextType, GqlExecutionContext } from '@nestjs/graphql';
import { TokensService } from './tokens.service';

export interface AuthUser {
  id: string;
  email: string;
  sid: string;
}

export function requestOf(ctx: ExecutionContext): any {
  if (ctx.getType<GqlContextType>() === 'graphql') return GqlExecutionContext.create(ctx).getContext().req;
  return ctx.switchToHttp().getRequest();
}

export function bearerOf(header: unknown): string | undefined {
  if (typeof header !== 'string') return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(header.trim());
  return m?.[1];
}

@Injectable()
export class AuthGuard implements CanActivate {
  constructor(private readonly tokens: TokensService) {}

  async canActivate(ctx: ExecutionContext): Promise<boolean> {
    const req = requestOf(ctx);
    if (req?.user) return true; // already authenticated (GraphQL over WebSocket sets it at connect)
    const token = bearerOf(req?.headers?.authorization);
    if (!token) throw new UnauthorizedException();
    try {
      const claims = await this.tokens.verifyAccess(token);
      req.user = { id: claims.sub, email: claims.email, sid: claims.sid } satisfies AuthUser;
      return true;
    } catch {
      throw new UnauthorizedException();
    }
  }
}

export const CurrentUser = createParamDecorator((_: unknown, ctx: ExecutionContext): AuthUser => requestOf(ctx).user);
