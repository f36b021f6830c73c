// /api/v1/volumes/:volume/snapshots: named marks in a volume's log (no data moves). A snapshot is
// kept until it is deleted or reaches its own expiry time; a pinned one survives space pressure.

import type { FastifyInstance } from 'fastify';
import { formatMicros, type SnapshotRecord } from '../../storage/index.js';
import { snapshotRetentionOf } from '../../appliance/appliance.js';
import { snapshotExpiryOf } from '../../appliance/instant.js';
import type { AppContext } from '../context.js';
import { readableSchemaErrors } from '../schema-errors.js';
import { commonErrors, errorReference, snapshotExpiryProperties, snapshotNameParameter, snapshotSchema, volumeParameters, volumeNameParameter } from '../schemas.js';

const snapshotParameters = { type: 'object', required: ['volume', 'snapshot'], properties: { volume: volumeNameParameter, snapshot: snapshotNameParameter } } as const;

const createBody = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: {
    name: snapshotNameParameter,
    note: { type: 'string', maxLength: 1024 },
    pinned: { type: 'boolean', default: false, description: 'space pressure never expires it' },
    ...snapshotExpiryProperties,
  },
} as const;

const updateBody = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    pinned: { type: 'boolean' },
    expiresAt: { type: ['string', 'null'], description: 'RFC 3339 (or Unix µs): the snapshot is deleted then; null: kept until deleted' },
    expiresInSeconds: snapshotExpiryProperties.expiresInSeconds,
  },
} as const;

export function snapshotJson(snapshot: SnapshotRecord) {
  const retention = snapshotRetentionOf(snapshot);
  return {
    name: snapshot.name,
    sequence: snapshot.sequence,
    micros: snapshot.micros,
    time: formatMicros(snapshot.micros),
    note: snapshot.note,
    ...retention,
    expiresTime: retention.expiresMicros === null ? null : formatMicros(retention.expiresMicros),
  };
}

export async function snapshotRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.post<{ Params: { volume: string }; Body: { name: string; note?: string; pinned?: boolean; expiresAt?: string; expiresInSeconds?: number } }>(
    '/volumes/:volume/snapshots',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Take a snapshot: a named mark in the log, now; pinned, and with an expiry time (expiresAt or expiresInSeconds), if asked',
        tags: ['snapshots'],
        params: volumeParameters,
        body: createBody,
        response: { 201: snapshotSchema, 404: errorReference, 409: errorReference, 507: errorReference, ...commonErrors },
      },
      schemaErrorFormatter: readableSchemaErrors({ params: volumeParameters, body: createBody }),
    },
    async (request, reply) => {
      const { name, note = '', pinned = false } = request.body;
      const expiresMicros = snapshotExpiryOf(request.body);
      const snapshot = await context.appliance.createSnapshot(request.params.volume, name, note, { pinned, ...(expiresMicros === undefined ? {} : { expiresMicros }) });
      reply.code(201);
      return snapshotJson(snapshot);
    },
  );

  app.get<{ Params: { volume: string } }>(
    '/volumes/:volume/snapshots',
    {
      config: { role: 'read' },
      schema: {
        summary: "List a volume's snapshots, oldest first",
        tags: ['snapshots'],
        params: volumeParameters,
        response: { 200: { type: 'object', properties: { snapshots: { type: 'array', items: snapshotSchema } } }, 404: errorReference, ...commonErrors },
      },
    },
    async (request) => {
      const history = await context.appliance.historyOf(request.params.volume);
      return { snapshots: history.snapshots().map(snapshotJson) };
    },
  );

  app.patch<{ Params: { volume: string; snapshot: string }; Body: { pinned?: boolean; expiresAt?: string | null; expiresInSeconds?: number } }>(
    '/volumes/:volume/snapshots/:snapshot',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Pin or unpin a snapshot, or change its expiry time (expiresAt null: kept until deleted)',
        tags: ['snapshots'],
        params: snapshotParameters,
        body: updateBody,
        response: { 200: snapshotSchema, 404: errorReference, ...commonErrors },
      },
      schemaErrorFormatter: readableSchemaErrors({ params: snapshotParameters, body: updateBody }),
    },
    async (request) => {
      const expiresMicros = snapshotExpiryOf(request.body);
      const changes = { ...(request.body.pinned === undefined ? {} : { pinned: request.body.pinned }), ...(expiresMicros === undefined ? {} : { expiresMicros }) };
      return snapshotJson(await context.appliance.updateSnapshot(request.params.volume, request.params.snapshot, changes));
    },
  );

  app.delete<{ Params: { volume: string; snapshot: string } }>(
    '/volumes/:volume/snapshots/:snapshot',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Delete a snapshot (its name; the history itself stays)',
        tags: ['snapshots'],
        params: snapshotParameters,
        response: { 204: { type: 'null' }, 404: errorReference, ...commonErrors },
      },
    },
    async (request, reply) => {
      await context.appliance.deleteSnapshot(request.params.volume, request.params.snapshot);
      return reply.code(204).send();
    },
  );
}
