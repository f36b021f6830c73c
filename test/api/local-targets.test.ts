// Which local devices and files a restore, verification or seed may use, over the real HTTP API of
// the real appliance: only a --device-allow device or a regular file under a --file-root.
// Invariants checked: every other path is refused with 403 target-not-allowed, however it is
// spelled (symbolic links to files and folders, a dangling link, "..", /proc/self/cwd and
// /proc/self/root into the data folder, a hard link, a device node under a file root) and
// whether or not it exists, and nothing outside the rules is created or changed; a file the
// restore creates is mode 0600; an allowed device that is mounted is refused with 409
// target-in-use and left as it was; serve refuses at start-up a file root that overlaps the data
// folder or lies in /proc.

import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { apiRequest, type ApiResponse } from '../support/api.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const MiB = 1024 * 1024;
const volumeSizeBytes = 16 * MiB;

function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** A file of random bytes the size of the volume, so a restore onto it would be accepted if allowed. */
function writeRandomFile(file: string): string {
  fs.writeFileSync(file, crypto.randomBytes(volumeSizeBytes));
  return sha256(file);
}

function errorOf(response: ApiResponse): { code?: string; message?: string } {
  return (response.json.error ?? {}) as { code?: string; message?: string };
}

function restore(appliance: Appliance, target: string, wait = false): Promise<ApiResponse> {
  return apiRequest(appliance, 'POST', `/api/v1/restores${wait ? '?wait=true' : ''}`, { volume: 'vol0', snapshot: 'base', target });
}

/** Some block device node of this machine (a loop device in CI), to name without allowing it. */
function anyBlockDevice(): { path: string; rdev: number } | null {
  for (const name of fs.readdirSync('/dev')) {
    const stats = fs.statSync(path.join('/dev', name), { throwIfNoEntry: false });
    if (stats?.isBlockDevice()) return { path: path.join('/dev', name), rdev: stats.rdev };
  }
  return null;
}

