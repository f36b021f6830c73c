// The HTTP API in process for app.inject() tests: a real appliance (real volumes, real LevelDB) in
// a temporary data folder, its token file holding one token of each role, and calls with them.

import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { buildApp } from '../../api/app.js';
import { apiRoles, createToken, TokenStore, type ApiRole } from '../../appliance/api-tokens.js';
import { Appliance, type ApplianceOptions } from '../../appliance/appliance.js';
import { silentLogger, type Logger } from '../../server/index.js';
import { MiB } from '../../storage/index.js';
import { temporaryDirectory } from './temporary-directory.js';

/** The secret of each app's token of each role (made by startApi). */
const secretsOfApp = new WeakMap<FastifyInstance, Record<ApiRole, string>>();

/** extra: what jobs may reach (ApplianceOptions.localPaths, remoteTls); by default nothing local. */
export async function startApi(
  t: { teardown(callback: () => Promise<void>): void },
  log: Logger = silentLogger,
  extra: Pick<ApplianceOptions, 'localPaths' | 'remoteTls'> = {},
): Promise<{ app: FastifyInstance; appliance: Appliance; dataDirectory: string; secrets: Record<ApiRole, string> }> {
  const dataDirectory = temporaryDirectory(t as never);
  const secrets = Object.fromEntries(apiRoles.map((role) => [role, createToken(dataDirectory, { name: `test-${role}`, role }).secret])) as Record<ApiRole, string>;
  const appliance = await Appliance.start({
    dataDirectory,
    defaultVolumeName: 'vol0',
    defaultVolumeSizeBytes: 16 * MiB,
    log,
    nbdUriBase: 'nbd://127.0.0.1:10809',
    ...extra,
  });
  const app = await buildApp({ context: { appliance, startedAtMs: Date.now(), version: 'test', tokens: new TokenStore(dataDirectory) } });
  secretsOfApp.set(app, secrets);
  t.teardown(async () => {
    await app.close();
    await appliance.stop();
  });
  return { app, appliance, dataDirectory, secrets };
}

export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** A call with the admin token (or none); callAs chooses the role. */
export function call(app: FastifyInstance, method: Method, url: string, body?: unknown, withToken = true): Promise<LightMyRequestResponse> {
  return callAs(app, withToken ? 'admin' : null, method, url, body);
}

export function callAs(app: FastifyInstance, role: ApiRole | null, method: Method, url: string, body?: unknown): Promise<LightMyRequestResponse> {
  const secret = role === null ? null : secretsOfApp.get(app)![role];
  return app.inject({
    method,
    url,
    headers: secret === null ? {} : { authorization: `Bearer ${secret}` },
    ...(body === undefined ? {} : { payload: body as Record<string, unknown> }),
  });
}

export function errorCode(response: LightMyRequestResponse): string | undefined {
  return (response.json() as { error?: { code: string } }).error?.code;
}
