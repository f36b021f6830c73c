// Long operations of the appliance, run as jobs people follow: restore (a point in time onto a
// target, or onto the volume itself), verify (internal consistency, or against another disk) and
// seed (a volume's t0 from an existing disk). Each job has a journal, data/jobs/<id>.json
// (docs/formats/job-journal.md), rewritten at every checkpoint; a restore or seed interrupted by a
// crash, a restart or a cancel is resumed by asking for the same thing again. A job reading a
// point in time holds it against expiry through a view, released when the job ends.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  formatMicros,
  nodeFileSystem,
  verifyVolume,
  writeFileAtomic,
  type InstantSpecification,
  type PointInTimeView,
  type Volume,
  type VolumeHistory,
  type VolumeStore,
} from '../storage/index.js';
import type { NbdServer } from '../server/index.js';
import { blockDeviceEndpoint, checkEndpoint, openEndpoint, EndpointError, requestBytesMax, type Endpoint } from '../transfer/endpoints.js';
import type { EndpointRefusal } from '../transfer/endpoint-error.js';
import type { LocalPathPolicy, LocalPathUse } from '../transfer/local-paths.js';
import type { NbdClientTls } from '../transfer/client-tls.js';
import { changedPlan, comparePieceBytes, wholePlan } from '../transfer/plans.js';
import { runTransfer, type TransferCheckpoint, type TransferResult } from '../transfer/run.js';
import type { NbdTimeouts } from '../transfer/limits.js';
import type { CopyMode } from '../transfer/copy.js';
import type { ByteRange } from '../transfer/ranges.js';
import { ApplianceError, type ApplianceErrorCode } from './errors.js';
import { nowMicros, type ApplianceEvents } from './events.js';
import { explainExpired, instantOf } from './instant.js';

export type RestoreMode = 'fast' | 'digest' | 'full';

export interface RestoreRequest {
  volume: string;
  at?: string | number;
  snapshot?: string;
  sequence?: number;
  /** nbd:// or nbd+unix:// URI, block device or file; absent with inPlace. */
  target?: string;
  /** Roll the volume itself back, as new logged writes. */
  inPlace?: boolean;
  /** fast: the target equals the volume now (only changed blocks); digest (default): compare chunks; full: copy all. */
  mode?: RestoreMode;
  /** In place or seeding with clients attached to the live export. */
  force?: boolean;
  rateBytesPerSecond?: number;
  verify?: boolean;
}

export interface VerifyRequest {
  volume: string;
  /** Compare with this disk, file or URI; absent: internal verification. */
  against?: string;
  at?: string | number;
  snapshot?: string;
  sequence?: number;
}

export interface SeedRequest {
  volume: string;
  source: string;
  /** Write every chunk instead of only the differing ones. */
  full?: boolean;
  force?: boolean;
}

export type JobKind = 'restore' | 'verify' | 'seed';
export type JobState = 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted';

export interface JobProgress {
  phase: string;
  doneBytes: number;
  totalBytes: number;
  rateBytesPerSecond: number;
  etaSeconds: number | null;
}

/** What a job is, as kept in its journal and shown by the API. */
export interface Job {
  formatVersion: number;
  id: string;
  kind: JobKind;
  state: JobState;
  volume: string;
  /** Identifies "the same request" for resuming. */
  key: string;
  request: RestoreRequest | VerifyRequest | SeedRequest;
  /** The instant restored or verified; null for the live volume and for seeds. */
  sequence: number | null;
  /** The volume's last record when the job began (fast restores send what changed since). */
  baseSequence: number;
  /**
   * In-place restores: the volume's last record when the checkpoint was saved (null before the
   * first). Everything below the checkpoint's watermark showed the instant then; a resumed run
   * sends again what changed since below it, and what changed since the instant above it.
   */
  checkpointSequence?: number | null;
  mode: RestoreMode | 'internal' | 'external' | null;
  target: string | null;
  /** For in-place restores: the snapshot marking the volume just before, to undo with. */
  undoSnapshot: string | null;
  startedMicros: number;
  finishedMicros: number | null;
  runs: number;
  checkpoint: TransferCheckpoint;
  progress: JobProgress;
  result: Record<string, unknown> | null;
  error: string | null;
}

