// The command line's client of the appliance's HTTP API: the token comes from --token, or from
// the data folder the appliance made it in.

import fs from 'node:fs';
import path from 'node:path';
import { apiTokenFileName } from '../appliance/api-token.js';
import { serveDefaults } from './serve.js';

/** The options of every command that talks to the appliance (parseArgs). */
export const apiOptions = {
  api: { type: 'string', default: 'http://127.0.0.1:8080' },
  token: { type: 'string' },
  data: { type: 'string', default: serveDefaults.dataDirectory },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h' },
} as const;

/**
 * `cdp-nbd COMMAND` without a known action: the usage on stdout when it was asked for (exit 0),
 * else on stderr after the problem (exit 2).
 */
export function actionUsage(command: string, action: string | undefined, whenMissing: string, usage: string): number {
  const asked = action === '--help' || action === '-h' || action === 'help';
  const problem = action === undefined ? whenMissing : `unknown action "${action}"`;
  (asked ? process.stdout : process.stderr).write(`${asked ? '' : `cdp-nbd ${command}: ${problem}\n\n`}${usage}\n`);
  return asked ? 0 : 2;
}

export function apiClientOf(values: { api: string; token?: string | undefined; data: string }): ApiClient {
  return new ApiClient({ apiBase: values.api, token: values.token, dataDirectory: values.data });
}

export interface ApiClientOptions {
  apiBase: string;
  token?: string | undefined;
  dataDirectory: string;
}

export class ApiClient {
  private readonly apiBase: string;
  private readonly token: string;

  constructor(options: ApiClientOptions) {
    this.apiBase = options.apiBase.replace(/\/$/, '');
    this.token = options.token ?? readToken(options.dataDirectory);
  }

  async request<T>(method: string, route: string, body?: unknown): Promise<T> {
    let response: Response;
    try {
      response = await fetch(`${this.apiBase}${route}`, {
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
    } catch (error) {
      throw new Error(`cannot reach the appliance at ${this.apiBase} (is it running? --api sets the address): ${error instanceof Error ? error.message : String(error)}`);
    }
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    const parsed = text === '' ? undefined : (JSON.parse(text) as { error?: { code: string; message: string } });
    if (!response.ok) throw new Error(parsed?.error ? `${parsed.error.message} (${parsed.error.code})` : `HTTP ${response.status}`);
    return parsed as T;
  }
}

function readToken(dataDirectory: string): string {
  const tokenPath = path.join(dataDirectory, apiTokenFileName);
  try {
    return fs.readFileSync(tokenPath, 'utf8').trim();
  } catch {
    throw new Error(`no API token at ${tokenPath}: give --token, or --data with the appliance's data folder`);
  }
}
