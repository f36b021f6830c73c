// Calls of the appliance's REST API from tests, over HTTP or HTTPS (checked against the
// appliance's CA), with the admin token made for it or another.

import http from 'node:http';
import https from 'node:https';
import type { Appliance } from './appliance.js';

export interface ApiResponse {
  status: number;
  json: Record<string, unknown>;
}

export interface ApiRequestOptions {
  /** The bearer token; the appliance's admin token when absent, none when null. */
  token?: string | null;
  headers?: Record<string, string>;
}

export async function apiRequest(appliance: Appliance, method: string, route: string, body?: unknown, options: ApiRequestOptions = {}): Promise<ApiResponse> {
  const token = options.token === undefined ? appliance.token : options.token;
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers = {
    ...(token === null ? {} : { authorization: `Bearer ${token}` }),
    ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(payload.length) }),
    ...options.headers,
  };
  const { status, text } = await send(new URL(route, appliance.httpBase), { method, headers }, payload, appliance.httpCa);
  return { status, json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

/** GET a route's body as text (for /metrics). */
export async function apiText(appliance: Appliance, route: string): Promise<string> {
  return (await send(new URL(route, appliance.httpBase), { method: 'GET', headers: { authorization: `Bearer ${appliance.token}` } }, undefined, appliance.httpCa)).text;
}

function send(url: URL, options: http.RequestOptions, payload: Buffer | undefined, ca: Buffer | undefined): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const onResponse = (response: http.IncomingMessage): void => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode!, text: Buffer.concat(chunks).toString('utf8') }));
      response.on('error', reject);
    };
    const request = url.protocol === 'https:' ? https.request(url, { ...options, ca }, onResponse) : http.request(url, options, onResponse);
    request.on('error', reject);
    request.end(payload);
  });
}
