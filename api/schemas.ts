// JSON schemas shared by the routes. The same schemas validate requests, shape responses and
// make the OpenAPI document (GET /api/docs).

export const errorReference = { $ref: 'Error#' } as const;

/** Error responses every authenticated route may give. */
export const commonErrors = {
  400: errorReference,
  401: errorReference,
  500: errorReference,
  503: errorReference,
} as const;

export const volumeNameParameter = { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,63}$' } as const;
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
