// /api/v1/volumes/:volume/timeline: what was written when, in buckets, with the snapshot marks,
// the protected range (the oldest and the newest instant that can be opened) and where the
// continuous region and each retention tier start, so a console can shade them. A packed interval
// (history between two kept points, newest data only) counts as one span over its time: its writes
// and bytes are what it kept, and the buckets it touches say packed.

import type { FastifyInstance } from 'fastify';
import { formatMicros } from '../../storage/index.js';
import { parseInstant } from '../../appliance/instant.js';
import type { AppContext } from '../context.js';
import { retentionRegionsJson } from '../retention-status.js';
import { commonErrors, errorReference, retentionRegionsProperties, snapshotSchema, volumeNameParameter } from '../schemas.js';
import { snapshotJson } from './snapshots.js';

const bucketCountMax = 1000;
const windowsScannedMax = 100_000;

export async function timelineRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.get<{ Params: { volume: string }; Querystring: { from?: string; to?: string; buckets?: number } }>(
    '/volumes/:volume/timeline',
    {
      config: { role: 'read' },
      schema: {
        summary: 'Writes per time bucket, snapshot marks, and the protected range',
        tags: ['timeline'],
        params: { type: 'object', required: ['volume'], properties: { volume: volumeNameParameter } },
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            from: { type: 'string', description: 'RFC 3339 or Unix µs; default: the oldest instant' },
            to: { type: 'string', description: 'RFC 3339 or Unix µs; default: now' },
            buckets: { type: 'integer', minimum: 1, maximum: bucketCountMax, default: 60 },
          },
        },
        response: {
          200: {
            type: 'object',
            required: ['protected', 'retention', 'buckets', 'snapshots'],
            properties: {
              protected: {
                type: 'object',
                properties: { oldestMicros: { type: 'integer' }, oldest: { type: ['string', 'null'] }, newestMicros: { type: 'integer' }, newest: { type: ['string', 'null'] } },
              },
              retention: { type: 'object', properties: retentionRegionsProperties },
              buckets: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    fromMicros: { type: 'integer' },
                    toMicros: { type: 'integer' },
                    from: { type: 'string' },
                    writes: { type: 'integer' },
                    bytes: { type: 'integer' },
                    packed: { type: 'boolean', description: 'part of it lies in a packed interval: its writes and bytes there are what was kept, not every write' },
                  },
                },
              },
              snapshots: { type: 'array', items: snapshotSchema },
            },
          },
          404: errorReference,
          ...commonErrors,
        },
      },
    },
    async (request) => {
      const { retentionPolicy } = await context.appliance.store.openVolume(request.params.volume);
      const history = await context.appliance.historyOf(request.params.volume);
      const oldestMicros = await history.oldestMicros();
      const newestMicros = history.newestMicros;
      const fromMicros = request.query.from !== undefined ? parseInstant(request.query.from) : oldestMicros;
      const toMicros = request.query.to !== undefined ? parseInstant(request.query.to) : Math.max(newestMicros, Date.now() * 1000);
      const bucketCount = request.query.buckets ?? 60;
      const spanMicros = Math.max(1, Math.ceil((toMicros - fromMicros + 1) / bucketCount));
      const buckets = Array.from({ length: bucketCount }, (_, index) => ({
        fromMicros: fromMicros + index * spanMicros,
        toMicros: Math.min(fromMicros + (index + 1) * spanMicros - 1, toMicros),
        from: formatMicros(fromMicros + index * spanMicros),
        writes: 0,
        bytes: 0,
        packed: false,
      }));
      // A window's writes are spread evenly over its time span.
      for (const window of await history.windows(fromMicros, toMicros, windowsScannedMax)) {
        const windowSpan = Math.max(1, window.lastMicros - window.firstMicros);
        for (const bucket of buckets) {
          const overlap = Math.min(bucket.toMicros + 1, window.lastMicros + 1) - Math.max(bucket.fromMicros, window.firstMicros);
          if (overlap <= 0) continue;
          const share = window.lastMicros === window.firstMicros ? 1 : overlap / windowSpan;
          bucket.writes += Math.round(window.recordCount * share);
          bucket.bytes += Math.round(window.dataBytes * share);
          bucket.packed ||= window.packed;
        }
      }
      const snapshots = history.snapshots().filter((snapshot) => snapshot.micros >= fromMicros && snapshot.micros <= toMicros);
      return {
        protected: {
          oldestMicros,
          oldest: oldestMicros > 0 ? formatMicros(oldestMicros) : null,
          newestMicros,
          newest: newestMicros > 0 ? formatMicros(newestMicros) : null,
        },
        retention: retentionRegionsJson(history.lifecycle.status(), retentionPolicy),
        buckets,
        snapshots: snapshots.map(snapshotJson),
      };
    },
  );
}
