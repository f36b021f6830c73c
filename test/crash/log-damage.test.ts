// Damage in the middle of the write log, on the real appliance and real files (issue 10 §6;
// docs/formats/write-log.md, "Damage"): writes with qemu-io, kill -9, one record's payload
// overwritten on disk, restart.
//
// Invariants checked:
//   1. The appliance starts; the records past the damaged one are kept in quarantine/<µs>/, and
//      /health and GET /volumes/:volume give the sequences lost and found.
//   2. The volume serves reads and refuses writes (EIO) across restarts, until the folder is
//      taken away; then it takes writes again and /health is ok.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { logStart, nodeFileSystem, scanLog, volumePaths } from '../../storage/index.js';
import { DirtyRegionLog } from '../../storage/dirty-region-log.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { apiRequest } from '../support/api.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const writeCount = 24;

async function health(appliance: Appliance): Promise<{ status: number; reasons: string[] }> {
  const response = await fetch(`${appliance.httpBase}/health`);
  return { status: response.status, reasons: ((await response.json()) as { reasons: string[] }).reasons };
}

function qemuIo(appliance: Appliance, commands: string[], readOnly = false) {
  return run('qemu-io', ['-f', 'raw', ...(readOnly ? ['-r'] : []), appliance.uri(), ...commands.flatMap((command) => ['-c', command])]);
}

t.test('a record damaged in the middle of the log: the rest is quarantined, reported, and writes wait for an administrator', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const dataDirectory = temporaryDirectory(t);
  const paths = volumePaths(path.join(dataDirectory, 'volumes', 'vol0'));
  let appliance = await startAppliance(t, { dataDirectory });
  const pattern = (index: number): string => `0x${(0x10 + index).toString(16)}`;
  const written = await qemuIo(appliance, Array.from({ length: writeCount }, (_, index) => `write -P ${pattern(index)} ${index}M 64k`));
  t.equal(written.code, 0, written.stderr);
  await appliance.kill();

  // A record after the DRL's checkpoint (recovery reads from there), with good ones after it.
  const drl = DirtyRegionLog.open(nodeFileSystem, paths.drl);
  const checkpointSequence = drl.checkpoint.sequence;
  drl.close();
  const dataRecords: Array<{ sequence: number; segmentNumber: number; offsetBytes: number }> = [];
  scanLog(nodeFileSystem, paths.log, { from: logStart(nodeFileSystem, paths.log)!, expectedSequence: 1, withPayload: false }, ({ header, position }) => {
    if (header.kind === 1 && header.sequence > checkpointSequence) dataRecords.push({ sequence: header.sequence, ...position });
  });
  t.ok(dataRecords.length >= 4, `${dataRecords.length} data records after the checkpoint (sequence ${checkpointSequence})`);
  const damaged = dataRecords[Math.floor(dataRecords.length / 2)]!;
  const segment = path.join(paths.log, `${String(damaged.segmentNumber).padStart(16, '0')}.wlog`);
  const handle = fs.openSync(segment, 'r+');
  fs.writeSync(handle, Buffer.alloc(32, 0xee), 0, 32, damaged.offsetBytes + 48 + 8);
  fs.closeSync(handle);

  appliance = await startAppliance(t, { dataDirectory });
  const damagedHealth = await health(appliance);
  t.equal(damagedHealth.status, 503, '/health answers 503');
  const reason = new RegExp(`volume vol0: volume vol0 refuses writes: the write log is bad at segment ${damaged.segmentNumber} at byte ${damaged.offsetBytes} \\(checksum mismatch\\); record ${damaged.sequence} is lost, and the good records ${damaged.sequence + 1}-\\d+ found past it are kept in quarantine/\\d+`);
  t.ok(damagedHealth.reasons.some((text) => reason.test(text)), damagedHealth.reasons.join('; '));
  const shown = await apiRequest(appliance, 'GET', '/api/v1/volumes/vol0');
  t.match(shown.json['quarantine'], [{ kind: 'damage', lostSequences: [{ firstSequence: damaged.sequence, lastSequence: damaged.sequence }], foundRecords: [{ firstSequence: damaged.sequence + 1 }] }], 'GET /volumes/vol0 lists the quarantine');
  const folders = fs.readdirSync(path.join(paths.directory, 'quarantine'));
  t.equal(folders.length, 1, 'one quarantine folder');
  t.ok(fs.existsSync(path.join(paths.directory, 'quarantine', folders[0]!, 'report.json')), 'with its report');

  const read = await qemuIo(appliance, ['read -P 0x10 0 64k'], true);
  t.notMatch(read.stdout, /Pattern verification failed|error/i, 'reads are served');
  const refused = await qemuIo(appliance, ['write -P 0x77 40M 64k']);
  t.match(`${refused.stdout}${refused.stderr}`, /Input\/output error/, 'writes are refused with EIO');
  t.equal(await appliance.stop(), 0);

  appliance = await startAppliance(t, { dataDirectory });
  t.equal((await health(appliance)).status, 503, 'still, after a restart');
  t.equal(await appliance.stop(), 0);

  fs.rmSync(path.join(paths.directory, 'quarantine'), { recursive: true });
  appliance = await startAppliance(t, { dataDirectory });
  t.same(await health(appliance), { status: 200, reasons: [] }, 'with the folder taken away, the volume is healthy');
  const accepted = await qemuIo(appliance, ['write -P 0x77 40M 64k', 'read -P 0x77 40M 64k']);
  t.equal(accepted.code, 0, accepted.stderr);
  t.notMatch(accepted.stdout, /Pattern verification failed|error/i, 'and takes writes');
  t.equal(await appliance.stop(), 0);
});
