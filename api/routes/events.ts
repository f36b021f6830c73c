// GET /api/v1/events (websocket): the appliance's events as JSON text messages, one per event:
// write rate every second per volume, snapshots, volumes and exports created or deleted, clients
// attaching and leaving.

import type { FastifyInstance } from 'fastify';
import type { AppContext } from '../context.js';

/** A client too slow to take its messages is dropped past this much queued. */
const bufferedBytesMax = 4 * 1024 * 1024;

export async function eventRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.get('/events', { websocket: true, schema: { summary: 'Event stream (websocket)', tags: ['events'] } }, (socket) => {
    const unsubscribe = context.appliance.events.subscribe((event) => {
      if (socket.bufferedAmount > bufferedBytesMax) {
        socket.close(1013, 'too slow: events were piling up');
        return;
      }
      socket.send(JSON.stringify(event));
    });
    socket.on('close', unsubscribe);
    socket.on('error', unsubscribe);
  });
}
