// /api/v1/volumes/:volume/snapshots: named marks in a volume's log (no data moves).

import type { FastifyInstance } from 'fastify';
import { formatMicros, type SnapshotRecord } from '../../storage/index.js';
import type { AppContext } from '../context.js';
import { commonErrors, errorReference, snapshotNameParameter, snapshotSchema, volumeNameParameter } from '../schemas.js';

const volumeParams = { type: 'object', required: ['volume'], properties: { volume: volumeNameParameter } } as const;

export function snapshotJson(snapshot: SnapshotRecord) {
  return { name: snapshot.name, sequence: snapshot.sequence, micros: snapshot.micros, time: formatMicros(snapshot.micros), note: snapshot.note };
}

export async function snapshotRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.post<{ Params: { volume: string }; Body: { name: string; note?: string } }>(
    '/volumes/:volume/snapshots',
    {
      schema: {
        summary: 'Take a snapshot: a named mark in the log, now',
        tags: ['snapshots'],
        params: volumeParams,
        body: {
          type: 'object',
          required: ['name'],
          additionalProperties: false,
          properties: { name: snapshotNameParameter, note: { type: 'string', maxLength: 1024 } },
        },
        response: { 201: snapshotSchema, 404: errorReference, 409: errorReference, 507: errorReference, ...commonErrors },
      },
    },
    async (request, reply) => {
      const snapshot = await context.appliance.createSnapshot(request.params.volume, request.body.name, request.body.note ?? '');
      reply.code(201);
      return snapshotJson(snapshot);
    },
  );

  app.get<{ Params: { volume: string } }>(
    '/volumes/:volume/snapshots',
    {
      schema: {
        summary: "List a volume's snapshots, oldest first",
        tags: ['snapshots'],
        params: volumeParams,
        response: { 200: { type: 'object', properties: { snapshots: { type: 'array', items: snapshotSchema } } }, 404: errorReference, ...commonErrors },
      },
    },
    async (request) => {
      const history = await context.appliance.historyOf(request.params.volume);
      return { snapshots: history.snapshots().map(snapshotJson) };
    },
  );

  app.delete<{ Params: { volume: string; snapshot: string } }>(
    '/volumes/:volume/snapshots/:snapshot',
    {
      schema: {
        summary: 'Delete a snapshot (its name; the history itself stays)',
        tags: ['snapshots'],
        params: { type: 'object', required: ['volume', 'snapshot'], properties: { volume: volumeNameParameter, snapshot: snapshotNameParameter } },
        response: { 204: { type: 'null' }, 404: errorReference, ...commonErrors },
      },
    },
    async (request, reply) => {
      await context.appliance.deleteSnapshot(request.params.volume, request.params.snapshot);
      return reply.code(204).send();
    },
  );
}
