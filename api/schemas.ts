// JSON schemas shared by the routes. The same schemas validate requests, shape responses and
// make the OpenAPI document (GET /api/docs).

import { calendarTierPeriods, retentionLimits } from '../storage/index.js';

export const errorReference = { $ref: 'Error#' } as const;

/** Error responses every authenticated route may give. */
export const commonErrors = {
  400: errorReference,
  401: errorReference,
  403: errorReference,
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
  required: ['name', 'sequence', 'micros', 'time', 'note', 'pinned', 'expiresMicros', 'expiresTime'],
  properties: {
    name: { type: 'string' },
    sequence: { type: 'integer', description: 'the mark record in the log; the snapshot shows the volume just after it' },
    micros: { type: 'integer', description: 'Unix microseconds' },
    time: { type: 'string', description: 'RFC 3339 with microseconds' },
    note: { type: 'string' },
    pinned: { type: 'boolean', description: 'space pressure never expires it (only its deletion or its expiry time does)' },
    expiresMicros: { type: ['integer', 'null'], description: 'deleted at this time (Unix µs); null: kept until deleted' },
    expiresTime: { type: ['string', 'null'], description: 'the same in RFC 3339' },
  },
} as const;

/** When a snapshot expires: an RFC 3339 time (or Unix µs) or seconds from now. */
export const snapshotExpiryProperties = {
  expiresAt: { type: 'string', description: 'RFC 3339 (or Unix µs): the snapshot is deleted then' },
  expiresInSeconds: { type: 'integer', minimum: 1, maximum: retentionLimits.durationSecondsMax, description: 'the snapshot is deleted this many seconds from now' },
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

/** Instants in Unix µs and RFC 3339, as the retention figures give them. */
const microsAndTime = (name: string, description: string) =>
  ({
    [`${name}Micros`]: { type: 'integer', description: `${description} (Unix µs)` },
    [`${name}Time`]: { type: 'string', description: `${description} (RFC 3339)` },
  }) as const;

/** How far back history reaches and where its regions start (GET /volumes/:volume and the timeline). */
export const retentionRegionsProperties = {
  ...microsAndTime('oldestRecoverable', 'the oldest instant history still holds'),
  protectionWindowSeconds: { type: 'integer', description: 'seconds from the oldest recoverable instant to now' },
  ...microsAndTime('continuousFrom', 'from here on every write is kept'),
  tiers: {
    type: 'array',
    description: "each tier's points, finest first: from its start up to the start of the finer region after it",
    items: {
      type: 'object',
      required: ['every', 'keepSeconds', 'startMicros', 'startTime', 'endMicros', 'endTime'],
      properties: {
        every: { anyOf: [{ type: 'integer' }, { type: 'string' }] },
        keepSeconds: { type: 'integer' },
        ...microsAndTime('start', "the tier's oldest point may lie here"),
        ...microsAndTime('end', 'the finer tier or the continuous region takes over here'),
      },
    },
  },
} as const;

const byteCount = { type: 'integer', minimum: 0 } as const;

/** The history lifecycle's live figures (storage/retention/lifecycle.ts, RetentionStatus). */
export const retentionStatusProperties = {
  ...retentionRegionsProperties,
  keptPointCount: { type: 'integer', description: 'kept instants older than the continuous region (tier points, snapshots, held views)' },
  intervalCount: { type: 'integer', description: 'packed intervals between kept points' },
  historyBytes: {
    type: 'object',
    description: 'bytes the history takes on disk, by part',
    properties: { totalBytes: byteCount, logBytes: byteCount, packBytes: byteCount, baseBytes: byteCount, indexBytes: byteCount },
  },
  maxHistoryBytes: byteCount,
  fileSystem: {
    type: 'object',
    description: "the data folder's file system",
    properties: { sizeBytes: byteCount, freeBytes: byteCount, reserveBytes: byteCount },
  },
  projectedHistoryBytes: { type: 'integer', description: 'what the policy would keep at the current write rate' },
  logBytesPerSecond: { type: 'integer', description: 'the current write rate, in log bytes (smoothed)' },
  underPressure: { type: 'boolean', description: 'history is being expired early to stay under its cap and the free-space reserve' },
  degradedReasons: { type: 'array', items: { type: 'string' }, description: 'why /health says degraded for this volume; empty when it does not' },
  statistics: {
    type: 'object',
    description: 'what the lifecycle did since the appliance started',
    properties: {
      reclaimedBytes: byteCount,
      packs: { type: 'integer' },
      merges: { type: 'integer' },
      folds: { type: 'integer' },
      segmentsDeleted: { type: 'integer' },
      expirySeconds: { type: 'number', description: 'time spent folding history into the base image' },
      compactionSeconds: { type: 'number', description: 'time spent packing and merging' },
      operationFailures: { type: 'integer' },
      failedPassesInARow: { type: 'integer' },
      lastFailure: { type: ['string', 'null'] },
    },
  },
} as const;

export const volumeSchema = {
  type: 'object',
  required: ['name', 'state'],
  properties: {
    name: { type: 'string' },
    state: { type: 'string', enum: ['open', 'failed'], description: 'failed: it could not be opened (error says why); not exported, until restart or deletion' },
    error: { type: ['string', 'null'] },
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
    quarantine: {
      type: 'array',
      description: 'what recovery found past a bad record of the log and kept in quarantine/<µs> (docs/formats/write-log.md, "Damage"); damage refuses writes until the folder is taken away',
      items: {
        type: 'object',
        properties: {
          folder: { type: 'string' },
          kind: { type: 'string', enum: ['damage', 'unsynced-records'] },
          detectedMicros: { type: 'integer' },
          lostSequences: { type: 'array', items: { type: 'object', properties: { firstSequence: { type: 'integer' }, lastSequence: { type: 'integer' } } } },
          foundRecords: {
            type: 'array',
            items: { type: 'object', properties: { firstSequence: { type: 'integer' }, lastSequence: { type: 'integer' }, recordCount: { type: 'integer' } } },
          },
        },
      },
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
        tailRecordCount: { type: 'integer', description: 'records not yet cut into the index, held in memory' },
        tailRecordCountMax: { type: 'integer', description: 'past it writes wait for a cut, or are refused (ENOSPC) while cuts fail' },
        cutsFailedInARow: { type: 'integer', description: '0 while cutting works; failed cuts are tried again with backoff' },
        cutFailuresTotal: { type: 'integer' },
        lastCutError: { type: ['string', 'null'] },
        cutsFailingSinceMicros: { type: ['integer', 'null'] },
        nextCutAttemptMicros: { type: ['integer', 'null'] },
        refusingWritesForIndex: { type: 'boolean' },
        lastMergeError: { type: ['string', 'null'] },
      },
    },
    retention: {
      type: 'object',
      description: "the retention policy in force, and the history lifecycle's live figures",
      required: ['policy'],
      properties: { policy: retentionPolicySchema, ...retentionStatusProperties },
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
    allow: { type: 'array', items: { type: 'string' }, description: "clients allowed over NBD: the export's own rules, or its volume's when it has none; empty: all" },
    tlsOnly: { type: 'boolean', description: 'clients must start TLS first (asked for by the export or its volume)' },
    inheritAccess: { type: 'boolean', description: "the volume's access policy applies too: a client must pass it and the export's own rules" },
    state: { type: 'string', enum: ['serving', 'failed'], description: 'failed: it could not be restored at start (error says why); not served, kept until deleted' },
    error: { type: ['string', 'null'] },
  },
} as const;
