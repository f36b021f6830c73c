// The HTTP API's tokens: each has a name and a role (read, operator, admin), and is kept in
// data/api-tokens.json only as the SHA-256 of its secret, in a file only its owner can read
// (format: docs/formats/api-tokens.md). `cdp-nbd token create|list|revoke` change the file
// directly, under a lock, while the appliance runs; the appliance sees each change at the next
// request (TokenStore.authenticate compares the file's identity first). A plaintext token file of
// an earlier version (data/api-token) becomes the admin token "admin" and is removed.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Roles, weakest first: each may do everything the ones before it may. */
export const apiRoles = ['read', 'operator', 'admin'] as const;
export type ApiRole = (typeof apiRoles)[number];

export const tokenFileName = 'api-tokens.json';
/** The plaintext token file of versions before roles; migrated at start-up. */
export const legacyTokenFileName = 'api-token';

export const tokenLimits = {
  tokenCountMax: 256,
  secretBytes: 32,
  /** A token file larger than this is refused rather than parsed. */
  fileBytesMax: 256 * 1024,
  /** A writer waits this long for another's lock, and takes a lock this old as abandoned. */
  lockWaitMs: 5000,
  lockStaleMs: 30_000,
} as const;

const tokenFileVersion = 1;
const tokenNamePattern = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const sha256HexPattern = /^[0-9a-f]{64}$/;

/** One token as the file keeps it. */
export interface StoredToken {
  name: string;
  role: ApiRole;
  /** SHA-256 of the secret, hex. */
  sha256: string;
  createdMicros: number;
}

/** Who a request comes from, once its token matched. */
export interface ApiCaller {
  name: string;
  role: ApiRole;
  /** The token's hash: a ticket remembers it, so a revoked token's tickets stop working too. */
  sha256: string;
}

export class TokenError extends Error {
  readonly code: 'EINVAL' | 'EEXIST' | 'ENOENT';
  constructor(code: 'EINVAL' | 'EEXIST' | 'ENOENT', message: string) {
    super(message);
    this.name = 'TokenError';
    this.code = code;
  }
}

export function isApiRole(text: string): text is ApiRole {
  return (apiRoles as readonly string[]).includes(text);
}

/** Whether a token of role `held` may call a route that needs `needed`. */
export function roleAllows(held: ApiRole, needed: ApiRole): boolean {
  return apiRoles.indexOf(held) >= apiRoles.indexOf(needed);
}

export function tokenNameProblem(name: string): string | null {
  return tokenNamePattern.test(name) ? null : 'a token name has 1 to 64 characters a-z, 0-9, ".", "_" and "-", starting with a letter or digit';
}

export function tokenFilePath(dataDirectory: string): string {
  return path.join(dataDirectory, tokenFileName);
}

