// `cdp-nbd token create|list|revoke`: the API's tokens, changed in the data folder directly
// (appliance/api-tokens.ts), so they work whether the appliance runs or not, and need no token
// themselves: whoever may write the data folder is its administrator already. A running appliance
// sees each change at its next request.

import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { apiRoles, createToken, isApiRole, listTokens, revokeToken, tokenFilePath } from '../appliance/api-tokens.js';
import { formatMicros } from '../storage/index.js';
import { actionUsage } from './api-client.js';
import { serveDefaults } from './serve.js';

export const tokenUsage = `  cdp-nbd token create NAME --role read|operator|admin [--out FILE] [--data DIR]
  cdp-nbd token list [--data DIR]
  cdp-nbd token revoke NAME [--data DIR]`;

const usage = `cdp-nbd token: the HTTP API's tokens

Usage:
${tokenUsage}

Roles, each allowing what the ones before it allow:
  read      list volumes, snapshots, exports; timeline, retention, metrics, events
  operator  create and delete snapshots and exports (host scripts need no more)
  admin     volumes, retention policies, restore, verify, seed, jobs; exports wider than their volume

create prints the token once (or writes it to FILE, made readable by its owner only); the data
folder keeps only its SHA-256, in DIR/api-tokens.json. A running appliance takes new and
revoked tokens at once. --data DIR is the appliance's data folder (default ${serveDefaults.dataDirectory}).`;

export async function runToken(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  if (action !== 'create' && action !== 'list' && action !== 'revoke') return actionUsage('token', action, 'which action?', usage);
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      data: { type: 'string', default: serveDefaults.dataDirectory },
      role: { type: 'string' },
      out: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  if (!fs.existsSync(values.data)) throw new Error(`no data folder ${values.data} (--data DIR)`);
  const [name] = positionals;
  if (action === 'list') {
    const tokens = listTokens(values.data);
    const lines = ['name\trole\tcreated', ...tokens.map((token) => `${token.name}\t${token.role}\t${formatMicros(token.createdMicros)}`)];
    process.stdout.write(values.json ? `${JSON.stringify(tokens, null, 2)}\n` : `${lines.join('\n')}\n`);
    return 0;
  }
  if (name === undefined || positionals.length > 1) throw new Error(`token ${action} takes one NAME`);
  if (action === 'revoke') {
    const revoked = revokeToken(values.data, name);
    process.stdout.write(values.json ? `${JSON.stringify({ revoked: revoked.name, role: revoked.role })}\n` : `revoked token ${revoked.name} (${revoked.role})\n`);
    return 0;
  }
  const role = values.role;
  if (role === undefined || !isApiRole(role)) throw new Error(`--role is one of ${apiRoles.join(', ')}`);
  // The file first (made new, 0600), so a token is never made whose secret has nowhere to go.
  const outDescriptor = values.out === undefined ? null : openNewPrivateFile(values.out);
  let created: ReturnType<typeof createToken>;
  try {
    created = createToken(values.data, { name, role });
  } catch (error) {
    if (outDescriptor !== null) {
      fs.closeSync(outDescriptor);
      fs.rmSync(values.out!);
    }
    throw error;
  }
  if (outDescriptor !== null) {
    fs.writeFileSync(outDescriptor, `${created.secret}\n`);
    fs.fsyncSync(outDescriptor);
    fs.closeSync(outDescriptor);
    process.stderr.write(`created ${role} token ${name}; it is in ${values.out} (readable by you only); ${tokenFilePath(values.data)} keeps its hash\n`);
  } else if (values.json) {
    process.stdout.write(`${JSON.stringify({ name, role, token: created.secret })}\n`);
  } else {
    process.stderr.write(`created ${role} token ${name}; it is shown once, here (give it with --token-file FILE or CDP_NBD_TOKEN):\n`);
    process.stdout.write(`${created.secret}\n`);
  }
  return 0;
}

function openNewPrivateFile(file: string): number {
  try {
    return fs.openSync(file, 'wx', 0o600);
  } catch (error) {
    throw new Error(`--out ${file}: ${(error as NodeJS.ErrnoException).code === 'EEXIST' ? 'it exists already' : error instanceof Error ? error.message : String(error)}`);
  }
}
