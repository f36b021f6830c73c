// The HTTP application: Fastify with its routes. app.ts builds it (tests use app.inject()); the
// serve command listens. Every route declares its schema first; the same schemas validate,
// serialise and make the OpenAPI document served at /api/docs. Every route but /health declares
// the role it needs and takes a bearer token of that role (auth.ts).

import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import { pino } from 'pino';
import { authenticate, EventTickets, redactUrl, requireRoles, serializeRequest } from './auth.js';
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
  /** Serve HTTPS with this certificate chain and key (PEM); plain HTTP when absent. */
  https?: { certificate: Buffer; key: Buffer };
}

export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { context } = options;
  const logger = (options.logger ?? pino({ level: 'silent' })).child({}, { serializers: { req: serializeRequest } });
  const app = Fastify({
    loggerInstance: logger,
    ...(options.https === undefined ? {} : { https: { cert: options.https.certificate, key: options.https.key, minVersion: 'TLSv1.2' as const } }),
    bodyLimit: 64 * 1024,
    // Unknown fields are refused, not silently dropped (Fastify's default drops them).
    ajv: { customOptions: { allowUnionTypes: true, removeAdditional: false } },
  });
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((request, reply) => sendError(reply, { statusCode: 404, code: 'not-found', message: `no route ${request.method} ${redactUrl(request.url)}` }));
  app.addSchema(errorResponseSchema);
  await app.register(swagger, {
    openapi: {
      info: { title: 'cdp-nbd', version: context.version, description: 'Continuous data protection served over NBD: volumes, snapshots, points in time.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(websocket, { options: { maxPayload: 64 * 1024 } });

  const tickets = new EventTickets();
  requireRoles(app);
  app.decorateRequest('caller', null);
  app.addHook('onRequest', authenticate(context.tokens, tickets));

  await app.register(healthRoutes(context));
  await app.register(async (scoped) => metricsRoutes(scoped, context));
  await app.register(
    async (api) => {
      await volumeRoutes(api, context);
      await snapshotRoutes(api, context);
      await retentionRoutes(api, context);
      await timelineRoutes(api, context);
      await exportRoutes(api, context);
      await eventRoutes(api, context, tickets);
      await jobRoutes(api, context);
    },
    { prefix: '/api/v1' },
  );
  app.get('/api/docs', { schema: { hide: true }, config: { role: 'read' } }, async () => app.swagger());
  return app;
}
