// GET /api/v1/events (websocket): the appliance's events as JSON text messages, one per event:
// write rate every second per volume, snapshots, volumes and exports created or deleted, clients
// attaching and leaving. A browser cannot send a header with a websocket, and a token in the URL
// would reach logs: POST /api/v1/events/ticket gives a ticket for ?ticket=, good once, briefly.

import type { FastifyInstance } from 'fastify';
import type { EventTickets } from '../auth.js';
import type { AppContext } from '../context.js';
import { commonErrors } from '../schemas.js';

/** A client too slow to take its messages is dropped past this much queued. */
const bufferedBytesMax = 4 * 1024 * 1024;

export async function eventRoutes(app: FastifyInstance, context: AppContext, tickets: EventTickets): Promise<void> {
  app.post(
    '/events/ticket',
    {
      config: { role: 'read' },
      schema: {
        summary: 'A ticket for the events websocket (GET /api/v1/events?ticket=TICKET): good once, for expiresInSeconds',
        tags: ['events'],
        response: {
          201: { type: 'object', required: ['ticket', 'expiresInSeconds'], properties: { ticket: { type: 'string' }, expiresInSeconds: { type: 'integer' } } },
          ...commonErrors,
        },
      },
    },
    async (request, reply) => {
      reply.code(201);
      return tickets.issue(request.caller!);
    },
  );

  app.get(
    '/events',
    { websocket: true, config: { role: 'read', acceptsTicket: true }, schema: { summary: 'Event stream (websocket): ?ticket= from POST /api/v1/events/ticket, or the Authorization header', tags: ['events'] } },
    (socket) => {
      const unsubscribe = context.appliance.events.subscribe((event) => {
        if (socket.bufferedAmount > bufferedBytesMax) {
          socket.close(1013, 'too slow: events were piling up');
          return;
        }
        socket.send(JSON.stringify(event));
      });
      socket.on('close', unsubscribe);
      socket.on('error', unsubscribe);
    },
  );
}
