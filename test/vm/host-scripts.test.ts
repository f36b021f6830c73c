// The host scripts of tools/host/ on this machine, without a kernel NBD client (that is in the
// VM tests beside this file): each parses as POSIX sh, answers --help with its usage and every
// option its argument parser accepts, and refuses an unknown argument before touching anything.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../support/tools.js';

const hostDirectory = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../tools/host');
const scripts = fs.readdirSync(hostDirectory).filter((name) => name.endsWith('.sh') && name !== 'common.sh');

t.test('every host script parses as POSIX sh and has a header comment', async (t) => {
  for (const name of [...scripts, 'common.sh']) {
    const file = path.join(hostDirectory, name);
    const syntax = await run('sh', ['-n', file]);
    t.equal(syntax.code, 0, `${name} parses (${syntax.stderr.trim()})`);
    const text = fs.readFileSync(file, 'utf8');
    t.match(text.split('\n').slice(0, 3).join('\n'), /^(#!\/bin\/sh\n)?# \S/, `${name} opens with what it is for`);
    t.notMatch(text, /\[\[|\bfunction\s+\w+|<<<|\$\{\w+\/\//, `${name} uses no bash-only syntax`);
  }
});

t.test('--help prints the usage and documents every option the parser takes', async (t) => {
  for (const name of scripts) {
    const file = path.join(hostDirectory, name);
    const help = await run('sh', [file, '--help']);
    t.equal(help.code, 0, `${name} --help exits 0`);
    t.ok(help.stdout.length > 80, `${name} --help says something`);
    const parsed = [...fs.readFileSync(file, 'utf8').matchAll(/^\s+(--[a-z-]+)\)/gm)].map((match) => match[1]!);
    for (const option of parsed) t.ok(help.stdout.includes(option), `${name} --help documents ${option}`);
  }
});

t.test('an unknown argument is refused with a message, before anything is attached', async (t) => {
  for (const name of scripts.filter((script) => script !== 'vagrant-provision.sh')) {
    const refused = await run('sh', [path.join(hostDirectory, name), '--no-such-option']);
    t.equal(refused.code, 1, `${name} exits 1`);
    t.match(refused.stderr, /unknown argument --no-such-option/, `${name} names the argument`);
  }
});
