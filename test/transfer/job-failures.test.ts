// Jobs that fail on the way (issue 10 §6): whatever fails once a job exists ends it as `failed`
// with the error, persisted and announced, and the appliance goes on serving.
//
// Invariants checked:
//   1. A restore whose plan cannot be made ends failed with the plan's error (it used to stay
//      `running` until the appliance restarted); its journal says failed.
//   2. A job whose journal cannot be written ends failed, and the real appliance keeps serving
//      (it used to be an unhandled rejection: the process exited).
//   3. A cancelled job is `cancelled` and a job stopped by a shutdown `interrupted`, whatever the
//      error its transfer ended with says.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { MiB } from '../../storage/index.js';
import { call, startApi } from '../support/api-app.js';
import { startAppliance } from '../support/appliance.js';
import { apiRequest } from '../support/api.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { sleep } from '../support/waits.js';

interface JobJson {
  id: string;
  state: string;
  error: string | null;
}

t.test('a restore whose plan fails ends as failed, with the error', async (t) => {
  const { app, appliance, dataDirectory } = await startApi(t);
  const volume = await appliance.store.openVolume('vol0');
  await volume.write(0, Buffer.alloc(MiB, 0x21), { fua: true });
  await appliance.createSnapshot('vol0', 'before');
  await volume.write(0, Buffer.alloc(MiB, 0x42), { fua: true });
  const history = volume.history!;
  const changedBetween = history.changedBetween.bind(history);
  history.changedBetween = async () => {
    throw new Error('the index could not be read (injected)');
  };
  t.teardown(() => {
    history.changedBetween = changedBetween;
  });

  const started = await call(app, 'POST', '/api/v1/restores', { volume: 'vol0', snapshot: 'before', inPlace: true });
  t.equal(started.statusCode, 202, 'the job starts');
  const job = started.json() as JobJson;
  const finished = await appliance.jobs.settled(job.id);
  t.match(finished, { state: 'failed', error: /the index could not be read \(injected\)/ }, 'and ends failed, saying why');
  t.match((await call(app, 'GET', `/api/v1/jobs/${job.id}`)).json(), { state: 'failed' }, 'the API says so');
  const journal = JSON.parse(fs.readFileSync(path.join(dataDirectory, 'jobs', `${job.id}.json`), 'utf8')) as JobJson;
  t.match(journal, { state: 'failed', error: /injected/ }, 'and so does its journal');

  history.changedBetween = changedBetween;
  const again = await call(app, 'POST', '/api/v1/restores?wait=true', { volume: 'vol0', snapshot: 'before', inPlace: true });
  t.match(again.json(), { state: 'done' }, 'the same restore asked again runs (a failed job is not resumed)');
  t.ok((await volume.read(0, MiB)).equals(Buffer.alloc(MiB, 0x21)), 'and rewinds the volume');
});

t.test('cancelled and interrupted are told apart by how the job was stopped', async (t) => {
  const { app, appliance } = await startApi(t);
  const volume = await appliance.store.openVolume('vol0');
  await appliance.createSnapshot('vol0', 'empty');
  // 1 MiB every 2 MiB: pieces of their own, which the slowest throttle (1 MiB/s) sends one a second.
  for (let offsetBytes = 0; offsetBytes < 16 * MiB; offsetBytes += 2 * MiB) await volume.write(offsetBytes, Buffer.alloc(MiB, 0x71), { fua: false });
  await volume.flush();
  const slow = { volume: 'vol0', snapshot: 'empty', inPlace: true, rateBytesPerSecond: MiB };

  const response = await call(app, 'POST', '/api/v1/restores', slow);
  t.equal(response.statusCode, 202, 'a throttled restore starts');
  const cancelled = response.json() as JobJson;
  await sleep(300);
  t.equal((await call(app, 'DELETE', `/api/v1/jobs/${cancelled.id}`)).statusCode, 200, 'cancel');
  t.match(await appliance.jobs.settled(cancelled.id), { state: 'cancelled', error: 'cancelled on request' });

  const interrupted = (await call(app, 'POST', '/api/v1/restores', slow)).json() as JobJson;
  t.equal(interrupted.id, cancelled.id, 'asking again resumes the cancelled job');
  await sleep(300);
  await appliance.jobs.close();
  t.match(appliance.jobs.get(interrupted.id), { state: 'interrupted', error: 'the appliance is stopping' });
});

t.test('a job whose journal cannot be written ends failed; the appliance goes on serving', async (t) => {
  const dataDirectory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory });
  const jobsDirectory = path.join(dataDirectory, 'jobs');
  fs.renameSync(jobsDirectory, `${jobsDirectory}.aside`);
  fs.writeFileSync(jobsDirectory, 'not a folder');

  const started = await apiRequest(appliance, 'POST', '/api/v1/verify', { volume: 'vol0' });
  t.equal(started.status, 202, 'the verification starts');
  const id = (started.json as unknown as JobJson).id;
  let job: JobJson | null = null;
  for (let attempt = 0; attempt < 100; attempt++) {
    await sleep(100);
    job = (await apiRequest(appliance, 'GET', `/api/v1/jobs/${id}`)).json as unknown as JobJson;
    if (job.state !== 'running') break;
  }
  t.match(job, { state: 'failed', error: /ENOTDIR/ }, 'it ends failed, saying why');
  t.equal((await fetch(`${appliance.httpBase}/health`)).status, 200, 'the appliance still serves');
  fs.rmSync(jobsDirectory);
  fs.renameSync(`${jobsDirectory}.aside`, jobsDirectory);
  t.equal(await appliance.stop(), 0, 'and stops cleanly');
});
