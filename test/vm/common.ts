// Helpers shared by the kernel-client tests in test/vm/: the appliance's API, seeded test files
// with their SHA-256, and reading files out of the appliance's copy of an ext4 file system on
// this machine (no mount, no loop device: nbdcopy or qemu-img makes an image, debugfs reads it).

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Appliance } from '../support/appliance.js';
import { randomBytesFrom, seededRandom } from '../support/seeded-random.js';
import { run } from '../support/tools.js';

export const MiB = 1024 * 1024;

/**
 * Shell functions for guest scripts: print_files DIR KEY prints "@@ KEY NAME SHA256" per file;
 * io_errors prints "@@ io-errors N", the kernel's count of block I/O errors so far (a request the
 * appliance refused shows up there, even when the program that caused it carried on).
 */
export const guestFunctions = `
print_files() { for f in "$1"/*; do [ -f "$f" ] && echo "@@ $2 \${f##*/} $(sha256sum "$f" | cut -d' ' -f1)"; done; return 0; }
io_errors() { echo "@@ io-errors $(dmesg | grep -c 'I/O error' || true)"; }
`;

/** The appliance's REST API with its token (the shared test helper). */
export { apiRequest as api } from '../support/api.js';

export function sha256(content: Buffer): string {
  return crypto.createHash('sha256').update(content).digest('hex');
}

/** Files of seeded random content, by name, sizes chosen to cross block and extent boundaries. */
export function seededFiles(seed: number, sizesBytes: Record<string, number>): Record<string, Buffer> {
  const random = seededRandom(seed);
  return Object.fromEntries(Object.entries(sizesBytes).map(([name, sizeBytes]) => [name, randomBytesFrom(random, sizeBytes)]));
}

export function checksums(files: Record<string, Buffer>): Record<string, string> {
  return Object.fromEntries(Object.entries(files).map(([name, content]) => [name, sha256(content)]));
}

/** "@@ file NAME SHA" markers as a name -> checksum table. */
export function fileMarkers(markers: Array<{ values: string[] }>): Record<string, string> {
  return Object.fromEntries(markers.map((marker) => [marker.values[0]!, marker.values[1]!]));
}

/**
 * Copy an NBD export to an image file; from offsetBytes on when given (the data area of an md
 * leg), through qemu-img's raw driver over the NBD one.
 */
export async function copyExport(appliance: Appliance, exportName: string, imagePath: string, offsetBytes = 0): Promise<void> {
  const result =
    offsetBytes === 0
      ? await run('nbdcopy', [appliance.uri(exportName), imagePath])
      : await run('qemu-img', [
          'convert',
          '-O',
          'raw',
          '--image-opts',
          `driver=raw,offset=${offsetBytes},file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=${appliance.nbdPort},file.export=${exportName}`,
          imagePath,
        ]);
  if (result.code !== 0) throw new Error(`copying ${exportName}: ${result.stderr}`);
}

/** The SHA-256 of every regular file in an ext4 image's root folder, read with debugfs. */
export async function imageChecksums(imagePath: string, names: string[]): Promise<Record<string, string | null>> {
  const outputDirectory = fs.mkdtempSync(path.join(path.dirname(imagePath), 'dump-'));
  const table: Record<string, string | null> = {};
  for (const name of names) {
    const outputPath = path.join(outputDirectory, name);
    const result = await run('debugfs', ['-R', `dump /${name} ${outputPath}`, imagePath]);
    table[name] = result.code === 0 && fs.existsSync(outputPath) ? sha256(fs.readFileSync(outputPath)) : null;
  }
  return table;
}

/** The names debugfs lists in the image's root folder (without ".", ".." and lost+found). */
export async function imageRootNames(imagePath: string): Promise<string[]> {
  const result = await run('debugfs', ['-R', 'ls -p /', imagePath]);
  if (result.code !== 0) throw new Error(`debugfs ls: ${result.stderr}`);
  // -p prints /inode/mode/uid/gid/name/size/ per entry.
  return result.stdout
    .split('\n')
    .map((line) => line.split('/')[5])
    .filter((name): name is string => name !== undefined && name !== '' && name !== '.' && name !== '..' && name !== 'lost+found')
    .sort();
}
