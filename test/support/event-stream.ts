// The appliance's events websocket from tests: subscribe with the token, collect every event, and
// wait for one.

import fs from 'node:fs';
import WebSocket from 'ws';
import type { Appliance } from './appliance.js';
import { waitFor } from './wait.js';

export interface EventMessage {
  type: string;
  [field: string]: unknown;
}

export function readToken(appliance: Appliance): string {
  return fs.readFileSync(`${appliance.dataDirectory}/api-token`, 'utf8').trim();
}

/** Subscribe, and collect every event until closed. */
export async function subscribe(appliance: Appliance, token: string): Promise<{ events: EventMessage[]; socket: WebSocket }> {
  const url = `${appliance.httpBase.replace(/^http/, 'ws')}/api/v1/events?token=${encodeURIComponent(token)}`;
  const socket = new WebSocket(url);
  const events: EventMessage[] = [];
  socket.on('message', (data) => events.push(JSON.parse(String(data)) as EventMessage));
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  return { events, socket };
}

/** The first event the predicate accepts, once it has come (polling every 50 ms up to the deadline). */
export async function waitForEvent(events: EventMessage[], predicate: (event: EventMessage) => boolean, what: string, deadlineMs = 5000): Promise<EventMessage> {
  try {
    return await waitFor(`a ${what} event`, () => events.find(predicate), deadlineMs, 50);
  } catch {
    throw new Error(`no ${what} event within ${deadlineMs / 1000} s; got ${JSON.stringify(events.map((event) => event.type))}`);
  }
}
