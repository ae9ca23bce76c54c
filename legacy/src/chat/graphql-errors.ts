// One error contract for GraphQL over HTTP and over WebSocket: Nest HttpExceptions thrown by
// guards, pipes and services become GraphQL errors with a stable `extensions.code`; anything
// unexpected is logged and masked as INTERNAL_SERVER_ERROR without leaking its message.
import { HttpException, Logger } from '@nestjs/common';
import { GraphQLError, GraphQLFormattedError } from 'graphql';

const CODES: Record<number, string> = {
  400: 'BAD_USER_INPUT',
  401: 'UNAUTHENTICATED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  409: 'CONFLICT',
  422: 'BAD_USER_INPUT',
};

const log = new Logger('GraphQL');

/** The exception a resolver threw, if `error` wraps one. */
function originalOf(error: unknown): unknown {
  let e = error;
  while (e instanceof GraphQLError && e.originalError && e.originalError !== e) e = e.originalError;
  return e;
}

/** Apollo `formatError` (and the WebSocket `onNext` hook below). */
export function formatGqlError(formatted: GraphQLFormattedError, error: unknown): GraphQLFormattedError {
  const orig = originalOf(error);
  const base = { message: formatted.message, locations: formatted.locations, path: formatted.path };
  if (orig instanceof HttpException) {
    const status = orig.getStatus();
    const response = orig.getResponse() as any;
    const messages = typeof response === 'object' && response ? response.message : response;
    const message = Array.isArray(messages) ? messages.join('; ') : String(messages ?? orig.message);
    return {
      ...base,
      message,
      extensions: {
        code: CODES[status] ?? (status < 500 ? 'BAD_REQUEST' : 'INTERNAL_SERVER_ERROR'),
        // Nest's own error body: {statusCode, message (string or list), error}
        originalError: typeof response === 'object' ? response : { statusCode: status, message },
      },
    };
  }
  const code = formatted.extensions?.code as string | undefined;
  if (orig instanceof GraphQLError || (code && code !== 'INTERNAL_SERVER_ERROR')) {
    // graphql-js / Apollo errors (parse, validation, variable coercion) are client mistakes with
    // their own codes; keep them but drop any stack trace
    const { stacktrace: _, ...extensions } = (formatted.extensions ?? {}) as Record<string, unknown>;
    return { ...base, extensions: { ...extensions, code: code ?? 'BAD_USER_INPUT' } };
  }
  log.error(orig instanceof Error ? (orig.stack ?? orig.message) : String(orig));
  return { ...base, message: 'Internal server error', extensions: { code: 'INTERNAL_SERVER_ERROR' } };
}

/** graphql-ws `onNext`: apply the same formatting to results sent over the WebSocket. */
export function formatWsResult(result: { errors?: readonly GraphQLError[]; [k: string]: unknown }) {
  if (!result.errors?.length) return undefined; // graphql-ws sends the result as is
  return { ...result, errors: result.errors.map((e) => formatGqlError(e.toJSON(), e)) };
}