t.test('a path outside the rules is refused with 403 target-not-allowed however it is spelled, and nothing outside is touched', async (t) => {
  const directory = temporaryDirectory(t);
  const files = path.join(directory, 'files');
  const outside = path.join(directory, 'outside');
  fs.mkdirSync(files);
  fs.mkdirSync(outside);
  const secret = path.join(outside, 'secret.img');
  const secretHash = writeRandomFile(secret);
  const appliance = await startAppliance(t, { dataDirectory: path.join(directory, 'data'), volumeSize: '16M', fileRoots: [files], cwd: directory });
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'base' })).status, 201);
  const primaryImage = path.join(appliance.dataDirectory, 'volumes/vol0/primary.img');

  fs.symlinkSync(secret, path.join(files, 'escape.img'));
  fs.symlinkSync(outside, path.join(files, 'folder'));
  fs.symlinkSync(path.join(outside, 'made-through-a-link.img'), path.join(files, 'dangling.img'));
  fs.symlinkSync(primaryImage, path.join(files, 'primary-link.img'));
  fs.linkSync(secret, path.join(files, 'hard-link.img'));

  const refusedTargets: Array<[string, string]> = [
    [secret, 'an existing file outside every root'],
    [path.join(outside, 'new.img'), 'a new file outside every root'],
    [path.join(files, 'escape.img'), 'a symbolic link in the root to a file outside'],
    [path.join(files, 'folder/secret.img'), 'a file through a linked folder'],
    [path.join(files, 'folder/new.img'), 'a new file through a linked folder'],
    [path.join(files, 'dangling.img'), 'a dangling link (the restore would create its target)'],
    [path.join(files, '../outside/secret.img'), '".." out of the root'],
    [path.join(files, 'primary-link.img'), 'a link to the live image'],
    [path.join(files, 'hard-link.img'), 'a hard link to a file outside'],
    ['/proc/self/cwd/data/volumes/vol0/primary.img', 'the live image through /proc/self/cwd'],
    [`/proc/self/root${primaryImage}`, 'the live image through /proc/self/root'],
    [primaryImage, 'the live image'],
    ['/etc/passwd', 'a system file'],
  ];
  const device = anyBlockDevice();
  if (device !== null) {
    refusedTargets.push([device.path, 'a block device not in --device-allow']);
    const node = path.join(files, 'device-node');
    const made = await run('mknod', [node, 'b', String((device.rdev >> 8) & 0xfff), String((device.rdev & 0xff) | ((device.rdev >> 12) & 0xfff00))]);
    if (made.code === 0) refusedTargets.push([node, 'a block device node under a file root']);
    else t.comment(`mknod needs root; the device node case is not run: ${made.stderr.trim()}`);
  }
  for (const [target, what] of refusedTargets) {
    const response = await restore(appliance, target);
    t.equal(response.status, 403, `${what}: ${JSON.stringify(response.json)}`);
    t.equal(errorOf(response).code, 'target-not-allowed', what);
    t.match(errorOf(response).message, /^target: .* is not allowed: /, `${what}: the message says why`);
  }
  for (const [source, what] of [
    [secret, 'an existing file outside'],
    [path.join(files, 'escape.img'), 'a link in the root to a file outside'],
    [path.join(files, 'primary-link.img'), 'a link to the live image'],
  ] as const) {
    const seeded = await apiRequest(appliance, 'POST', '/api/v1/seeds', { volume: 'vol0', source });
    t.equal(errorOf(seeded).code, 'target-not-allowed', `seed from ${what}: ${JSON.stringify(seeded.json)}`);
    const verified = await apiRequest(appliance, 'POST', '/api/v1/verify', { volume: 'vol0', against: source });
    t.equal(errorOf(verified).code, 'target-not-allowed', `verify against ${what}: ${JSON.stringify(verified.json)}`);
  }

  t.equal(sha256(secret), secretHash, 'the file outside is unchanged');
  t.same(fs.readdirSync(outside).sort(), ['secret.img'], 'nothing was created outside the root');
  t.same((await apiRequest(appliance, 'GET', '/api/v1/jobs')).json.jobs, [], 'no job started');
  const relative = await restore(appliance, 'relative.img');
  t.equal(errorOf(relative).code, 'invalid-request', 'a relative path is malformed, not a question of rules');

  // Inside the root: a new file is made, mode 0600, and can be verified against.
  const restored = path.join(files, 'restored.img');
  const done = await restore(appliance, restored, true);
  t.equal(done.status, 200, JSON.stringify(done.json));
  t.equal(done.json.state, 'done');
  t.equal(fs.statSync(restored).mode & 0o777, 0o600, 'the restored file is readable by the appliance\'s user only');
  const verified = await apiRequest(appliance, 'POST', '/api/v1/verify?wait=true', { volume: 'vol0', snapshot: 'base', against: restored });
  t.match(verified.json, { state: 'done', result: { identical: true } }, JSON.stringify(verified.json));
});

t.test('without --file-root or --device-allow no local path is allowed, and the message says how to allow one', async (t) => {
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: path.join(directory, 'data'), volumeSize: '16M' });
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'base' })).status, 201);
  const response = await restore(appliance, path.join(directory, 'restored.img'));
  t.equal(response.status, 403);
  t.equal(errorOf(response).code, 'target-not-allowed');
  t.match(errorOf(response).message, /allows no local files or devices \(serve --file-root DIR, --device-allow DEVICE\)/);
  t.notOk(fs.existsSync(path.join(directory, 'restored.img')));
});