/** Why a running job was stopped: the state it ends in says which, not the words of an error. */
class JobStop extends Error {
  constructor(
    readonly state: 'cancelled' | 'interrupted',
    message: string,
  ) {
    super(message);
    this.name = 'JobStop';
  }
}

/** Progress of a step: bytes for transfers, records then 4 MiB pieces for internal verification. */
type StepProgress = { phase: string; doneBytes: number; totalBytes: number };

const journalVersion = 1;
const runningJobsMax = 4;
const keptJobsMax = 100;
const progressEventIntervalMs = 500;

export class JobManager {
  private readonly jobs = new Map<string, Job>();
  private readonly controllers = new Map<string, AbortController>();
  private readonly running = new Map<string, Promise<void>>();
  private readonly directory: string;

  constructor(
    private readonly parts: {
      store: VolumeStore;
      nbd: NbdServer;
      events: ApplianceEvents;
      createSnapshot: (volume: string, name: string, note: string) => Promise<unknown>;
      /** The devices and files targets and sources may be (serve --device-allow, --file-root). */
      localPaths: LocalPathPolicy;
      /** The CA and client certificate for nbds:// targets and sources (serve --remote-tls-*). */
      remoteTls: NbdClientTls | null;
      /** Time limits of NBD targets and sources (serve --nbd-connect-timeout, --nbd-request-timeout). */
      nbdTimeouts?: NbdTimeouts;
    },
  ) {
    this.directory = path.join(parts.store.dataDirectory, 'jobs');
    fs.mkdirSync(this.directory, { recursive: true });
    this.loadJournals();
  }

  /** Jobs of earlier runs: a job that was running when the appliance stopped is interrupted. */
  private loadJournals(): void {
    const files = fs.readdirSync(this.directory).filter((name) => name.endsWith('.json'));
    for (const file of files) {
      try {
        const job = JSON.parse(fs.readFileSync(path.join(this.directory, file), 'utf8')) as Job;
        if (job.formatVersion !== journalVersion) continue;
        if (job.state === 'running') job.state = 'interrupted';
        this.jobs.set(job.id, job);
      } catch {
        // a journal torn by a crash during its first write: nothing to resume
      }
    }
  }

  list(): Job[] {
    return [...this.jobs.values()].sort((left, right) => right.startedMicros - left.startedMicros);
  }

  get(id: string): Job {
    const job = this.jobs.get(id);
    if (job === undefined) throw new ApplianceError('ENOENT', `no job ${id}`);
    return job;
  }

  /** Resolves when the job has finished (for the API's ?wait and for tests). */
  async settled(id: string): Promise<Job> {
    await this.running.get(id);
    return this.get(id);
  }

  cancel(id: string): Job {
    const job = this.get(id);
    if (job.state !== 'running') throw new ApplianceError('EINVAL', `job ${id} is ${job.state}, not running`);
    this.controllers.get(id)?.abort(new JobStop('cancelled', 'cancelled on request'));
    return job;
  }

  // ---- restore ----

  async restore(request: RestoreRequest): Promise<Job> {
    const volume = await this.parts.store.openVolume(request.volume);
    const history = this.historyOf(volume);
    const inPlace = request.inPlace === true;
    if (inPlace === (request.target !== undefined)) throw new ApplianceError('EINVAL', 'give either target or inPlace: true');
    const mode: RestoreMode = request.mode ?? (inPlace ? 'fast' : 'digest');
    if (inPlace && mode !== 'fast') throw new ApplianceError('EINVAL', 'an in-place restore sends the changed blocks only (mode fast)');
    const instant = instantOf(request);
    const sequence = await keptSequenceOf(history, request.volume, instant);
    const target = inPlace ? null : request.target!;
    const key = jobKey(['restore', request.volume, sequence, target ?? 'in-place', mode]);
    if (inPlace) this.refuseWriters(request.volume, request.force === true, 'rewind it in place');
    this.refuseBusyVolume(request.volume, inPlace);

    const resumable = this.resumable(key);
    const sourceView = await openKeptView(history, request.volume, instant, sequence, `restore source: ${request.volume} at sequence ${sequence}`);
    let targetEndpoint: Endpoint | null = null;
    let job: Job;
    try {
      // Until the job runs, a failure is the request's: it is answered, and no job is left behind.
      targetEndpoint = inPlace ? blockDeviceEndpoint(volume, `${request.volume} (live)`) : await this.openTarget(target!, volume.sizeBytes);
      job = resumable !== null ? this.resumeJob(resumable, request) : await this.newRestoreJob({ request, volume, sequence, key, mode, target });
    } catch (error) {
      sourceView.release();
      await targetEndpoint?.close();
      throw error;
    }
    this.runRestore({ job, request, volume, history, mode, sourceView, targetEndpoint });
    return job;
  }

