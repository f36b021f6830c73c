#!/usr/bin/env node
// The cdp-nbd command. The implementation is compiled TypeScript in dist/; `npm run build` makes it.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cliUrl = new URL('../dist/tools/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cliUrl))) {
  process.stderr.write('cdp-nbd: not built yet; run `npm run build` in the repository first\n');
  process.exit(1);
}
await import(cliUrl.href);
