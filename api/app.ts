// The HTTP application: Fastify with its routes. app.ts builds it (tests use app.inject());
// the serve command listens. Every route declares its schema first.

import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { pino } from 'pino';
import type { VolumeStore } from '../storage/index.js';
import type { NbdServer } from '../server/index.js';

export interface AppContext {
  store: VolumeStore;
  nbd: NbdServer;
  startedAtMs: number;
  version: string;
}

export interface BuildAppOptions {
  context: AppContext;
  /** Where request logs go; silent when absent (tests). */
  logger?: FastifyBaseLogger;
}

const healthResponse = {
  type: 'object',
  required: ['status', 'version', 'uptimeSeconds', 'volumes'],
  properties: {
    status: { type: 'string', enum: ['ok', 'degraded'] },
    version: { type: 'string' },
    uptimeSeconds: { type: 'number' },
    connections: { type: 'integer' },
    memory: {
      type: 'object',
      properties: {
        rssBytes: { type: 'integer' },
        heapUsedBytes: { type: 'integer' },
        externalBytes: { type: 'integer' },
      },
    },
    volumes: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'sizeBytes', 'failed'],
        properties: {
          name: { type: 'string' },
          sizeBytes: { type: 'integer' },
          failed: { type: ['string', 'null'] },
          durableSequence: { type: 'integer' },
          dirtyRegionCount: { type: 'integer' },
        },
      },
    },
  },
} as const;

export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { context } = options;
  const app = Fastify({ loggerInstance: options.logger ?? pino({ level: 'silent' }) });

  app.get('/health', { schema: { response: { 200: healthResponse, 503: healthResponse } } }, async (_request, reply) => {
    const volumes = context.store.openVolumes().map((volume) => {
      const stats = volume.stats();
      return {
        name: volume.config.name,
        sizeBytes: volume.sizeBytes,
        failed: stats.failed,
        durableSequence: stats.durableSequence,
        dirtyRegionCount: stats.dirtyRegionCount,
      };
    });
    const degraded = volumes.some((volume) => volume.failed !== null);
    reply.code(degraded ? 503 : 200);
    return {
      status: degraded ? 'degraded' : 'ok',
      version: context.version,
      uptimeSeconds: Math.round((Date.now() - context.startedAtMs) / 1000),
      connections: context.nbd.connectionCount,
      memory: memoryFigures(),
      volumes,
    };
  });
  app.get('/api/v1/health', (_request, reply) => reply.redirect('/health', 308));

  return app;
}

function memoryFigures() {
  const usage = process.memoryUsage();
  return { rssBytes: usage.rss, heapUsedBytes: usage.heapUsed, externalBytes: usage.external };
}
