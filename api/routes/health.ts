// GET /health (no token): is the appliance up, and is every volume healthy.

import type { FastifyInstance } from 'fastify';
import type { AppContext } from '../context.js';

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
      properties: { rssBytes: { type: 'integer' }, heapUsedBytes: { type: 'integer' }, externalBytes: { type: 'integer' } },
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

export function healthRoutes(context: AppContext) {
  return async (app: FastifyInstance): Promise<void> => {
    app.get('/health', { schema: { summary: 'Health (no token needed)', tags: ['health'], security: [], response: { 200: healthResponse, 503: healthResponse } } }, async (_request, reply) => {
      const volumes = context.appliance.store.openVolumes().map((volume) => {
        const stats = volume.stats();
        return { name: volume.config.name, sizeBytes: volume.sizeBytes, failed: stats.failed, durableSequence: stats.durableSequence, dirtyRegionCount: stats.dirtyRegionCount };
      });
      const degraded = volumes.some((volume) => volume.failed !== null);
      reply.code(degraded ? 503 : 200);
      const memory = process.memoryUsage();
      return {
        status: degraded ? 'degraded' : 'ok',
        version: context.version,
        uptimeSeconds: Math.round((Date.now() - context.startedAtMs) / 1000),
        connections: context.appliance.nbd.connectionCount,
        memory: { rssBytes: memory.rss, heapUsedBytes: memory.heapUsed, externalBytes: memory.external },
        volumes,
      };
    });
  };
}
