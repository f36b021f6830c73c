// The local path rules and the open on their own, with real files: what happens when the file
// system changes between the check and the open (someone with write access to a file root
// racing a restore). Invariants checked: a last component swapped for a symbolic link is never
// followed (O_NOFOLLOW), nor is a link that appears where a new file was to be created (O_EXCL);
// a folder on the path swapped for a link is caught by reading /proc/self/fd back; a FIFO swapped
// in does not hang the open; a new file is 0600 whatever the umask; the rules themselves are
// checked at start-up (devices are block devices, roots are folders apart from the data folder).

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { EndpointError } from '../../transfer/endpoint-error.js';
import { LocalPathPolicy, openAllowedPath } from '../../transfer/local-paths.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { run } from '../support/tools.js';

/** A data folder, a file root beside it, and a folder outside the rules with a file in it. */
function layout(t: Parameters<typeof temporaryDirectory>[0]) {
  const directory = temporaryDirectory(t);
  const data = path.join(directory, 'data');
  const root = path.join(directory, 'root');
  const outside = path.join(directory, 'outside');
  for (const folder of [data, root, outside]) fs.mkdirSync(folder);
  const outsideFile = path.join(outside, 'file.img');
  fs.writeFileSync(outsideFile, 'outside');
  const policy = LocalPathPolicy.create({ deviceAllow: [], fileRoots: [root] }, data);
  return { directory, data, root, outside, outsideFile, policy };
}

async function refusalOf(promise: Promise<unknown>): Promise<EndpointError> {
  const error = await promise.then(
    () => null,
    (caught: unknown) => caught,
  );
  if (!(error instanceof EndpointError)) throw new Error(`expected an EndpointError, got ${String(error)}`);
  return error;
}

t.test('a file replaced by a symbolic link after the check is not followed (O_NOFOLLOW)', async (t) => {
  const { root, outsideFile, policy } = layout(t);
  const file = path.join(root, 'file.img');
  fs.writeFileSync(file, 'inside');
  const allowed = await policy.authorize(file, 'write');
  t.same(allowed, { kind: 'file', resolvedPath: file, exists: true });
  fs.rmSync(file);
  fs.symlinkSync(outsideFile, file);
  const refusal = await refusalOf(openAllowedPath(allowed, true));
  t.equal(refusal.refusal, 'not-allowed');
  t.match(refusal.message, /became a symbolic link after it was checked/, refusal.message);
  t.equal(fs.readFileSync(outsideFile, 'utf8'), 'outside');
});

t.test('a link that appears where a new file was to be created is not followed (O_CREAT with O_EXCL)', async (t) => {
  const { root, outside, policy } = layout(t);
  const file = path.join(root, 'new.img');
  const allowed = await policy.authorize(file, 'write');
  t.same(allowed, { kind: 'file', resolvedPath: file, exists: false });
  const through = path.join(outside, 'made-through-a-link.img');
  fs.symlinkSync(through, file);
  const refusal = await refusalOf(openAllowedPath(allowed, true));
  t.match(refusal.message, /appeared while it was being created/, refusal.message);
  t.notOk(fs.existsSync(through), 'nothing was created outside');
});

t.test('a folder on the path replaced by a link after the check is caught by reading /proc/self/fd back', async (t) => {
  const { root, outside, outsideFile, policy } = layout(t);
  const folder = path.join(root, 'folder');
  fs.mkdirSync(folder);
  fs.writeFileSync(path.join(folder, 'file.img'), 'inside');
  const allowed = await policy.authorize(path.join(folder, 'file.img'), 'write');
  fs.renameSync(folder, path.join(root, 'moved'));
  fs.symlinkSync(outside, folder);
  const refusal = await refusalOf(openAllowedPath(allowed, true));
  t.equal(refusal.refusal, 'not-allowed');
  t.match(refusal.message, new RegExp(`the file opened is ${outsideFile} \\(a folder on its path changed`), refusal.message);
});

