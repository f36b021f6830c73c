// The HTTP application: Fastify with its routes. app.ts builds it (tests use app.inject()); the
// serve command listens. Every route declares its schema first; the same schemas validate,
// serialise and make the OpenAPI document served at /api/docs. Every route but /health needs the
// bearer token.

import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import { pino } from 'pino';
import { tokenMatches } from '../appliance/api-token.js';
import type { AppContext } from './context.js';
import { errorHandler, errorResponseSchema, sendError } from './errors.js';
import { eventRoutes } from './routes/events.js';
import { exportRoutes } from './routes/exports.js';
import { healthRoutes } from './routes/health.js';
import { jobRoutes } from './routes/jobs.js';
import { metricsRoutes } from './routes/metrics.js';
import { retentionRoutes } from './routes/retention.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { timelineRoutes } from './routes/timeline.js';
import { volumeRoutes } from './routes/volumes.js';

export interface BuildAppOptions {
  context: AppContext;
  /** Where request logs go; silent when absent (tests). */
  logger?: FastifyBaseLogger;
}

/** Routes reachable without the token. */
const openPaths = new Set(['/health']);

export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { context } = options;
  const app = Fastify({
    loggerInstance: options.logger ?? pino({ level: 'silent' }),
    bodyLimit: 64 * 1024,
    // Unknown fields are refused, not silently dropped (Fastify's default drops them).
    ajv: { customOptions: { allowUnionTypes: true, removeAdditional: false } },
  });
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((request, reply) => sendError(reply, { statusCode: 404, code: 'not-found', message: `no route ${request.method} ${request.url}` }));
  app.addSchema(errorResponseSchema);
  await app.register(swagger, {
    openapi: {
      info: { title: 'cdp-nbd', version: context.version, description: 'Continuous data protection served over NBD: volumes, snapshots, points in time.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(websocket, { options: { maxPayload: 64 * 1024 } });

  app.addHook('onRequest', async (request, reply) => {
    const path = request.url.split('?')[0]!;
    if (openPaths.has(path)) return;
    const header = request.headers.authorization ?? '';
    const fromQuery = path === '/api/v1/events' ? new URL(request.url, 'http://localhost').searchParams.get('token') : null;
    const given = header.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : (fromQuery ?? '');
    if (given === '' || !tokenMatches(context.token, given)) {
      return sendError(reply, { statusCode: 401, code: 'unauthorized', message: 'send the API token as "Authorization: Bearer TOKEN" (it is in the data folder, file api-token)' });
    }
  });

  await app.register(healthRoutes(context));
  await app.register(async (scoped) => metricsRoutes(scoped, context));
  await app.register(
    async (api) => {
      await volumeRoutes(api, context);
      await snapshotRoutes(api, context);
      await retentionRoutes(api, context);
      await timelineRoutes(api, context);
      await exportRoutes(api, context);
      await eventRoutes(api, context);
      await jobRoutes(api, context);
    },
    { prefix: '/api/v1' },
  );
  app.get('/api/docs', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