  /** A new restore's job; in place, after the snapshot that undoes it. */
  private async newRestoreJob(parts: { request: RestoreRequest; volume: Volume; sequence: number; key: string; mode: RestoreMode; target: string | null }): Promise<Job> {
    const { request, volume, sequence, key, mode, target } = parts;
    await volume.flush();
    const baseSequence = volume.stats().durableSequence;
    let undoSnapshot: string | null = null;
    if (target === null) {
      undoSnapshot = `before-restore-${compactTime(nowMicros())}-${crypto.randomBytes(2).toString('hex')}`;
      await this.parts.createSnapshot(request.volume, undoSnapshot, `taken before rolling back to sequence ${sequence}; restore this snapshot in place to undo`);
    }
    return this.newJob({ kind: 'restore', volume: request.volume, key, request, sequence, baseSequence, mode, target, undoSnapshot });
  }

  /**
   * The restore's run, once its source is held and its target open. Everything from here on is
   * the job's: the plan is made inside it, so a plan that fails ends the job as failed.
   */
  private runRestore(parts: { job: Job; request: RestoreRequest; volume: Volume; history: VolumeHistory; mode: RestoreMode; sourceView: PointInTimeView; targetEndpoint: Endpoint }): void {
    const { job, request, volume, history, mode, sourceView, targetEndpoint } = parts;
    const source = blockDeviceEndpoint(sourceView, `${request.volume} at sequence ${job.sequence}`);
    const copyMode: CopyMode = mode === 'digest' ? 'compare' : 'write';
    const inPlace = job.target === null;
    this.start(job, async (signal, onProgress, onCheckpoint) => {
      try {
        const { plan, resumeFrom } = inPlace
          ? await this.inPlacePlan(job, volume, history)
          : {
              plan: mode === 'fast' ? await changedPlan(history, job.sequence!, job.baseSequence, volume.sizeBytes) : wholePlan(volume.sizeBytes, mode === 'digest' ? comparePieceBytes : requestBytesMax),
              resumeFrom: job.checkpoint,
            };
        const result = await runTransfer({
          source,
          target: targetEndpoint,
          plan,
          mode: copyMode,
          resumeFrom,
          verify: request.verify ?? true,
          signal,
          onProgress,
          onCheckpoint: async (checkpoint) => {
            // The target was flushed for this checkpoint: every restore write below its watermark has a record by now.
            if (inPlace) job.checkpointSequence = volume.stats().appendedSequence;
            await onCheckpoint(checkpoint);
          },
          ...(request.rateBytesPerSecond === undefined ? {} : { rateBytesPerSecondMax: request.rateBytesPerSecond }),
        });
        return transferSummary(result, targetEndpoint.sizeBytes, volume.sizeBytes);
      } finally {
        await targetEndpoint.close();
        sourceView.release();
      }
    });
  }

