// GET /health (no token): is the appliance up, and is every volume healthy. A volume is not when it
// failed (I/O error), or when its history lifecycle says why (degradedReasons: the protected
// window is shorter than required, space pressure expires history early, writes are refused for
// space, the last lifecycle pass failed). Degraded answers 503, with the reasons.

import type { FastifyInstance } from 'fastify';
import type { AppContext } from '../context.js';

const healthResponse = {
  type: 'object',
  required: ['status', 'reasons', 'version', 'uptimeSeconds', 'volumes'],
  properties: {
    status: { type: 'string', enum: ['ok', 'degraded'] },
    reasons: { type: 'array', items: { type: 'string' }, description: 'why degraded, each naming its volume; empty when ok' },
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
        required: ['name', 'sizeBytes', 'failed', 'degradedReasons'],
        properties: {
          name: { type: 'string' },
          sizeBytes: { type: 'integer' },
          failed: { type: ['string', 'null'] },
          degradedReasons: { type: 'array', items: { type: 'string' } },
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
        const degradedReasons = [...(stats.failed === null ? [] : [stats.failed]), ...(volume.history?.lifecycle.status().degradedReasons ?? [])];
        return { name: volume.config.name, sizeBytes: volume.sizeBytes, failed: stats.failed, degradedReasons, durableSequence: stats.durableSequence, dirtyRegionCount: stats.dirtyRegionCount };
      });
      const reasons = volumes.flatMap((volume) => volume.degradedReasons.map((reason) => `volume ${volume.name}: ${reason}`));
      const degraded = reasons.length > 0;
      reply.code(degraded ? 503 : 200);
      const memory = process.memoryUsage();
      return {
        status: degraded ? 'degraded' : 'ok',
        reasons,
        version: context.version,
        uptimeSeconds: Math.round((Date.now() - context.startedAtMs) / 1000),
        connections: context.appliance.nbd.connectionCount,
        memory: { rssBytes: memory.rss, heapUsedBytes: memory.heapUsed, externalBytes: memory.external },
        volumes,
      };
    });
  };
}
