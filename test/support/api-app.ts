// The HTTP API in process for app.inject() tests: a real appliance (real volumes, real LevelDB) in
// a temporary data folder, and calls with the token.

import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { buildApp } from '../../api/app.js';
import { Appliance, type ApplianceOptions } from '../../appliance/appliance.js';
import { silentLogger, type Logger } from '../../server/index.js';
import { MiB } from '../../storage/index.js';
import { temporaryDirectory } from './temporary-directory.js';

export const token = 'test-token-0123456789';

/** extra: what jobs may reach (ApplianceOptions.localPaths, remoteTls); by default nothing local. */
export async function startApi(
  t: { teardown(callback: () => Promise<void>): void },
  log: Logger = silentLogger,
  extra: Pick<ApplianceOptions, 'localPaths' | 'remoteTls'> = {},
): Promise<{ app: FastifyInstance; appliance: Appliance; dataDirectory: string }> {
  const dataDirectory = temporaryDirectory(t as never);
  const appliance = await Appliance.start({
    dataDirectory,
    defaultVolumeName: 'vol0',
    defaultVolumeSizeBytes: 16 * MiB,
    log,
    nbdUriBase: 'nbd://127.0.0.1:10809',
    ...extra,
  });
  const app = await buildApp({ context: { appliance, startedAtMs: Date.now(), version: 'test', token } });
  t.teardown(async () => {
    await app.close();
    await appliance.stop();
  });
  return { app, appliance, dataDirectory };
}

export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export function call(app: FastifyInstance, method: Method, url: string, body?: unknown, withToken = true): Promise<LightMyRequestResponse> {
  return app.inject({
    method,
    url,
    headers: withToken ? { authorization: `Bearer ${token}` } : {},
    ...(body === undefined ? {} : { payload: body as Record<string, unknown> }),
  });
}

export function errorCode(response: LightMyRequestResponse): string | undefined {
  return (response.json() as { error?: { code: string } }).error?.code;
}