  /**
   * The plan of an in-place restore, from the volume as it is now. A first run sends what changed
   * since the instant. A resumed run cannot trust the first run's base: the volume may have been
   * written between the runs. Below the last checkpoint's watermark the volume showed the instant
   * when the checkpoint was saved, so what changed since then is sent again; above it, what
   * changed since the instant. The watermark starts again at 0 on this new plan; the ranges
   * written before are still re-read by the final verification.
   */
  private async inPlacePlan(job: Job, volume: Volume, history: VolumeHistory): Promise<{ plan: ByteRange[]; resumeFrom: TransferCheckpoint }> {
    await volume.flush();
    const nowSequence = volume.stats().durableSequence;
    const instant = job.sequence!;
    const doneThroughBytes = job.checkpoint.doneThroughBytes;
    if (job.runs === 1 || doneThroughBytes === 0) {
      return { plan: await changedPlan(history, instant, nowSequence, volume.sizeBytes), resumeFrom: { doneThroughBytes: 0, written: job.checkpoint.written } };
    }
    const checkpointSequence = job.checkpointSequence ?? job.baseSequence;
    const below = await changedPlan(history, Math.max(instant, checkpointSequence), nowSequence, volume.sizeBytes, { startBytes: 0, endBytes: doneThroughBytes });
    const above = await changedPlan(history, instant, nowSequence, volume.sizeBytes, { startBytes: doneThroughBytes, endBytes: volume.sizeBytes });
    return { plan: [...below, ...above], resumeFrom: { doneThroughBytes: 0, written: job.checkpoint.written } };
  }

  /** An interrupted or cancelled job running again for the same request. */
  private resumeJob(job: Job, request: Job['request']): Job {
    job.state = 'running';
    job.runs++;
    job.error = null;
    job.finishedMicros = null;
    job.request = request;
    return job;
  }

  // ---- verify ----

  async verify(request: VerifyRequest): Promise<Job> {
    const volume = await this.parts.store.openVolume(request.volume);
    const history = this.historyOf(volume);
    const anInstant = request.at !== undefined || request.snapshot !== undefined || request.sequence !== undefined;
    if (request.against === undefined) {
      if (anInstant) throw new ApplianceError('EINVAL', 'an internal verification checks the whole volume: give no instant, or give against');
      const job = this.newJob({ kind: 'verify', volume: request.volume, key: jobKey(['verify', request.volume, crypto.randomUUID()]), request, sequence: null, baseSequence: 0, mode: 'internal', target: null, undoSnapshot: null });
      this.start(job, async (signal, onProgress) => {
        const report = await verifyVolume(volume, {
          signal,
          onProgress: ({ phase, doneUnits, totalUnits }) => onProgress({ phase, doneBytes: doneUnits, totalBytes: totalUnits }),
        });
        return { ...report };
      });
      return job;
    }
    const instant = anInstant ? instantOf(request) : null;
    const sequence = instant === null ? null : await keptSequenceOf(history, request.volume, instant);
    const view = instant === null || sequence === null ? null : await openKeptView(history, request.volume, instant, sequence, `verification of ${request.volume} at sequence ${sequence}`);
    const source = blockDeviceEndpoint(view ?? volume, sequence === null ? `${request.volume} (live)` : `${request.volume} at sequence ${sequence}`);
    let other: Endpoint | null = null;
    let job: Job;
    try {
      other = await this.openTarget(request.against, null, false);
      job = this.newJob({ kind: 'verify', volume: request.volume, key: jobKey(['verify', request.volume, crypto.randomUUID()]), request, sequence, baseSequence: 0, mode: 'external', target: request.against, undoSnapshot: null });
    } catch (error) {
      view?.release();
      await other?.close();
      throw error;
    }
    this.runExternalVerification(job, volume, source, other, view);
    return job;
  }

  private runExternalVerification(job: Job, volume: Volume, source: Endpoint, other: Endpoint, view: PointInTimeView | null): void {
    this.start(job, async (signal, onProgress) => {
      try {
        const comparedBytes = Math.min(other.sizeBytes, volume.sizeBytes);
        const result = await runTransfer({ source, target: other, plan: wholePlan(comparedBytes, comparePieceBytes), mode: 'check', verify: false, signal, onProgress });
        return {
          identical: result.counters.differingBytes === 0 && other.sizeBytes === volume.sizeBytes,
          comparedBytes,
          matchingBytes: result.counters.equalBytes,
          differingBytes: result.counters.differingBytes,
          differingRanges: result.differing,
          volumeSizeBytes: volume.sizeBytes,
          otherSizeBytes: other.sizeBytes,
        };
      } finally {
        await other.close();
        view?.release();
      }
    });
  }

