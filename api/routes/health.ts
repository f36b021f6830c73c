// GET /health (no token): is the appliance up, and is every volume healthy. A volume is not when it
// failed to open (state failed: not exported), failed since (I/O error, or damage in the middle
// of its log: writes refused), when recovery kept records past a torn tail in quarantine, when cutting records
// into its index fails (and writes are refused once the in-memory tail is full), or when its history
// lifecycle says why (degradedReasons: the protected window is shorter than required, space
// pressure expires history early, writes are refused for space, the last lifecycle pass failed).
// Exports that could not be restored, and an exports.json that could not be read, are reasons
// too. Degraded answers 503, with the reasons.

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
        required: ['name', 'state', 'failed', 'degradedReasons'],
        properties: {
          name: { type: 'string' },
          state: { type: 'string', enum: ['open', 'failed'], description: 'failed: could not be opened, not exported' },
          sizeBytes: { type: 'integer' },
          failed: { type: ['string', 'null'] },
          degradedReasons: { type: 'array', items: { type: 'string' } },
          durableSequence: { type: 'integer' },
          dirtyRegionCount: { type: 'integer' },
        },
      },
    },
    failedExports: {
      type: 'array',
      description: 'view and clone exports that could not be restored (kept until deleted)',
      items: { type: 'object', required: ['name', 'error'], properties: { name: { type: 'string' }, error: { type: 'string' } } },
    },
    exportsFileError: { type: ['string', 'null'], description: 'why exports.json could not be read; null when it could' },
  },
} as const;

export function healthRoutes(context: AppContext) {
  return async (app: FastifyInstance): Promise<void> => {
    app.get('/health', { schema: { summary: 'Health (no token needed)', tags: ['health'], security: [], response: { 200: healthResponse, 503: healthResponse } } }, async (_request, reply) => {
      const { store, exports } = context.appliance;
      const openVolumes = store.openVolumes().map((volume) => {
        const stats = volume.stats();
        const degradedReasons = [
          ...(stats.failed === null ? [] : [stats.failed]),
          ...volume.degradedReasons(),
          ...(volume.history?.degradedReasons() ?? []),
          ...(volume.history?.lifecycle.status().degradedReasons ?? []),
        ];
        return { name: volume.config.name, state: 'open', sizeBytes: volume.sizeBytes, failed: stats.failed, degradedReasons, durableSequence: stats.durableSequence, dirtyRegionCount: stats.dirtyRegionCount };
      });
      const failedVolumes = store.failedVolumes().map((failure) => ({ name: failure.name, state: 'failed', failed: failure.error, degradedReasons: [failure.error] }));
      const volumes = [...openVolumes, ...failedVolumes].sort((left, right) => left.name.localeCompare(right.name));
      const failedExports = exports.failures();
      const exportsFileError = exports.definitionsFileFailure;
      const reasons = [
        ...volumes.flatMap((volume) => volume.degradedReasons.map((reason) => `volume ${volume.name}: ${reason}`)),
        ...failedExports.map((failure) => `export ${failure.name}: ${failure.error}`),
        ...(exportsFileError === null ? [] : [exportsFileError]),
      ];
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
        failedExports,
        exportsFileError,
      };
    });
  };
}