t.test('a file root that overlaps the data folder, lies in /proc or does not exist stops serve at start-up', async (t) => {
  const directory = temporaryDirectory(t);
  const dataDirectory = path.join(directory, 'data');
  fs.mkdirSync(path.join(dataDirectory, 'inner'), { recursive: true });
  fs.symlinkSync(dataDirectory, path.join(directory, 'data-link'));
  const cases: Array<[string, RegExp, string]> = [
    [directory, /--file-root .* contains the data folder/, 'a root that contains the data folder'],
    [dataDirectory, /--file-root .* contains the data folder/, 'the data folder itself'],
    [path.join(directory, 'data-link'), /--file-root .* contains the data folder/, 'a link to the data folder'],
    [path.join(dataDirectory, 'inner'), /--file-root .* is inside the data folder/, 'a folder in the data folder'],
    ['/proc/self', /--file-root .* is in \/proc/, 'a folder of /proc'],
    [path.join(directory, 'missing'), /--file-root .* cannot be used: ENOENT/, 'a folder that does not exist'],
    ['files', /--file-root files: give an absolute path/, 'a relative path'],
  ];
  for (const [root, message, what] of cases) {
    const serve = await run(
      process.execPath,
      [cliPath, 'serve', '--data', dataDirectory, '--nbd-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--volume-size', '16M', '--file-root', root],
      { timeoutMs: 30_000 },
    );
    t.equal(serve.code, 1, `${what}: serve exits`);
    t.match(serve.stderr, message, `${what}: ${serve.stderr.trim().split('\n').pop()}`);
  }
});

t.test('an allowed device: restored onto while free, 409 target-in-use while mounted, named through a link', async (t) => {
  if (!requireTools(t, ['losetup', 'mkfs.ext4', 'mount', 'umount'])) return;
  const directory = temporaryDirectory(t);
  const backing = path.join(directory, 'device.img');
  fs.writeFileSync(backing, Buffer.alloc(0));
  fs.truncateSync(backing, volumeSizeBytes);
  const attached = await run('losetup', ['--find', '--show', backing]);
  t.equal(attached.code, 0, `losetup (needs root): ${attached.stderr}`);
  if (attached.code !== 0) return;
  const device = attached.stdout.trim();
  t.teardown(async () => void (await run('losetup', ['-d', device])));
  // Allowed by a link, as /dev/disk/by-id/... names a disk; the request may use either name.
  const byId = path.join(directory, 'by-id-disk');
  fs.symlinkSync(device, byId);

  const appliance = await startAppliance(t, { dataDirectory: path.join(directory, 'data'), volumeSize: '16M', deviceAllow: [byId] });
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'base' })).status, 201);

  t.equal((await run('mkfs.ext4', ['-q', device])).code, 0, 'a file system on the device');
  const mountPoint = path.join(directory, 'mnt');
  fs.mkdirSync(mountPoint);
  const mounted = await run('mount', [device, mountPoint]);
  t.equal(mounted.code, 0, `mount: ${mounted.stderr}`);
  if (mounted.code !== 0) return;
  let isMounted = true;
  t.teardown(async () => {
    if (isMounted) await run('umount', [mountPoint]);
  });
  fs.writeFileSync(path.join(mountPoint, 'precious.txt'), 'still here');

  for (const [response, what] of [
    [await restore(appliance, device), 'restore onto it'],
    [await restore(appliance, byId), 'restore onto it by its link'],
    [await apiRequest(appliance, 'POST', '/api/v1/verify', { volume: 'vol0', against: device }), 'verify against it'],
  ] as const) {
    t.equal(response.status, 409, `${what} while mounted: ${JSON.stringify(response.json)}`);
    t.equal(errorOf(response).code, 'target-in-use', what);
    t.match(errorOf(response).message, /is in use: mounted, a member of an md array/, what);
  }
  t.equal((await run('umount', [mountPoint])).code, 0);
  isMounted = false;
  const remounted = await run('mount', [device, mountPoint]);
  t.equal(remounted.code, 0, 'the file system is intact');
  t.equal(fs.readFileSync(path.join(mountPoint, 'precious.txt'), 'utf8'), 'still here');
  t.equal((await run('umount', [mountPoint])).code, 0);

  const done = await restore(appliance, device, true);
  t.equal(done.status, 200, JSON.stringify(done.json));
  t.match(done.json, { state: 'done', result: { verification: { mismatches: [] } } }, 'free, it is restored onto');
  const byLink = await apiRequest(appliance, 'POST', '/api/v1/verify?wait=true', { volume: 'vol0', snapshot: 'base', against: byId });
  t.match(byLink.json, { state: 'done', result: { identical: true } }, 'and verified by its link');
});