  // ---- seed ----

  async seed(request: SeedRequest): Promise<Job> {
    const volume = await this.parts.store.openVolume(request.volume);
    this.historyOf(volume);
    this.refuseWriters(request.volume, request.force === true, 'seed it');
    this.refuseBusyVolume(request.volume, true);
    const mode: RestoreMode = request.full === true ? 'full' : 'digest';
    const key = jobKey(['seed', request.volume, request.source, mode]);
    const source = await this.openTarget(request.source, null, false);
    if (source.sizeBytes !== volume.sizeBytes) {
      await source.close();
      throw new ApplianceError('EINVAL', `${request.source} has ${source.sizeBytes} bytes and volume ${request.volume} ${volume.sizeBytes}: a seed needs the same size`);
    }
    let job: Job;
    try {
      const resumable = this.resumable(key);
      job =
        resumable !== null
          ? this.resumeJob(resumable, request)
          : this.newJob({ kind: 'seed', volume: request.volume, key, request, sequence: null, baseSequence: volume.stats().durableSequence, mode, target: null, undoSnapshot: null });
    } catch (error) {
      await source.close();
      throw error;
    }
    const target = blockDeviceEndpoint(volume, `${request.volume} (live)`);
    const startedJob = job;
    this.start(job, async (signal, onProgress, onCheckpoint) => {
      try {
        const result = await runTransfer({
          source,
          target,
          plan: wholePlan(volume.sizeBytes, comparePieceBytes),
          mode: mode === 'full' ? 'write' : 'compare',
          resumeFrom: startedJob.checkpoint,
          verify: true,
          signal,
          onProgress,
          onCheckpoint,
        });
        const snapshot = `seed-${compactTime(nowMicros())}`;
        await this.parts.createSnapshot(request.volume, snapshot, `seeded from ${request.source}`);
        return { ...transferSummary(result, source.sizeBytes, volume.sizeBytes), snapshot };
      } finally {
        await source.close();
      }
    });
    return job;
  }

  /** Cancel running jobs (their journals say interrupted, so asking again resumes them). */
  async close(): Promise<void> {
    for (const controller of this.controllers.values()) controller.abort(new JobStop('interrupted', 'the appliance is stopping'));
    await Promise.allSettled([...this.running.values()]);
  }

  // ---- running a job ----

  private start(
    job: Job,
    body: (signal: AbortSignal, onProgress: (progress: StepProgress) => void, onCheckpoint: (checkpoint: TransferCheckpoint) => Promise<void>) => Promise<Record<string, unknown>>,
  ): void {
    const controller = new AbortController();
    this.controllers.set(job.id, controller);
    const rate = new RateMeter();
    let lastEventMs = 0;
    const onProgress = (progress: StepProgress): void => {
      const rateBytesPerSecond = rate.note(progress.doneBytes);
      const leftBytes = progress.totalBytes - progress.doneBytes;
      job.progress = {
        phase: progress.phase,
        doneBytes: progress.doneBytes,
        totalBytes: progress.totalBytes,
        rateBytesPerSecond,
        etaSeconds: rateBytesPerSecond > 0 ? Math.round(leftBytes / rateBytesPerSecond) : null,
      };
      const nowMs = performance.now();
      if (nowMs - lastEventMs >= progressEventIntervalMs) {
        lastEventMs = nowMs;
        this.parts.events.emit({ type: 'job-progress', id: job.id, kind: job.kind, volume: job.volume, ...job.progress, micros: nowMicros() });
      }
    };
    const onCheckpoint = async (checkpoint: TransferCheckpoint): Promise<void> => {
      job.checkpoint = checkpoint;
      await this.persist(job);
    };
    // Never rejects: whatever fails (the journal, the plan, the transfer) ends the job, which says why.
    const run = (async () => {
      this.parts.events.emit({ type: 'job-started', id: job.id, kind: job.kind, volume: job.volume, micros: nowMicros() });
      try {
        await this.persist(job);
        job.result = await body(controller.signal, onProgress, onCheckpoint);
        const mismatches = (job.result['verification'] as { mismatches?: unknown[] } | null | undefined)?.mismatches;
        job.state = mismatches !== undefined && mismatches.length > 0 ? 'failed' : 'done';
        if (job.state === 'failed') job.error = 'the final verification found ranges that differ';
      } catch (error) {
        const stop: unknown = controller.signal.aborted ? controller.signal.reason : null;
        job.state = stop instanceof JobStop ? stop.state : 'failed';
        job.error = stop instanceof JobStop ? stop.message : error instanceof Error ? error.message : String(error);
      } finally {
        job.finishedMicros = nowMicros();
        this.controllers.delete(job.id);
        await this.persist(job).catch(() => undefined);
        this.parts.events.emit({ type: 'job-finished', id: job.id, kind: job.kind, volume: job.volume, state: job.state, error: job.error, micros: nowMicros() });
        this.running.delete(job.id);
        this.prune();
      }
    })();
    this.running.set(job.id, run);
  }

