// The appliance's events websocket from tests: take a ticket with a token, subscribe with it,
// collect every event, and wait for one.

import WebSocket from 'ws';
import { apiRequest } from './api.js';
import type { Appliance } from './appliance.js';
import { waitFor } from './wait.js';

export interface EventMessage {
  type: string;
  [field: string]: unknown;
}

/** The admin token made for the appliance. */
export function readToken(appliance: Appliance): string {
  return appliance.token;
}

/** A ticket for the events websocket (POST /api/v1/events/ticket with the token). */
export async function eventTicket(appliance: Appliance, token: string): Promise<string> {
  const response = await apiRequest(appliance, 'POST', '/api/v1/events/ticket', undefined, { token });
  if (response.status !== 201) throw new Error(`no ticket: HTTP ${response.status} ${JSON.stringify(response.json)}`);
  return response.json.ticket as string;
}

/** The websocket URL with a ticket. */
export function eventsUrl(appliance: Appliance, ticket: string): string {
  return `${appliance.httpBase.replace(/^http/, 'ws')}/api/v1/events?ticket=${encodeURIComponent(ticket)}`;
}

/** The HTTP status of a websocket upgrade: 101 when it opened (closed at once), else the refusal's. */
export function upgradeStatus(url: string, ca?: Buffer): Promise<number> {
  return new Promise((resolve) => {
    const socket = new WebSocket(url, { ca });
    socket.once('unexpected-response', (_request, response) => {
      resolve(response.statusCode ?? 0);
      socket.terminate();
    });
    socket.once('open', () => {
      resolve(101);
      socket.close();
    });
    socket.once('error', () => resolve(0));
  });
}

/** Subscribe with a ticket the token takes, and collect every event until closed. */
export async function subscribe(appliance: Appliance, token: string): Promise<{ events: EventMessage[]; socket: WebSocket }> {
  const socket = new WebSocket(eventsUrl(appliance, await eventTicket(appliance, token)), { ca: appliance.httpCa });
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
