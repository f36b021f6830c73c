// /api/v1/exports: NBD exports of points in time, read-only views or writable clones. Each keeps
// its volume's access policy (allowlist, TLS-only), which its own rules only narrow; an export
// free of the volume's policy (inheritAccess false) may be wider, so only an admin may make one.

import type { FastifyInstance } from 'fastify';
import { formatMicros } from '../../storage/index.js';
import type { ExportSummary } from '../../appliance/exports.js';
import type { AppContext } from '../context.js';
import { sendForbiddenRole } from '../auth.js';
import { commonErrors, errorReference, exportNameParameter, exportSchema, instantProperties, volumeNameParameter } from '../schemas.js';

function exportJson(summary: ExportSummary) {
  return { ...summary, time: summary.micros === null ? null : formatMicros(summary.micros) };
}

export async function exportRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.post<{ Body: { volume: string; at?: string | number; snapshot?: string; sequence?: number; writable?: boolean; name?: string; allow?: string[]; tlsOnly?: boolean; inheritAccess?: boolean } }>(
    '/exports',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Export a point in time over NBD: give exactly one of at, snapshot, sequence',
        tags: ['exports'],
        body: {
          type: 'object',
          required: ['volume'],
          additionalProperties: false,
          properties: {
            volume: volumeNameParameter,
            ...instantProperties,
            writable: { type: 'boolean', default: false, description: 'a clone: writes go to an overlay of its own' },
            name: exportNameParameter,
            allow: {
              type: 'array',
              maxItems: 256,
              items: { type: 'string', minLength: 1, maxLength: 128 },
              description:
                "clients allowed (default: those the volume allows): IP addresses, CIDR blocks (10.0.0.0/8), cn:NAME (verified client-certificate CN), unix; a client must match the volume's allowlist too",
            },
            tlsOnly: { type: 'boolean', default: false, description: 'refuse clients that have not started TLS (serve --tls selective or required); a TLS-only volume makes its exports TLS-only anyway' },
            inheritAccess: {
              type: 'boolean',
              default: true,
              description: "false: the volume's access policy does not apply, only allow and tlsOnly, which may let in clients the volume refuses (admin only)",
            },
          },
        },
        response: { 201: exportSchema, 404: errorReference, 409: errorReference, 410: errorReference, ...commonErrors },
      },
    },
    async (request, reply) => {
      // Free of the volume's policy, an export may reach clients the volume refuses.
      if (request.body.inheritAccess === false && request.caller!.role !== 'admin') {
        return sendForbiddenRole(reply, request.caller!, 'admin', "an export free of its volume's access policy (inheritAccess false)");
      }
      const summary = await context.appliance.exports.create(request.body);
      reply.code(201);
      return exportJson(summary);
    },
  );

  app.get(
    '/exports',
    { config: { role: 'read' }, schema: { summary: 'List exports, live volumes included', tags: ['exports'], response: { 200: { type: 'object', properties: { exports: { type: 'array', items: exportSchema } } }, ...commonErrors } } },
    async () => ({ exports: context.appliance.exports.list().map(exportJson) }),
  );

  app.delete<{ Params: { name: string }; Querystring: { force?: boolean } }>(
    '/exports/:name',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Delete a view or clone export; refused while clients are attached unless force=true',
        tags: ['exports'],
        params: { type: 'object', required: ['name'], properties: { name: exportNameParameter } },
        querystring: { type: 'object', additionalProperties: false, properties: { force: { type: 'boolean', default: false } } },
        response: { 204: { type: 'null' }, 404: errorReference, 409: errorReference, ...commonErrors },
      },
    },
    async (request, reply) => {
      await context.appliance.exports.delete(request.params.name, { force: request.query.force ?? false });
      return reply.code(204).send();
    },
  );
}