export function hashToken(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Make a token; the secret is returned once and never stored. */
export function createToken(dataDirectory: string, request: { name: string; role: ApiRole }): { secret: string; token: StoredToken } {
  const problem = tokenNameProblem(request.name);
  if (problem !== null) throw new TokenError('EINVAL', problem);
  if (!isApiRole(request.role)) throw new TokenError('EINVAL', `a role is one of ${apiRoles.join(', ')}`);
  return changeTokenFile(dataDirectory, (tokens) => {
    if (tokens.some((token) => token.name === request.name)) throw new TokenError('EEXIST', `a token named ${request.name} already exists (revoke it first)`);
    if (tokens.length >= tokenLimits.tokenCountMax) throw new TokenError('EINVAL', `at most ${tokenLimits.tokenCountMax} tokens`);
    const secret = randomBytes(tokenLimits.secretBytes).toString('base64url');
    const token: StoredToken = { name: request.name, role: request.role, sha256: hashToken(secret), createdMicros: Date.now() * 1000 };
    return { tokens: [...tokens, token], result: { secret, token } };
  });
}

/** Remove a token: from the next request on, it is refused. */
export function revokeToken(dataDirectory: string, name: string): StoredToken {
  return changeTokenFile(dataDirectory, (tokens) => {
    const token = tokens.find((candidate) => candidate.name === name);
    if (token === undefined) throw new TokenError('ENOENT', `no token named ${name}`);
    return { tokens: tokens.filter((candidate) => candidate !== token), result: token };
  });
}

/** The tokens, without their hashes. */
export function listTokens(dataDirectory: string): Array<Omit<StoredToken, 'sha256'>> {
  return (readTokenFile(tokenFilePath(dataDirectory)) ?? []).map(({ name, role, createdMicros }) => ({ name, role, createdMicros }));
}

/**
 * At start-up: a plaintext data/api-token of an earlier version becomes an admin token (named
 * "admin", or admin-2, ... when taken) unless the file already has it, and the plaintext file is
 * removed once the token file is durable. Returns the name it was given, or null with nothing to do.
 */
export function migrateLegacyToken(dataDirectory: string): string | null {
  const legacyPath = path.join(dataDirectory, legacyTokenFileName);
  let secret: string;
  try {
    secret = fs.readFileSync(legacyPath, 'utf8').trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  const name = secret === '' ? null : changeTokenFile(dataDirectory, (tokens) => addLegacyToken(tokens, secret));
  fs.rmSync(legacyPath);
  syncDirectory(dataDirectory);
  return name;
}

function addLegacyToken(tokens: StoredToken[], secret: string): { tokens: StoredToken[]; result: string } {
  const sha256 = hashToken(secret);
  const existing = tokens.find((token) => token.sha256 === sha256);
  if (existing !== undefined) return { tokens, result: existing.name };
  let name = 'admin';
  for (let suffix = 2; tokens.some((token) => token.name === name); suffix += 1) name = `admin-${suffix}`;
  return { tokens: [...tokens, { name, role: 'admin', sha256, createdMicros: Date.now() * 1000 }], result: name };
}

/**
 * The tokens as the running appliance checks them. The file is re-read when its identity (inode,
 * size, change time) differs from what was read last: writers replace it by rename, so every
 * change is seen by the next request, and a request costs one stat. A file that fails to parse
 * keeps the tokens read before it (reported once through onProblem).
 */
export class TokenStore {
  private readonly filePath: string;
  private readonly onProblem: (problem: string) => void;
  private identity = '';
  private tokens: readonly StoredToken[] = [];
  private lastProblem: string | null = null;

  constructor(dataDirectory: string, onProblem: (problem: string) => void = () => undefined) {
    this.filePath = tokenFilePath(dataDirectory);
    this.onProblem = onProblem;
    this.refresh();
  }

  get path(): string {
    return this.filePath;
  }

  count(): number {
    this.refresh();
    return this.tokens.length;
  }

  /** The caller a secret belongs to, or null. Every stored hash is compared, in constant time. */
  authenticate(secret: string): ApiCaller | null {
    if (secret === '') return null;
    return this.callerOf(hashToken(secret));
  }

  /** The caller whose token has this hash, if it is still there (for tickets). */
  callerOf(sha256: string): ApiCaller | null {
    this.refresh();
    const given = Buffer.from(sha256, 'hex');
    if (given.length !== 32) throw new TypeError('a token hash is 32 bytes of hex');
    let found: StoredToken | null = null;
    for (const token of this.tokens) {
      if (timingSafeEqual(Buffer.from(token.sha256, 'hex'), given) && found === null) found = token;
    }
    return found === null ? null : { name: found.name, role: found.role, sha256: found.sha256 };
  }

  private refresh(): void {
    let identity: string;
    try {
      const stat = fs.statSync(this.filePath, { bigint: true });
      identity = `${stat.ino}:${stat.size}:${stat.ctimeNs}:${stat.mtimeNs}`;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      identity = 'absent';
    }
    if (identity === this.identity) return;
    try {
      this.tokens = readTokenFile(this.filePath) ?? [];
      this.identity = identity;
      this.lastProblem = null;
    } catch (error) {
      const problem = `${this.filePath}: ${error instanceof Error ? error.message : String(error)}; the tokens read before stay in force`;
      if (problem !== this.lastProblem) this.onProblem(problem);
      this.lastProblem = problem;
    }
  }
}

/** The file's tokens, or null when there is no file; throws on a damaged file. */
function readTokenFile(filePath: string): StoredToken[] | null {
  let text: string;
  try {
    const stat = fs.statSync(filePath);
    if (stat.size > tokenLimits.fileBytesMax) throw new Error(`larger than ${tokenLimits.fileBytesMax} bytes`);
    text = fs.readFileSync(filePath, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  const parsed = JSON.parse(text) as { formatVersion?: unknown; tokens?: unknown };
  if (parsed.formatVersion !== tokenFileVersion || !Array.isArray(parsed.tokens)) throw new Error(`not a token file of format version ${tokenFileVersion}`);
  return parsed.tokens.map((entry: unknown, index) => {
    const token = entry as Partial<StoredToken>;
    const valid =
      typeof token.name === 'string' &&
      tokenNameProblem(token.name) === null &&
      typeof token.role === 'string' &&
      isApiRole(token.role) &&
      typeof token.sha256 === 'string' &&
      sha256HexPattern.test(token.sha256) &&
      Number.isSafeInteger(token.createdMicros);
    if (!valid) throw new Error(`token ${index} is malformed (name, role, sha256, createdMicros)`);
    return { name: token.name!, role: token.role!, sha256: token.sha256!, createdMicros: token.createdMicros! };
  });
}

/** Read, change and write the token file under the writers' lock. */
function changeTokenFile<T>(dataDirectory: string, change: (tokens: StoredToken[]) => { tokens: StoredToken[]; result: T }): T {
  const filePath = tokenFilePath(dataDirectory);
  const release = takeLock(`${filePath}.lock`);
  try {
    const before = readTokenFile(filePath) ?? [];
    const { tokens, result } = change(before);
    if (tokens !== before) writeTokenFile(filePath, tokens);
    return result;
  } finally {
    release();
  }
}

/**
 * Replace the file so that a crash leaves the old or the new one: a temporary file of a unique
 * name, made 0600 (never readable by others, not even for a moment), synced, renamed over the
 * file, and the folder synced.
 */
function writeTokenFile(filePath: string, tokens: readonly StoredToken[]): void {
  const content = `${JSON.stringify({ formatVersion: tokenFileVersion, tokens }, null, 2)}\n`;
  const temporaryPath = `${filePath}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const descriptor = fs.openSync(temporaryPath, 'wx', 0o600);
  try {
    fs.writeFileSync(descriptor, content);
    fs.fsyncSync(descriptor);
  } catch (error) {
    fs.closeSync(descriptor);
    fs.rmSync(temporaryPath, { force: true });
    throw error;
  }
  fs.closeSync(descriptor);
  try {
    fs.renameSync(temporaryPath, filePath);
  } catch (error) {
    fs.rmSync(temporaryPath, { force: true });
    throw error;
  }
  syncDirectory(path.dirname(filePath));
}

function syncDirectory(directory: string): void {
  const descriptor = fs.openSync(directory, 'r');
  try {
    fs.fsyncSync(descriptor);
  } finally {
    fs.closeSync(descriptor);
  }
}

/**
 * A lock file made with O_EXCL, so two `token create` never lose each other's change. One older
 * than lockStaleMs was left by a writer that died (a write takes milliseconds) and is taken over.
 */
function takeLock(lockPath: string): () => void {
  const deadlineMs = Date.now() + tokenLimits.lockWaitMs;
  for (;;) {
    try {
      fs.writeFileSync(lockPath, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return () => fs.rmSync(lockPath, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const ageMs = lockAgeMs(lockPath);
    if (ageMs !== null && ageMs > tokenLimits.lockStaleMs) {
      fs.rmSync(lockPath, { force: true });
      continue;
    }
    if (Date.now() > deadlineMs) throw new Error(`${lockPath} is held by another writer (remove it if no cdp-nbd token command is running)`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  }
}

function lockAgeMs(lockPath: string): number | null {
  try {
    return Date.now() - fs.statSync(lockPath).mtimeMs;
  } catch {
    return null;
  }
}
