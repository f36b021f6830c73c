// /api/v1/restores, /api/v1/verify, /api/v1/seeds start jobs; /api/v1/jobs follows them.
// A job's progress also goes out on the events websocket (job-started, job-progress,
// job-finished). POST ...?wait=true answers only once the job has finished.

import type { FastifyInstance } from 'fastify';
import { formatMicros } from '../../storage/index.js';
import type { Job, RestoreRequest, SeedRequest, VerifyRequest } from '../../appliance/jobs.js';
import { ApplianceError } from '../../appliance/errors.js';
import type { AppContext } from '../context.js';
import { commonErrors, errorReference, instantProperties, volumeNameParameter } from '../schemas.js';

const jobIdParameter = { type: 'string', pattern: '^[a-z]+-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$' } as const;
const endpointText = {
  type: 'string',
  minLength: 1,
  maxLength: 4096,
  description:
    'nbd://HOST[:PORT]/EXPORT, nbds://HOST[:PORT]/EXPORT (TLS, checked against serve --remote-tls-ca), nbd+unix:///EXPORT?socket=PATH, or the absolute path of a block device allowed by serve --device-allow or of a file under a serve --file-root',
} as const;
const jobSchema = {
  type: 'object',
  required: ['id', 'kind', 'state', 'volume', 'progress'],
  properties: {
    id: { type: 'string' },
    kind: { type: 'string', enum: ['restore', 'verify', 'seed'] },
    state: { type: 'string', enum: ['running', 'done', 'failed', 'cancelled', 'interrupted'] },
    volume: { type: 'string' },
    sequence: { type: ['integer', 'null'] },
    baseSequence: { type: 'integer' },
    mode: { type: ['string', 'null'] },
    target: { type: ['string', 'null'] },
    undoSnapshot: { type: ['string', 'null'], description: 'in-place restores: restore this snapshot in place to undo' },
    started: { type: 'string' },
    finished: { type: ['string', 'null'] },
    runs: { type: 'integer', description: 'how many times the job was started (resumed runs count)' },
    resumedFromBytes: { type: 'integer' },
    progress: {
      type: 'object',
      properties: {
        phase: { type: 'string' },
        doneBytes: { type: 'integer' },
        totalBytes: { type: 'integer' },
        rateBytesPerSecond: { type: 'integer' },
        etaSeconds: { type: ['integer', 'null'] },
      },
    },
    result: { type: ['object', 'null'], additionalProperties: true },
    error: { type: ['string', 'null'] },
  },
} as const;

function jobJson(job: Job) {
  return {
    id: job.id,
    kind: job.kind,
    state: job.state,
    volume: job.volume,
    sequence: job.sequence,
    baseSequence: job.baseSequence,
    mode: job.mode,
    target: job.target,
    undoSnapshot: job.undoSnapshot,
    started: formatMicros(job.startedMicros),
    finished: job.finishedMicros === null ? null : formatMicros(job.finishedMicros),
    runs: job.runs,
    resumedFromBytes: job.checkpoint.doneThroughBytes,
    progress: job.progress,
    result: job.result,
    error: job.error,
  };
}

/** What starting a job answers: the job (202 running, or 200 finished with ?wait=true) or why not. */
const startResponses = {
  ...commonErrors,
  200: jobSchema,
  202: jobSchema,
  403: { description: 'target-not-allowed: a device or file the operator has not allowed (serve --device-allow, --file-root); forbidden-role: the token may not start jobs (admin)', ...errorReference },
  404: errorReference,
  409: { description: 'busy: clients are attached; target-in-use: the block device is mounted or held by md, LVM or another program', ...errorReference },
  410: errorReference,
} as const;

const waitQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { wait: { type: 'boolean', default: false, description: 'answer once the job has finished' } },
} as const;

