// Who may call what: every route declares the role it needs (config.role; /health needs none),
// and a request brings a token of that role or a stronger one (appliance/api-tokens.ts) as
// "Authorization: Bearer TOKEN". A token never travels in a URL, where request logs and proxies
// keep it: the events websocket, which a browser cannot give a header, takes a ticket instead, made
// by POST /api/v1/events/ticket, good once and for ticketLimits.lifetimeMs. Request logs show
// URLs with the values of `token` and `ticket` replaced, should a client put one there anyway.

import { createHash, randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { roleAllows, type ApiCaller, type ApiRole, type TokenStore } from '../appliance/api-tokens.js';
import { sendError } from './errors.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The role a route needs; every route but the open ones declares one. */
    role?: ApiRole;
    /** The route takes a ticket (?ticket=) in place of the header: the events websocket. */
    acceptsTicket?: boolean;
  }
  interface FastifyRequest {
    /** The token's name and role, once it matched (null on open routes). */
    caller: ApiCaller | null;
  }
}

/** Routes reachable without a token. */
export const openPaths: ReadonlySet<string> = new Set(['/health']);

export const ticketLimits = {
  lifetimeMs: 30_000,
  /** Tickets not yet used; past this the oldest is dropped. */
  outstandingCountMax: 1024,
  secretBytes: 32,
} as const;

/** Query parameters whose values never reach a log. */
const secretParameters = ['token', 'ticket'];

/** Single-use, short-lived tickets for the events websocket, each tied to the token that asked. */
export class EventTickets {
  /** By the ticket's SHA-256: the secrets themselves are not kept. */
  private readonly tickets = new Map<string, { tokenSha256: string; expiresAtMs: number }>();

  issue(caller: ApiCaller, nowMs = Date.now()): { ticket: string; expiresInSeconds: number } {
    this.dropExpired(nowMs);
    while (this.tickets.size >= ticketLimits.outstandingCountMax) this.tickets.delete(this.tickets.keys().next().value!);
    const ticket = randomBytes(ticketLimits.secretBytes).toString('base64url');
    this.tickets.set(sha256Hex(ticket), { tokenSha256: caller.sha256, expiresAtMs: nowMs + ticketLimits.lifetimeMs });
    return { ticket, expiresInSeconds: ticketLimits.lifetimeMs / 1000 };
  }

  /** The hash of the token a ticket was made for; the ticket is used up. Null if unknown or expired. */
  redeem(ticket: string, nowMs = Date.now()): string | null {
    const key = sha256Hex(ticket);
    const entry = this.tickets.get(key);
    if (entry === undefined) return null;
    this.tickets.delete(key);
    return entry.expiresAtMs > nowMs ? entry.tokenSha256 : null;
  }

  get outstandingCount(): number {
    return this.tickets.size;
  }

  private dropExpired(nowMs: number): void {
    for (const [key, entry] of this.tickets) if (entry.expiresAtMs <= nowMs) this.tickets.delete(key);
  }
}

/** Refuse at start-up a route that does not say which role it needs (a programmer's mistake). */
export function requireRoles(app: FastifyInstance): void {
  app.addHook('onRoute', (route) => {
    const role = route.config?.role;
    if (openPaths.has(route.url)) {
      if (role !== undefined) throw new TypeError(`route ${route.url} is open and declares role ${role}`);
      return;
    }
    if (role === undefined) throw new TypeError(`route ${String(route.method)} ${route.url} declares no role (config.role)`);
    const description = `Needs a token of role ${role}${role === 'admin' ? '' : ' or stronger'}.`;
    route.schema = { ...route.schema, description: route.schema?.description === undefined ? description : `${route.schema.description} ${description}` };
  });
}

/** The onRequest hook: 401 without a valid token, 403 forbidden-role with one too weak. */
export function authenticate(tokens: TokenStore, tickets: EventTickets) {
  return async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> => {
    // A request no route takes still needs a token, so unknown paths say nothing to strangers.
    const needed = request.routeOptions.config.role ?? (request.is404 ? 'read' : undefined);
    if (needed === undefined) return undefined;
    const query = queryOf(request.url);
    if (query.has('token')) {
      return sendError(reply, { statusCode: 401, code: 'unauthorized', message: 'a token never goes in a URL: send "Authorization: Bearer TOKEN" (the events websocket takes a ticket from POST /api/v1/events/ticket)' });
    }
    const caller = callerOf(request, query, tokens, tickets);
    if (caller === null) {
      const message = request.routeOptions.config.acceptsTicket
        ? 'give ?ticket= from POST /api/v1/events/ticket (good once, for 30 s), or "Authorization: Bearer TOKEN"'
        : 'send an API token as "Authorization: Bearer TOKEN" (cdp-nbd token create makes one)';
      return sendError(reply, { statusCode: 401, code: 'unauthorized', message });
    }
    if (!roleAllows(caller.role, needed)) return sendForbiddenRole(reply, caller, needed, `${request.method} ${request.routeOptions.url}`);
    request.caller = caller;
    return undefined;
  };
}

/** 403 forbidden-role: `what` needs a stronger token than the caller's. */
export function sendForbiddenRole(reply: FastifyReply, caller: ApiCaller, needed: ApiRole, what: string): FastifyReply {
  return sendError(reply, {
    statusCode: 403,
    code: 'forbidden-role',
    message: `${what} needs the ${needed} role; token "${caller.name}" has the ${caller.role} role`,
    details: { roleNeeded: needed, role: caller.role, token: caller.name },
  });
}

function callerOf(request: FastifyRequest, query: URLSearchParams, tokens: TokenStore, tickets: EventTickets): ApiCaller | null {
  const header = request.headers.authorization ?? '';
  if (header !== '') return header.startsWith('Bearer ') ? tokens.authenticate(header.slice('Bearer '.length).trim()) : null;
  const ticket = query.get('ticket');
  if (ticket === null || request.routeOptions.config.acceptsTicket !== true) return null;
  const tokenSha256 = tickets.redeem(ticket);
  return tokenSha256 === null ? null : tokens.callerOf(tokenSha256);
}

function queryOf(url: string): URLSearchParams {
  const mark = url.indexOf('?');
  return new URLSearchParams(mark < 0 ? '' : url.slice(mark + 1));
}

/** The URL with the values of secret query parameters replaced (for logs). */
export function redactUrl(url: string): string {
  const mark = url.indexOf('?');
  if (mark < 0) return url;
  const redacted = url
    .slice(mark + 1)
    .split('&')
    .map((pair) => {
      const name = decodeSafely(pair.split('=', 1)[0]!).toLowerCase();
      return secretParameters.includes(name) ? `${pair.split('=', 1)[0]}=REDACTED` : pair;
    });
  return `${url.slice(0, mark)}?${redacted.join('&')}`;
}

/** Fastify's request serializer, with the URL redacted. */
export function serializeRequest(request: FastifyRequest): Record<string, unknown> {
  return { method: request.method, url: redactUrl(request.url), host: request.host, remoteAddress: request.ip, remotePort: request.socket?.remotePort };
}

function decodeSafely(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return text;
  }
}

function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}
