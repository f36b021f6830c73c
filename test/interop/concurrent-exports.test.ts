// Concurrent changes to exports.json through the real appliance's API (issue 10 §6): every
// request that is answered 201 or 204 is in the file, the file is whole JSON, and a restart brings
// back exactly the exports that exist. Before each atomic write had a temporary of its own and
// writes to one file were serialized, two POST /exports shared exports.json.tmp.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startAppliance } from '../support/appliance.js';
import { apiRequest } from '../support/api.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

const exportCount = 12;

function namesInFile(dataDirectory: string): string[] {
  const file = JSON.parse(fs.readFileSync(path.join(dataDirectory, 'exports.json'), 'utf8')) as { exports: Array<{ name: string }> };
  return file.exports.map((entry) => entry.name).sort();
}

t.test('concurrent POST and DELETE /exports: every answered change is in exports.json, and survives a restart', async (t) => {
  const dataDirectory = temporaryDirectory(t);
  let appliance = await startAppliance(t, { dataDirectory });
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'base' })).status, 201);
  const names = Array.from({ length: exportCount }, (_, index) => `view-${String(index).padStart(2, '0')}`);

  const created = await Promise.all(names.map((name, index) => apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'base', name, writable: index % 3 === 0 })));
  t.same(
    created.map((response) => response.status),
    names.map(() => 201),
    `all ${exportCount} concurrent creations succeed: ${created.filter((response) => response.status !== 201).map((response) => JSON.stringify(response.json)).join('; ')}`,
  );
  t.same(namesInFile(dataDirectory), names, 'exports.json holds every one');

  const doomed = names.filter((_, index) => index % 2 === 1);
  const kept = names.filter((_, index) => index % 2 === 0);
  const more = ['late-a', 'late-b', 'late-c'];
  const mixed = await Promise.all([
    ...doomed.map((name) => apiRequest(appliance, 'DELETE', `/api/v1/exports/${name}`)),
    ...more.map((name) => apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'base', name })),
  ]);
  t.same(
    mixed.map((response) => response.status),
    [...doomed.map(() => 204), ...more.map(() => 201)],
    'concurrent deletions and creations succeed',
  );
  const expected = [...kept, ...more].sort();
  t.same(namesInFile(dataDirectory), expected, 'exports.json holds exactly what exists');
  t.same(
    fs.readdirSync(dataDirectory).filter((name) => name.startsWith('exports.json')),
    ['exports.json'],
    'no temporary file is left',
  );

  t.equal(await appliance.stop(), 0);
  appliance = await startAppliance(t, { dataDirectory });
  const listed = (await apiRequest(appliance, 'GET', '/api/v1/exports')).json['exports'] as Array<{ name: string; state: string }>;
  t.same(listed.filter((entry) => entry.name !== 'vol0').map((entry) => entry.name).sort(), expected, 'a restart brings back exactly those');
  t.ok(listed.every((entry) => entry.state === 'serving'), 'all serving');
  t.equal(await appliance.stop(), 0);
});