  private newJob(fields: Pick<Job, 'kind' | 'volume' | 'key' | 'request' | 'sequence' | 'baseSequence' | 'mode' | 'target' | 'undoSnapshot'>): Job {
    if (this.running.size >= runningJobsMax) throw new ApplianceError('EBUSY', `${runningJobsMax} jobs are running already; wait for one to finish`);
    const job: Job = {
      formatVersion: journalVersion,
      id: `${fields.kind}-${compactTime(nowMicros())}-${crypto.randomBytes(3).toString('hex')}`,
      state: 'running',
      ...fields,
      startedMicros: nowMicros(),
      finishedMicros: null,
      runs: 1,
      checkpoint: { doneThroughBytes: 0, written: [] },
      checkpointSequence: null,
      progress: { phase: 'starting', doneBytes: 0, totalBytes: 0, rateBytesPerSecond: 0, etaSeconds: null },
      result: null,
      error: null,
    };
    this.jobs.set(job.id, job);
    return job;
  }

  /** An interrupted or cancelled job asking the same thing, to continue where it stopped. */
  private resumable(key: string): Job | null {
    const candidates = [...this.jobs.values()].filter((job) => job.key === key && (job.state === 'interrupted' || job.state === 'cancelled'));
    candidates.sort((left, right) => right.startedMicros - left.startedMicros);
    const job = candidates[0] ?? null;
    if (job !== null && this.running.size >= runningJobsMax) throw new ApplianceError('EBUSY', `${runningJobsMax} jobs are running already; wait for one to finish`);
    return job;
  }

  private async persist(job: Job): Promise<void> {
    await writeFileAtomic(nodeFileSystem, path.join(this.directory, `${job.id}.json`), Buffer.from(`${JSON.stringify(job, null, 2)}\n`));
  }

  /** Keep the newest finished jobs (and every interrupted one, which can be resumed). */
  private prune(): void {
    const finished = this.list().filter((job) => job.state === 'done' || job.state === 'failed');
    for (const job of finished.slice(keptJobsMax)) {
      this.jobs.delete(job.id);
      fs.rmSync(path.join(this.directory, `${job.id}.json`), { force: true });
    }
  }

  private historyOf(volume: Volume) {
    if (volume.history === null) throw new ApplianceError('EINVAL', `volume ${volume.config.name} keeps no history`);
    return volume.history;
  }

  private refuseWriters(volume: string, force: boolean, what: string): void {
    const clients = this.parts.nbd.connectionsOf(volume).map((connection) => ({ connection: connection.id, remote: connection.remote }));
    if (clients.length > 0 && !force) {
      throw new ApplianceError('EBUSY', `volume ${volume} has ${clients.length} client(s) attached (${clients.map((client) => client.remote).join(', ')}): detach them or force to ${what}`, { clients });
    }
  }

  /** One job writing to a volume at a time. */
  private refuseBusyVolume(volume: string, writesVolume: boolean): void {
    if (!writesVolume) return;
    const busy = [...this.running.keys()].map((id) => this.jobs.get(id)!).find((job) => job.volume === volume && (job.kind === 'seed' || job.request !== null && (job.request as RestoreRequest).inPlace === true));
    if (busy !== undefined) throw new ApplianceError('EBUSY', `job ${busy.id} is writing to volume ${volume}`);
  }

