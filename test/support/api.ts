// Calls of the appliance's REST API from tests, with the token the appliance wrote.

import fs from 'node:fs';
import type { Appliance } from './appliance.js';

export interface ApiResponse {
  status: number;
  json: Record<string, unknown>;
}

export async function apiRequest(appliance: Appliance, method: string, route: string, body?: unknown): Promise<ApiResponse> {
  const token = fs.readFileSync(`${appliance.dataDirectory}/api-token`, 'utf8').trim();
  const response = await fetch(`${appliance.httpBase}${route}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}
