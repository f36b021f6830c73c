// The command line's client of the appliance's HTTP API, over HTTP on loopback or HTTPS. The
// token comes from --token-file FILE, CDP_NBD_TOKEN or CDP_NBD_TOKEN_FILE, or --token (which other
// users of the machine can see in the process list); the data folder keeps only hashes of tokens.
// An HTTPS appliance with a certificate of its own CA is checked against --ca FILE or CDP_NBD_CA.

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { isLoopbackHost } from './serve.js';

/** The options of every command that talks to the appliance (parseArgs). */
export const apiOptions = {
  api: { type: 'string', default: process.env.CDP_NBD_API ?? 'http://127.0.0.1:8080' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  ca: { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h' },
} as const;

/** How the commands that talk to the appliance find it and authenticate (for their --help). */
export const apiOptionsUsage = `--api URL (default http://127.0.0.1:8080, or CDP_NBD_API; https://... for an appliance serving
HTTPS, with --ca FILE or CDP_NBD_CA when its certificate is from your own CA), and a token:
--token-file FILE, CDP_NBD_TOKEN, CDP_NBD_TOKEN_FILE or --token TOKEN ("cdp-nbd token create"
makes one)`;

/** A response larger than this is refused (the largest, a long job list, is far smaller). */
const responseBytesMax = 64 * 1024 * 1024;

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

export function apiClientOf(values: { api: string; token?: string | undefined; 'token-file'?: string | undefined; ca?: string | undefined }): ApiClient {
  return new ApiClient({ apiBase: values.api, token: values.token, tokenFile: values['token-file'], caFile: values.ca });
}

export interface ApiClientOptions {
  apiBase: string;
  token?: string | undefined;
  tokenFile?: string | undefined;
  /** PEM file of the CA that signed the appliance's HTTPS certificate; the system's CAs when absent. */
  caFile?: string | undefined;
  environment?: NodeJS.ProcessEnv;
}

export class ApiClient {
  private readonly apiBase: URL;
  private readonly token: string;
  private readonly ca: Buffer | undefined;

  constructor(options: ApiClientOptions) {
    const environment = options.environment ?? process.env;
    this.apiBase = apiBaseOf(options.apiBase);
    this.token = tokenOf(options, environment);
    const caFile = options.caFile ?? environment.CDP_NBD_CA;
    this.ca = caFile === undefined || caFile === '' ? undefined : readFile(caFile, 'the CA certificate (--ca, CDP_NBD_CA)');
    if (this.apiBase.protocol === 'http:' && !isLoopbackHost(this.apiBase.hostname.replace(/^\[|\]$/g, ''))) {
      process.stderr.write(`cdp-nbd: warning: the API token goes to ${this.apiBase.host} in plaintext (http://); use https://\n`);
    }
  }

  async request<T>(method: string, route: string, body?: unknown): Promise<T> {
    const url = new URL(`${this.apiBase.pathname.replace(/\/$/, '')}${route}`, this.apiBase);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    let response: { status: number; text: string };
    try {
      response = await send(url, method, { authorization: `Bearer ${this.token}`, ...(payload === undefined ? {} : { 'content-type': 'application/json' }) }, payload, this.ca);
    } catch (error) {
      throw new Error(`cannot reach the appliance at ${this.apiBase.origin} (is it running? --api sets the address; --ca its CA): ${error instanceof Error ? error.message : String(error)}`);
    }
    if (response.status === 204) return undefined as T;
    let parsed: { error?: { code: string; message: string } } | undefined;
    try {
      parsed = response.text === '' ? undefined : (JSON.parse(response.text) as { error?: { code: string; message: string } });
    } catch {
      throw new Error(`the appliance answered HTTP ${response.status} with something that is not JSON`);
    }
    if (response.status >= 400) throw new Error(parsed?.error ? `${parsed.error.message} (${parsed.error.code})` : `HTTP ${response.status}`);
    return parsed as T;
  }
}

function apiBaseOf(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`--api ${text} is not a URL (http://127.0.0.1:8080, https://appliance.example:8080)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`--api ${text}: http:// or https://`);
  return url;
}

function tokenOf(options: ApiClientOptions, environment: NodeJS.ProcessEnv): string {
  const file = options.tokenFile ?? (options.token === undefined && environment.CDP_NBD_TOKEN === undefined ? environment.CDP_NBD_TOKEN_FILE : undefined);
  const token = options.token ?? (file === undefined ? environment.CDP_NBD_TOKEN : readFile(file, 'the token file (--token-file, CDP_NBD_TOKEN_FILE)').toString('utf8'));
  if (token === undefined || token.trim() === '') {
    throw new Error(
      'no API token: give --token-file FILE, or set CDP_NBD_TOKEN or CDP_NBD_TOKEN_FILE (the data folder keeps only hashes of tokens: ' +
        '"cdp-nbd token create NAME --role ROLE --data DIR" makes one and prints it once)',
    );
  }
  return token.trim();
}

function readFile(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new Error(`cannot read ${what} ${file}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function send(url: URL, method: string, headers: Record<string, string>, payload: Buffer | undefined, ca: Buffer | undefined): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const options = { method, headers: { ...headers, ...(payload === undefined ? {} : { 'content-length': String(payload.length) }) } };
    const onResponse = (response: http.IncomingMessage): void => {
      const chunks: Buffer[] = [];
      let receivedBytes = 0;
      response.on('data', (chunk: Buffer) => {
        receivedBytes += chunk.length;
        if (receivedBytes > responseBytesMax) response.destroy(new Error(`the response is larger than ${responseBytesMax} bytes`));
        else chunks.push(chunk);
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      response.on('error', reject);
    };
    const request = url.protocol === 'https:' ? https.request(url, { ...options, ...(ca === undefined ? {} : { ca }) }, onResponse) : http.request(url, options, onResponse);
    request.on('error', reject);
    request.end(payload);
  });
}
