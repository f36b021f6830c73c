// The bearer token of the HTTP API: made on first start into a file in the data folder that only
// its owner can read, and read back by the command line.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const apiTokenFileName = 'api-token';

/** Read the token, or make one. `created` tells the caller to show it once. */
export function loadOrCreateApiToken(dataDirectory: string): { token: string; created: boolean; path: string } {
  const tokenPath = path.join(dataDirectory, apiTokenFileName);
  try {
    return { token: fs.readFileSync(tokenPath, 'utf8').trim(), created: false, path: tokenPath };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const token = randomBytes(32).toString('base64url');
  fs.writeFileSync(tokenPath, `${token}\n`, { mode: 0o600, flag: 'wx' });
  return { token, created: true, path: tokenPath };
}

/** Compare in constant time. */
export function tokenMatches(expected: string, given: string): boolean {
  const expectedBytes = Buffer.from(expected);
  const givenBytes = Buffer.from(given);
  return expectedBytes.length === givenBytes.length && timingSafeEqual(expectedBytes, givenBytes);
}