export async function jobRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  const { appliance } = context;

  /**
   * Targets and sources given over the API: an NBD URI, or a device or file the operator allowed
   * (target-not-allowed otherwise, before the job touches anything).
   */
  const checkEndpoint = async (text: string | undefined, field: string, use: 'read' | 'write'): Promise<void> => {
    if (text === undefined) return;
    try {
      await appliance.jobs.checkEndpoint(text, use);
    } catch (error) {
      if (error instanceof ApplianceError) throw new ApplianceError(error.code, `${field}: ${error.message}`, error.details);
      throw error;
    }
  };

  const answer = async (job: Job, wait: boolean, reply: { code: (status: number) => unknown }) => {
    if (!wait) {
      reply.code(202);
      return jobJson(job);
    }
    return jobJson(await appliance.jobs.settled(job.id));
  };

  app.post<{ Body: RestoreRequest; Querystring: { wait?: boolean } }>(
    '/restores',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Restore a point in time onto a target (NBD URI, block device, file) or onto the volume itself (inPlace)',
        description:
          'mode fast: the target equals the volume now, only the blocks changed since the instant are sent; digest (default): chunks are compared and only differing ones sent; full: everything is sent. Asking again for an interrupted or cancelled restore resumes it.',
        tags: ['jobs'],
        querystring: waitQuery,
        body: {
          type: 'object',
          required: ['volume'],
          additionalProperties: false,
          properties: {
            volume: volumeNameParameter,
            ...instantProperties,
            target: endpointText,
            inPlace: { type: 'boolean', description: 'roll the volume back as new logged writes (undo: restore the undoSnapshot in place)' },
            mode: { type: 'string', enum: ['fast', 'digest', 'full'] },
            force: { type: 'boolean', description: 'in place even with clients attached to the live export' },
            rateBytesPerSecond: { type: 'integer', minimum: 1048576, description: 'throttle' },
            verify: { type: 'boolean', default: true, description: 'read back and compare what was written' },
          },
        },
        response: startResponses,
      },
    },
    async (request, reply) => {
      await checkEndpoint(request.body.target, 'target', 'write');
      return answer(await appliance.jobs.restore(request.body), request.query.wait ?? false, reply);
    },
  );

  app.post<{ Body: VerifyRequest; Querystring: { wait?: boolean } }>(
    '/verify',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Verify a volume: internally (records, maps, live image), or against a disk, file or NBD URI',
        tags: ['jobs'],
        querystring: waitQuery,
        body: {
          type: 'object',
          required: ['volume'],
          additionalProperties: false,
          properties: { volume: volumeNameParameter, against: endpointText, ...instantProperties },
        },
        response: startResponses,
      },
    },
    async (request, reply) => {
      await checkEndpoint(request.body.against, 'against', 'read');
      return answer(await appliance.jobs.verify(request.body), request.query.wait ?? false, reply);
    },
  );

  app.post<{ Body: SeedRequest; Querystring: { wait?: boolean } }>(
    '/seeds',
    {
      config: { role: 'admin' },
      schema: {
        summary: "Seed a volume's t0 from a disk image, block device or NBD URI (only differing chunks are written)",
        tags: ['jobs'],
        querystring: waitQuery,
        body: {
          type: 'object',
          required: ['volume', 'source'],
          additionalProperties: false,
          properties: {
            volume: volumeNameParameter,
            source: endpointText,
            full: { type: 'boolean', description: 'write every chunk' },
            force: { type: 'boolean', description: 'even with clients attached to the live export' },
          },
        },
        response: startResponses,
      },
    },
    async (request, reply) => {
      await checkEndpoint(request.body.source, 'source', 'read');
      return answer(await appliance.jobs.seed(request.body), request.query.wait ?? false, reply);
    },
  );

  app.get(
    '/jobs',
    { config: { role: 'admin' }, schema: { summary: 'Restores, verifications and seeds, newest first', tags: ['jobs'], response: { 200: { type: 'object', properties: { jobs: { type: 'array', items: jobSchema } } }, ...commonErrors } } },
    async () => ({ jobs: appliance.jobs.list().map(jobJson) }),
  );

  app.get<{ Params: { id: string } }>(
    '/jobs/:id',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'One job, with its progress and result',
        tags: ['jobs'],
        params: { type: 'object', required: ['id'], properties: { id: jobIdParameter } },
        response: { 200: jobSchema, 404: errorReference, ...commonErrors },
      },
    },
    async (request) => jobJson(appliance.jobs.get(request.params.id)),
  );

  app.delete<{ Params: { id: string } }>(
    '/jobs/:id',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Cancel a running job (a cancelled restore or seed resumes when asked for again)',
        tags: ['jobs'],
        params: { type: 'object', required: ['id'], properties: { id: jobIdParameter } },
        response: { 200: jobSchema, 404: errorReference, ...commonErrors },
      },
    },
    async (request) => jobJson(appliance.jobs.cancel(request.params.id)),
  );
}