t.test('a FIFO swapped in after the check does not hang the open', async (t) => {
  const { root, policy } = layout(t);
  const file = path.join(root, 'file.img');
  fs.writeFileSync(file, 'inside');
  const allowed = await policy.authorize(file, 'read');
  fs.rmSync(file);
  const made = await run('mkfifo', [file]);
  t.equal(made.code, 0, made.stderr);
  const timeout = new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 5000).unref());
  const outcome = await Promise.race([refusalOf(openAllowedPath(allowed, false)), timeout]);
  t.not(outcome, 'hung', 'the open returned');
  if (outcome !== 'hung') t.match(outcome.message, /changed type after it was checked/);
});

t.test('a new file is created 0600 even with umask 0', async (t) => {
  const { root, policy } = layout(t);
  const previous = process.umask(0);
  t.teardown(() => void process.umask(previous));
  const file = path.join(root, 'new.img');
  const handle = await openAllowedPath(await policy.authorize(file, 'write'), true);
  await handle.close();
  t.equal(fs.statSync(file).mode & 0o777, 0o600);
});

t.test('a read of a missing file under a root is a plain error; outside the roots it is refused, existing or not', async (t) => {
  const { root, outside, policy } = layout(t);
  const missing = await refusalOf(policy.authorize(path.join(root, 'missing.img'), 'read'));
  t.equal(missing.refusal, 'invalid');
  t.match(missing.message, /ENOENT/);
  fs.symlinkSync(path.join(outside, 'nothing.img'), path.join(outside, 'dangling.img'));
  fs.symlinkSync(path.join(outside, 'file.img'), path.join(outside, 'link.img'));
  const outsideMessages = new Set<string>();
  for (const name of ['missing.img', 'file.img', 'dangling.img', 'link.img']) {
    const refusal = await refusalOf(policy.authorize(path.join(outside, name), 'write'));
    t.equal(refusal.refusal, 'not-allowed', name);
    outsideMessages.add(refusal.message.replace(name, 'NAME'));
  }
  t.equal(outsideMessages.size, 1, `the same answer whether a path outside exists, is a link (to what is not told) or a dangling one: ${[...outsideMessages].join(' | ')}`);
  t.equal((await refusalOf(policy.authorize(path.join(outside, 'no-folder/file.img'), 'read'))).refusal, 'not-allowed', 'a missing folder outside');
  t.equal((await refusalOf(policy.authorize(root, 'read'))).refusal, 'not-allowed', 'the root itself is not a file under it');
  t.equal((await refusalOf(policy.authorize(`${root}/`, 'write'))).refusal, 'not-allowed', 'nor with a slash');
});

t.test('the rules are checked at start-up', async (t) => {
  const { directory, data, root } = layout(t);
  const regularFile = path.join(directory, 'disk.img');
  fs.writeFileSync(regularFile, '');
  const cases: Array<[{ deviceAllow?: string[]; fileRoots?: string[] }, RegExp]> = [
    [{ deviceAllow: [regularFile] }, /--device-allow .* is not a block device/],
    [{ deviceAllow: ['dev/sdb'] }, /--device-allow dev\/sdb: give an absolute path/],
    [{ fileRoots: [regularFile] }, /--file-root .* is not a folder/],
    [{ fileRoots: [directory] }, /contains the data folder/],
    [{ fileRoots: [path.join(data, '.')] }, /contains the data folder/],
    [{ fileRoots: ['/sys/kernel'] }, /is in \/sys/],
    [{ fileRoots: ['/dev'] }, /is in \/dev/],
  ];
  for (const [rules, message] of cases) {
    t.throws(() => LocalPathPolicy.create({ deviceAllow: rules.deviceAllow ?? [], fileRoots: rules.fileRoots ?? [] }, data), message, JSON.stringify(rules));
  }
  const missing = LocalPathPolicy.create({ deviceAllow: ['/dev/disk/by-id/not-plugged-in-yet'], fileRoots: [root] }, data);
  t.same(missing.missingDevices(), ['/dev/disk/by-id/not-plugged-in-yet'], 'a device that is not there yet is accepted, and named for a warning');
});