  /**
   * Whether a target (write) or source (read) may be used, before anything is opened: its syntax,
   * and a local path against the operator's rules. The API asks first; the open checks again.
   */
  async checkEndpoint(text: string, use: LocalPathUse): Promise<void> {
    try {
      await checkEndpoint(text, { writable: use === 'write', localPaths: this.parts.localPaths, remoteTls: this.parts.remoteTls });
    } catch (error) {
      throw applianceErrorOf(error);
    }
  }

  private async openTarget(text: string, createSizeBytes: number | null, writable = true): Promise<Endpoint> {
    try {
      const endpoint = await openEndpoint(text, { writable, localPaths: this.parts.localPaths, remoteTls: this.parts.remoteTls, nbdTimeouts: this.parts.nbdTimeouts, ...(createSizeBytes === null ? {} : { createSizeBytes }) });
      if (createSizeBytes !== null && endpoint.sizeBytes < createSizeBytes) {
        await endpoint.close();
        throw new EndpointError(`${text} has ${endpoint.sizeBytes} bytes, less than the volume's ${createSizeBytes}`);
      }
      return endpoint;
    } catch (error) {
      throw applianceErrorOf(error);
    }
  }
}

const applianceCodeOfRefusal: Record<EndpointRefusal, ApplianceErrorCode> = { invalid: 'EINVAL', 'not-allowed': 'EACCES', 'in-use': 'EINUSE' };

/** An endpoint's refusal as the appliance's error; anything else passes through. */
function applianceErrorOf(error: unknown): unknown {
  return error instanceof EndpointError ? new ApplianceError(applianceCodeOfRefusal[error.refusal], error.message) : error;
}

/** The sequence an instant names, refused in words with the nearest kept instants when it expired. */
function keptSequenceOf(history: VolumeHistory, volume: string, instant: InstantSpecification): Promise<number> {
  return history.sequenceOf(instant).catch((error: unknown) => {
    throw explainExpired(error, volume, instant);
  });
}

/** A view that holds its instant until released (the instant may have expired since it was named). */
function openKeptView(history: VolumeHistory, volume: string, instant: InstantSpecification, sequence: number, description: string): Promise<PointInTimeView> {
  return history.openView(sequence, description).catch((error: unknown) => {
    throw explainExpired(error, volume, instant);
  });
}

function transferSummary(result: TransferResult, targetSizeBytes: number, volumeSizeBytes: number): Record<string, unknown> {
  return {
    plannedBytes: result.plannedBytes,
    resumedBytes: result.resumedBytes,
    writtenBytes: result.counters.writtenBytes,
    zeroedBytes: result.counters.zeroedBytes,
    equalBytes: result.counters.equalBytes,
    differingBytes: result.counters.differingBytes,
    blindBytes: result.counters.blindBytes,
    verification: result.verification,
    ...(targetSizeBytes > volumeSizeBytes ? { note: `the target is larger than the volume: its last ${targetSizeBytes - volumeSizeBytes} bytes were left as they were` } : {}),
  };
}

function jobKey(parts: ReadonlyArray<string | number>): string {
  return crypto.createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 32);
}

/** 20261125-140307 from µs (for names). */
function compactTime(micros: number): string {
  return formatMicros(micros).replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
}

/** Bytes per second over the last few seconds. */
class RateMeter {
  private readonly samples: Array<{ ms: number; bytes: number }> = [];

  note(doneBytes: number): number {
    const nowMs = performance.now();
    if (this.samples.length > 0 && doneBytes < this.samples[this.samples.length - 1]!.bytes) this.samples.length = 0; // a new phase
    this.samples.push({ ms: nowMs, bytes: doneBytes });
    while (this.samples.length > 2 && nowMs - this.samples[0]!.ms > 5000) this.samples.shift();
    if (this.samples.length > 512) this.samples.splice(1, this.samples.length - 256);
    const first = this.samples[0]!;
    const elapsedMs = nowMs - first.ms;
    return elapsedMs > 0 ? Math.max(0, Math.round(((doneBytes - first.bytes) / elapsedMs) * 1000)) : 0;
  }
}

