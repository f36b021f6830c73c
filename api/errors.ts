// Errors of the HTTP API: JSON { error: { code, message } } with a stable code and the right
// status. Every error a route can meet is mapped here, once. The codes never change meaning:
//
//   invalid-request 400  the request is malformed, or asks for something impossible
//   unauthorized    401  no bearer token, a wrong or revoked one, a used or expired ticket
//   forbidden-role  403  the token's role is too weak (details: roleNeeded, role, token)
//   read-only       403  a write to something read-only
//   target-not-allowed 403  a local device or file the operator has not allowed (serve --device-allow, --file-root)
//   not-found       404  no such volume, snapshot, export or route
//   expired         410  the instant is no longer kept (details.nearest: the kept instants around it)
//   conflict        409  the name is taken
//   busy            409  clients are attached (details.clients says which)
//   target-in-use   409  the block device is mounted, or held by md, LVM or another program
//   no-space        507  no room left for the log
//   volume-failed   503  the volume failed (I/O error) and refuses writes until restart
//   shutting-down   503  the appliance is stopping
//   internal        500  a bug: the message says what happened

import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { StorageError } from '../storage/index.js';
import { ApplianceError } from '../appliance/errors.js';

export interface HttpError {
  statusCode: number;
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

const byErrno: Record<string, [number, string]> = {
  EINVAL: [400, 'invalid-request'],
  ENOENT: [404, 'not-found'],
  EEXIST: [409, 'conflict'],
  EBUSY: [409, 'busy'],
  EPERM: [403, 'read-only'],
  EACCES: [403, 'target-not-allowed'],
  EINUSE: [409, 'target-in-use'],
  ENOSPC: [507, 'no-space'],
  EIO: [503, 'volume-failed'],
  ESHUTDOWN: [503, 'shutting-down'],
  ECORRUPT: [500, 'internal'],
  EEXPIRED: [410, 'expired'],
  ENOTSUP: [400, 'invalid-request'],
};

export function httpErrorOf(error: unknown): HttpError {
  if (error instanceof StorageError || error instanceof ApplianceError) {
    const [statusCode, code] = byErrno[error.code] ?? [500, 'internal'];
    const details = error.details;
    return { statusCode, code, message: error.message, ...(details === undefined ? {} : { details }) };
  }
  const fastifyError = error as FastifyError;
  if (fastifyError.validation !== undefined || fastifyError.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' || fastifyError.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
    return { statusCode: 400, code: 'invalid-request', message: fastifyError.message };
  }
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return { statusCode: fastifyError.statusCode, code: 'invalid-request', message: fastifyError.message };
  }
  return { statusCode: 500, code: 'internal', message: error instanceof Error ? error.message : String(error) };
}

export function sendError(reply: FastifyReply, error: HttpError): FastifyReply {
  return reply.code(error.statusCode).send({ error: { code: error.code, message: error.message, ...(error.details === undefined ? {} : { details: error.details }) } });
}

export function errorHandler(error: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const httpError = httpErrorOf(error);
  if (httpError.statusCode >= 500) request.log.error({ error }, 'request failed');
  return sendError(reply, httpError);
}

/** The schema of every error response. */
export const errorResponseSchema = {
  $id: 'Error',
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: {
        code: { type: 'string' },
        message: { type: 'string' },
        details: { type: 'object', additionalProperties: true },
      },
    },
  },
} as const;
