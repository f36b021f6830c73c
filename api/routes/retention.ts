// /api/v1/volumes/:volume/retention: a volume's retention policy (docs/formats/retention.md): read
// it, or replace it whole. Nonsense is refused with invalid-request and the reason in words, from
// the schema (readableSchemaErrors) or from the policy's rules (validateRetentionPolicy).

import type { FastifyInstance } from 'fastify';
import type { RetentionPolicy } from '../../storage/index.js';
import type { AppContext } from '../context.js';
import { readableSchemaErrors } from '../schema-errors.js';
import { commonErrors, errorReference, retentionPolicySchema, volumeParameters } from '../schemas.js';

export async function retentionRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.get<{ Params: { volume: string } }>(
    '/volumes/:volume/retention',
    {
      config: { role: 'read' },
      schema: {
        summary: "Show a volume's retention policy",
        tags: ['retention'],
        params: volumeParameters,
        response: { 200: retentionPolicySchema, 404: errorReference, ...commonErrors },
      },
      schemaErrorFormatter: readableSchemaErrors({ params: volumeParameters }),
    },
    async (request) => (await context.appliance.store.openVolume(request.params.volume)).retentionPolicy,
  );

  app.put<{ Params: { volume: string }; Body: RetentionPolicy }>(
    '/volumes/:volume/retention',
    {
      config: { role: 'admin' },
      schema: {
        summary: "Replace a volume's retention policy (the whole policy; stored durably before the answer)",
        tags: ['retention'],
        params: volumeParameters,
        body: retentionPolicySchema,
        response: { 200: retentionPolicySchema, 404: errorReference, ...commonErrors },
      },
      schemaErrorFormatter: readableSchemaErrors({ params: volumeParameters, body: retentionPolicySchema }),
    },
    async (request) => context.appliance.setRetentionPolicy(request.params.volume, request.body),
  );
}
