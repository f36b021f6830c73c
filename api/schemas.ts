// JSON schemas shared by the routes. The same schemas validate requests, shape responses and
// make the OpenAPI document (GET /api/docs).

import { calendarTierPeriods } from '../storage/index.js';

export const errorReference = { $ref: 'Error#' } as const;

/** Error responses every authenticated route may give. */
export const commonErrors = {
  400: errorReference,
  401: errorReference,
  500: errorReference,
  503: errorReference,
} as const;

export const volumeNameParameter = { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' } as const;
export const volumeParameters = { type: 'object', required: ['volume'], properties: { volume: volumeNameParameter } } as const;
export const snapshotNameParameter = { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' } as const;
/** One of these names an instant of a volume's history. */
export const instantProperties = {
  at: { type: ['string', 'integer'], description: 'RFC 3339 with microseconds, or Unix µs' },
  snapshot: snapshotNameParameter,
  sequence: { type: 'integer', minimum: 0 },
} as const;

export const exportNameParameter = { type: 'string', pattern: '^[a-z0-9][a-z0-9._@-]{0,127}$' } as const;

export const snapshotSchema = {
  type: 'object',
  required: ['name', 'sequence', 'micros', 'time', 'note'],
  properties: {
    name: { type: 'string' },
    sequence: { type: 'integer', description: 'the mark record in the log; the snapshot shows the volume just after it' },
    micros: { type: 'integer', description: 'Unix microseconds' },
    time: { type: 'string', description: 'RFC 3339 with microseconds' },
    note: { type: 'string' },
  },
} as const;

/**
 * A volume's retention policy (storage/retention/policy.ts, docs/formats/retention.md). The schema
 * checks the shape; the rules (orders, limits) are validateRetentionPolicy's, which answers in words.
 */
export const retentionPolicySchema = {
  type: 'object',
  required: ['keepAllSeconds', 'tiers', 'maxHistoryBytes', 'reserve', 'requiredWindowSeconds'],
  additionalProperties: false,
  properties: {
    keepAllSeconds: { type: 'integer', description: 'every write of this last period is kept, to the microsecond (whole seconds, 0 or more)' },
    tiers: {
      type: 'array',
      description: 'coarser points kept after that, finest period first (at most 8); each tier kept longer than keepAllSeconds and than the tier before it',
      items: {
        type: 'object',
        required: ['every', 'keepSeconds'],
        additionalProperties: false,
        properties: {
          every: {
            description: `${calendarTierPeriods.join(', ')} (UTC; weeks start on Monday), or a fixed period in whole seconds`,
            anyOf: [{ type: 'integer' }, { type: 'string', enum: [...calendarTierPeriods] }],
          },
          keepSeconds: { type: 'integer', description: 'the tier keeps its points this long (whole seconds, at least one period)' },
        },
      },
    },
    maxHistoryBytes: { type: 'integer', description: 'cap on the bytes the history takes on disk (at least 64 MiB); past it the oldest history is expired first' },
    reserve: {
      description: '{"percent": P} with P from 0 to 50 (of the file system\'s size), or {"bytes": N}: free space the file system keeps',
      oneOf: [
        { type: 'object', required: ['percent'], additionalProperties: false, properties: { percent: { type: 'number' } } },
        { type: 'object', required: ['bytes'], additionalProperties: false, properties: { bytes: { type: 'integer' } } },
      ],
    },
    requiredWindowSeconds: { type: 'integer', description: 'alert when the protected window gets shorter than this (whole seconds; 0: never)' },
  },
} as const;

/** The lifecycle engine's live figures (storage/retention/lifecycle.ts, RetentionStatus). */
export const retentionStatusSchema = {
  type: 'object',
  properties: {
    oldestRecoverableMicros: { type: 'integer', description: 'the oldest instant that can still be read (the horizon, or the volume\'s creation)' },
    protectionWindowSeconds: { type: 'integer', description: 'from the oldest recoverable instant to now' },
    continuousFromMicros: { type: 'integer', description: 'every instant from here to now is kept' },
    tierStartsMicros: { type: 'array', items: { type: 'integer' }, description: 'where each tier\'s points begin, finest tier first' },
    keptPointCount: { type: 'integer', description: 'kept points older than the continuous region (tier points, snapshots, held instants)' },
    intervalCount: { type: 'integer', description: 'packed intervals between kept points' },
    historyBytes: { type: 'object', description: 'allocated bytes of the log, the packs, the base image and the index, and their total', additionalProperties: { type: 'integer' } },
    maxHistoryBytes: { type: 'integer' },
    fileSystem: { type: 'object', additionalProperties: { type: 'integer' }, description: 'sizeBytes, freeBytes and reserveBytes of the data folder\'s file system' },
    projectedHistoryBytes: { type: 'integer', description: 'what the policy would keep at the current write rate' },
    logBytesPerSecond: { type: 'integer' },
    underPressure: { type: 'boolean', description: 'history is being expired early to stay under the cap and the reserve' },
    degradedReasons: { type: 'array', items: { type: 'string' } },
    statistics: {
      type: 'object',
      description: 'since the appliance started: operations (packs, merges, folds), reclaimed bytes, segments deleted, seconds spent, failures',
      additionalProperties: { type: ['integer', 'number', 'string', 'null'] },
    },
  },
} as const;

export const volumeSchema = {
  type: 'object',
  required: ['name', 'sizeBytes', 'createdMicros'],
  properties: {
    name: { type: 'string' },
    sizeBytes: { type: 'integer' },
    regionSizeBytes: { type: 'integer' },
    segmentSizeBytes: { type: 'integer' },
    createdMicros: { type: 'integer' },
    createdTime: { type: 'string' },
    snapshotCount: { type: 'integer' },
    failed: { type: ['string', 'null'] },
    statistics: {
      type: 'object',
      additionalProperties: { type: ['integer', 'number', 'string', 'null'] },
    },
    history: {
      type: 'object',
      properties: {
        windows: { type: 'integer' },
        mapsPerLevel: { type: 'array', items: { type: 'integer' } },
        mappedThroughSequence: { type: 'integer' },
        oldestMicros: { type: 'integer' },
        newestMicros: { type: 'integer' },
        indexBytes: { type: 'integer' },
      },
    },
    retention: {
      type: 'object',
      description: "the retention policy in force, and the lifecycle engine's live figures (status)",
      required: ['policy'],
      properties: { policy: retentionPolicySchema, status: retentionStatusSchema },
    },
  },
} as const;

export const exportSchema = {
  type: 'object',
  required: ['name', 'volume', 'kind', 'writable', 'uri', 'description', 'clients'],
  properties: {
    name: { type: 'string' },
    volume: { type: 'string' },
    kind: { type: 'string', enum: ['live', 'view', 'clone'] },
    sequence: { type: ['integer', 'null'] },
    micros: { type: ['integer', 'null'] },
    time: { type: ['string', 'null'] },
    snapshot: { type: ['string', 'null'] },
    writable: { type: 'boolean' },
    description: { type: 'string' },
    uri: { type: 'string' },
    clients: {
      type: 'array',
      items: {
        type: 'object',
        properties: { connection: { type: 'integer' }, remote: { type: 'string' }, tls: { type: 'boolean' }, certificate: { type: ['string', 'null'] } },
      },
    },
    allow: { type: 'array', items: { type: 'string' }, description: 'clients allowed over NBD; empty: all' },
    tlsOnly: { type: 'boolean', description: 'clients must start TLS first' },
  },
} as const;
