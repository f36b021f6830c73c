// /api/v1/volumes: list, create, show and delete volumes. Showing one includes its retention
// policy and the history lifecycle's live figures (retention-status.ts).

import type { FastifyInstance } from 'fastify';
import { formatMicros, type Volume, type VolumeConfig } from '../../storage/index.js';
import type { AppContext } from '../context.js';
import { retentionStatusJson } from '../retention-status.js';
import { commonErrors, errorReference, volumeNameParameter, volumeSchema } from '../schemas.js';

export async function volumeRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.get(
    '/volumes',
    { config: { role: 'read' }, schema: { summary: 'List volumes', tags: ['volumes'], response: { 200: { type: 'object', properties: { volumes: { type: 'array', items: volumeSchema } } }, ...commonErrors } } },
    async () => {
      const { store } = context.appliance;
      const failures = new Map(store.failedVolumes().map((failure) => [failure.name, failure.error]));
      const volumes = await Promise.all(
        store.list().map(async (name) => (failures.has(name) ? describeFailed(context, name, failures.get(name)!) : describe(await store.openVolume(name)))),
      );
      return { volumes };
    },
  );

  app.post<{ Body: { name: string; sizeBytes: number } }>(
    '/volumes',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Create a volume',
        tags: ['volumes'],
        body: {
          type: 'object',
          required: ['name', 'sizeBytes'],
          additionalProperties: false,
          properties: { name: volumeNameParameter, sizeBytes: { type: 'integer', minimum: 1 } },
        },
        response: { 201: volumeSchema, 409: errorReference, 507: errorReference, ...commonErrors },
      },
    },
    async (request, reply) => {
      await context.appliance.createVolume(request.body.name, request.body.sizeBytes);
      reply.code(201);
      return describe(await context.appliance.store.openVolume(request.body.name));
    },
  );

  app.get<{ Params: { volume: string } }>(
    '/volumes/:volume',
    {
      config: { role: 'read' },
      schema: {
        summary: 'Show a volume',
        tags: ['volumes'],
        params: { type: 'object', required: ['volume'], properties: { volume: volumeNameParameter } },
        response: { 200: volumeSchema, 404: errorReference, ...commonErrors },
      },
    },
    async (request) => {
      const name = request.params.volume;
      const failure = context.appliance.store.failedVolumes().find((candidate) => candidate.name === name);
      return failure === undefined ? describe(await context.appliance.store.openVolume(name)) : describeFailed(context, name, failure.error);
    },
  );

  app.delete<{ Params: { volume: string } }>(
    '/volumes/:volume',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Delete a volume and its whole history (refused while clients are attached)',
        tags: ['volumes'],
        params: { type: 'object', required: ['volume'], properties: { volume: volumeNameParameter } },
        response: { 204: { type: 'null' }, 404: errorReference, 409: errorReference, ...commonErrors },
      },
    },
    async (request, reply) => {
      await context.appliance.deleteVolume(request.params.volume);
      return reply.code(204).send();
    },
  );
}

/** A volume that failed to open: its name, the error, and what its volume.json says if it can be read. */
function describeFailed(context: AppContext, name: string, error: string) {
  let config: Partial<VolumeConfig> = {};
  try {
    config = context.appliance.store.config(name);
  } catch {
    // volume.json is what failed
  }
  return {
    name,
    state: 'failed',
    error,
    failed: error,
    ...(config.sizeBytes === undefined ? {} : { sizeBytes: config.sizeBytes, regionSizeBytes: config.regionSizeBytes, segmentSizeBytes: config.segmentSizeBytes }),
    ...(config.createdMicros === undefined ? {} : { createdMicros: config.createdMicros, createdTime: formatMicros(config.createdMicros) }),
  };
}

async function describe(volume: Volume) {
  const stats = volume.stats();
  const history = volume.history;
  return {
    name: volume.config.name,
    state: 'open',
    error: null,
    sizeBytes: volume.config.sizeBytes,
    regionSizeBytes: volume.config.regionSizeBytes,
    segmentSizeBytes: volume.config.segmentSizeBytes,
    createdMicros: volume.config.createdMicros,
    createdTime: formatMicros(volume.config.createdMicros),
    snapshotCount: history?.snapshots().length ?? 0,
    failed: stats.failed,
    statistics: { ...stats },
    quarantine: volume.quarantines().map((report) => ({
      folder: report.folder,
      kind: report.kind,
      detectedMicros: report.detectedMicros,
      lostSequences: report.lostSequences,
      foundRecords: report.foundRecords.map((run) => ({ firstSequence: run.firstSequence, lastSequence: run.lastSequence, recordCount: run.recordCount })),
    })),
    retention: {
      policy: volume.retentionPolicy,
      ...(history === null ? {} : retentionStatusJson(history.lifecycle.status(), volume.retentionPolicy)),
    },
    ...(history === null
      ? {}
      : {
          history: await history.statistics(),
        }),
  };
}
