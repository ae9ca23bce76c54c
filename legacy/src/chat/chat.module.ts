// The GraphQL endpoint (/graphql, HTTP and graphql-ws WebSocket) and the chat resolvers.
import { ApolloDriver, ApolloDriverConfig } from '@nestjs/apollo';
import { Module } from '@nestjs/common';
import { GraphQLModule } from '@nestjs/graphql';
import { AuthUser, bearerOf } from '../auth/auth.guard';
import { TokensService } from '../auth/tokens.service';
import { NotificationsModule } from '../notifications/notifications.module';
import { ChatResolver } from './chat.resolver';
import { ChatBus } from './chat.bus';
import { ChatService } from './chat.service';
import { formatGqlError, formatWsResult } from './graphql-errors';

@Module({
  imports: [
    NotificationsModule,
    GraphQLModule.forRootAsync<ApolloDriverConfig>({
      driver: ApolloDriver,
      inject: [TokensService],
      useFactory: (tokens: TokensService): ApolloDriverConfig => ({
        path: '/graphql',
        autoSchemaFile: true, // generated in memory from the decorated classes
        sortSchema: true,
        playground: false,
        csrfPrevention: false, // bearer tokens, no cookies: no ambient credentials to forge
        includeStacktraceInErrorResponses: false,
        autoTransformHttpErrors: false, // formatGqlError maps HttpExceptions itself
        formatError: formatGqlError,
        // HTTP: Apollo passes {req, res}; WebSocket: graphql-ws passes its connection context,
        // whose `extra.user` onConnect set. Either way resolvers see `req.user` via AuthGuard.
        context: (arg: any) => {
          if (arg?.extra && 'connectionParams' in arg) return { req: { headers: {}, user: arg.extra.user } };
          return { req: arg.req, res: arg.res };
        },
        subscriptions: {
          'graphql-ws': {
            path: '/graphql',
            // connection_init must carry {authorization: "Bearer <access token>"}; else 4403 Forbidden
            onConnect: async (ctx: any) => {
              const params = ctx.connectionParams ?? {};
              const token = bearerOf(params.authorization ?? params.Authorization);
              if (!token) return false;
              try {
                const claims = await tokens.verifyAccess(token);
                ctx.extra.user = { id: claims.sub, email: claims.email, sid: claims.sid } satisfies AuthUser;
                return true;
              } catch {
                return false;
              }
            },
            onNext: (_ctx: unknown, _id: unknown, _payload: unknown, _args: unknown, result: any) => formatWsResult(result),
          } as any,
        },
      }),
    }),
  ],
  providers: [ChatBus, ChatService, ChatResolver],
})
export class ChatModule {}
