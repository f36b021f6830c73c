// `cdp-nbd restore`, `cdp-nbd verify`, `cdp-nbd seed` and `cdp-nbd job`: start a job on the
// running appliance, follow it (a progress bar with rate and ETA on a terminal, a line every few
// seconds otherwise), and print its result. Ctrl-C cancels the job; the same command resumes it.

import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseEndpoint } from '../transfer/endpoints.js';
import { apiClientOf, apiOptions, type ApiClient } from './api-client.js';
import { formatBytes, parseSize } from './sizes.js';

export const jobUsage = `  cdp-nbd restore VOLUME (--at INSTANT | --snapshot NAME | --sequence N) (--to TARGET | --in-place)
                  [--fast | --full] [--force] [--max-rate SIZE] [--no-verify] [--detach]
  cdp-nbd verify VOLUME [--against TARGET [--at INSTANT | --snapshot NAME | --sequence N]]
  cdp-nbd seed VOLUME --from SOURCE [--full] [--force]
  cdp-nbd job list | show ID | cancel ID`;

const restoreUsage = `cdp-nbd restore: write a point in time of a volume back onto a disk

Usage:
  cdp-nbd restore VOLUME (--at INSTANT | --snapshot NAME | --sequence N) --to TARGET [--fast | --full]
  cdp-nbd restore VOLUME (--at INSTANT | --snapshot NAME | --sequence N) --in-place [--force]

TARGET is nbd://HOST[:PORT]/EXPORT, nbds://HOST[:PORT]/EXPORT (TLS: the appliance's serve
--remote-tls-ca), nbd+unix:///EXPORT?socket=PATH, a block device the appliance allows (serve
--device-allow) or a file under one of its folders (serve --file-root; a missing file is created,
mode 0600). How much is sent:
  (default)  digest: each 1 MiB chunk of the target is compared and only differing chunks are sent
  --fast     the target equals the volume now (the host's own mirror leg): only the blocks written
             since the instant are sent, found from the delta maps and coalesced
  --full     everything is sent
--in-place rolls the volume itself back, as new logged writes, after a snapshot that undoes it
(printed at the end); refused while clients are attached to the volume unless --force.
--max-rate SIZE throttles (per second); --no-verify skips reading back what was written;
--detach starts the job and returns. Ctrl-C cancels; running the same command again resumes.`;

const commonOptions = {
  ...apiOptions,
  detach: { type: 'boolean', default: false },
  at: { type: 'string' },
  snapshot: { type: 'string' },
  sequence: { type: 'string' },
} as const;

export interface JobJson {
  id: string;
  kind: string;
  state: string;
  volume: string;
  mode: string | null;
  target: string | null;
  undoSnapshot: string | null;
  runs: number;
  resumedFromBytes: number;
  progress: { phase: string; doneBytes: number; totalBytes: number; rateBytesPerSecond: number; etaSeconds: number | null };
  result: Record<string, unknown> | null;
  error: string | null;
}

function clientOf(values: { api: string; token?: string | undefined; 'token-file'?: string | undefined; ca?: string | undefined }): ApiClient {
  return apiClientOf(values);
}

function instantOf(values: { at?: string | undefined; snapshot?: string | undefined; sequence?: string | undefined }): Record<string, unknown> {
  if (values.snapshot !== undefined) return { snapshot: values.snapshot };
  if (values.sequence !== undefined) return { sequence: Number(values.sequence) };
  if (values.at !== undefined) return { at: /^\d+$/.test(values.at) ? Number(values.at) : values.at };
  return {};
}

/** Paths are sent absolute: the appliance may run in another folder. */
function endpointOf(text: string): string {
  const parsed = parseEndpoint(text);
  return 'kind' in parsed && parsed.kind === 'path' ? path.resolve(text) : text; // problems are the appliance's to explain
}

export async function runRestore(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      ...commonOptions,
      to: { type: 'string' },
      'in-place': { type: 'boolean', default: false },
      fast: { type: 'boolean', default: false },
      full: { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      'max-rate': { type: 'string' },
      'no-verify': { type: 'boolean', default: false },
    },
  });
  const volume = positionals[0];
  if (values.help || volume === undefined || (values.to === undefined) === !values['in-place'] || (values.fast && values.full)) {
    process.stdout.write(`${restoreUsage}\n`);
    return values.help ? 0 : 2;
  }
  const body = {
    volume,
    ...instantOf(values),
    ...(values.to === undefined ? { inPlace: true } : { target: endpointOf(values.to) }),
    ...(values.fast ? { mode: 'fast' } : values.full ? { mode: 'full' } : {}),
    ...(values.force ? { force: true } : {}),
    ...(values['max-rate'] === undefined ? {} : { rateBytesPerSecond: parseSize(values['max-rate']) }),
    ...(values['no-verify'] ? { verify: false } : {}),
  };
  return startAndFollow(clientOf(values), '/api/v1/restores', body, values);
}

export async function runVerify(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { ...commonOptions, against: { type: 'string' } } });
  const volume = positionals[0];
  if (values.help || volume === undefined) {
    process.stdout.write(
      'cdp-nbd verify VOLUME: check that the log records, the delta maps and the live image agree\n' +
        'cdp-nbd verify VOLUME --against TARGET [--at INSTANT | --snapshot NAME | --sequence N]:\n' +
        '  compare the volume (now, or at an instant) with a disk, file or NBD URI, chunk by chunk\n',
    );
    return values.help ? 0 : 2;
  }
  const body = { volume, ...instantOf(values), ...(values.against === undefined ? {} : { against: endpointOf(values.against) }) };
  return startAndFollow(clientOf(values), '/api/v1/verify', body, values);
}

export async function runSeed(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { ...commonOptions, from: { type: 'string' }, full: { type: 'boolean', default: false }, force: { type: 'boolean', default: false } },
  });
  const volume = positionals[0];
  if (values.help || volume === undefined || values.from === undefined) {
    process.stdout.write(
      'cdp-nbd seed VOLUME --from SOURCE [--full] [--force]: make a disk image, block device or NBD URI the\n' +
        "volume's starting point (t0): chunks that differ are written as logged writes, then a snapshot\n" +
        'seed-TIME marks it. Re-seeding sends only the differing chunks; --full writes all of them.\n',
    );
    return values.help ? 0 : 2;
  }
  const body = { volume, source: endpointOf(values.from), ...(values.full ? { full: true } : {}), ...(values.force ? { force: true } : {}) };
  return startAndFollow(clientOf(values), '/api/v1/seeds', body, values);
}

export async function runJob(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: commonOptions });
  const client = clientOf(values);
  if (action === 'list') {
    const { jobs } = await client.request<{ jobs: JobJson[] }>('GET', '/api/v1/jobs');
    if (values.json) process.stdout.write(`${JSON.stringify(jobs, null, 2)}\n`);
    else for (const job of jobs) process.stdout.write(`${job.id}\t${job.state}\t${job.volume}\t${job.mode ?? ''}\t${job.target ?? ''}\n`);
    return 0;
  }
  const id = positionals[0];
  if ((action === 'show' || action === 'cancel') && id !== undefined) {
    const job = await client.request<JobJson>(action === 'show' ? 'GET' : 'DELETE', `/api/v1/jobs/${id}`);
    process.stdout.write(`${JSON.stringify(job, null, 2)}\n`);
    return 0;
  }
  process.stdout.write('Usage: cdp-nbd job list | show ID | cancel ID\n');
  return values.help ? 0 : 2;
}

async function startAndFollow(client: ApiClient, route: string, body: Record<string, unknown>, values: { json: boolean; detach: boolean }): Promise<number> {
  let job = await client.request<JobJson>('POST', route, body);
  if (job.runs > 1) process.stderr.write(`resuming ${job.id} from ${formatBytes(job.resumedFromBytes)} (run ${job.runs})\n`);
  if (values.detach) {
    process.stdout.write(values.json ? `${JSON.stringify(job, null, 2)}\n` : `${job.id}\n`);
    return 0;
  }
  const cancel = (): void => {
    process.stderr.write(`\ncancelling ${job.id}; run the same command again to resume\n`);
    void client.request('DELETE', `/api/v1/jobs/${job.id}`).catch(() => undefined);
  };
  process.once('SIGINT', cancel);
  const display = new ProgressDisplay(process.stderr.isTTY === true);
  try {
    while (job.state === 'running') {
      display.show(job);
      await new Promise((resolve) => setTimeout(resolve, 500));
      job = await client.request<JobJson>('GET', `/api/v1/jobs/${job.id}`);
    }
  } finally {
    process.off('SIGINT', cancel);
    display.end();
  }
  process.stdout.write(values.json ? `${JSON.stringify(job, null, 2)}\n` : `${describeOutcome(job)}\n`);
  return job.state === 'done' && !foundDifferences(job) ? 0 : 1;
}

function foundDifferences(job: JobJson): boolean {
  if (job.kind !== 'verify' || job.result === null) return false;
  return job.result['ok'] === false || job.result['identical'] === false;
}

function describeOutcome(job: JobJson): string {
  const lines = [`${job.kind} ${job.id}: ${job.state}${job.error === null ? '' : ` (${job.error})`}`];
  const result = job.result ?? {};
  if (job.kind === 'verify' && job.mode === 'internal') {
    const report = result as { ok?: boolean; sequence?: number; records?: { scanned: number; badCount: number; bad: unknown[]; missing: number }; maps?: { mismatchBytes: number; mismatches: unknown[] }; image?: { mismatchBytes: number; mismatches: unknown[]; skippedBytes: number } };
    if (report.records !== undefined) {
      lines.push(`  through sequence ${report.sequence}: ${report.records.scanned} records scanned, ${report.records.badCount} bad, ${report.records.missing} missing`);
      for (const bad of report.records.bad) lines.push(`    bad record ${JSON.stringify(bad)}`);
      lines.push(`  delta maps: ${formatBytes(report.maps!.mismatchBytes)} disagree with the log`);
      for (const range of report.maps!.mismatches) lines.push(`    ${rangeText(range)}`);
      lines.push(`  live image: ${formatBytes(report.image!.mismatchBytes)} differ from the log${report.image!.skippedBytes > 0 ? ` (${formatBytes(report.image!.skippedBytes)} written during the check, skipped)` : ''}`);
      for (const range of report.image!.mismatches) lines.push(`    ${rangeText(range)}`);
      lines.push(report.ok === true ? '  consistent' : '  INCONSISTENT');
    }
  } else if (job.kind === 'verify') {
    lines.push(
      `  compared ${formatBytes(Number(result['comparedBytes'] ?? 0))}: ${formatBytes(Number(result['matchingBytes'] ?? 0))} match, ${formatBytes(Number(result['differingBytes'] ?? 0))} differ`,
    );
    for (const range of (result['differingRanges'] as unknown[] | undefined) ?? []) lines.push(`    differs: ${rangeText(range)}`);
    lines.push(result['identical'] === true ? '  identical' : '  NOT identical');
  } else if (job.result !== null) {
    const verification = result['verification'] as { checkedBytes: number; mismatches: unknown[] } | null;
    lines.push(
      `  planned ${formatBytes(Number(result['plannedBytes']))}${Number(result['resumedBytes']) > 0 ? ` (${formatBytes(Number(result['resumedBytes']))} done by earlier runs)` : ''}; ` +
        `wrote ${formatBytes(Number(result['writtenBytes']))}, zeroed ${formatBytes(Number(result['zeroedBytes']))}, found equal ${formatBytes(Number(result['equalBytes']))}`,
    );
    if (verification !== null) lines.push(`  verified ${formatBytes(verification.checkedBytes)} read back: ${verification.mismatches.length === 0 ? 'identical' : `${verification.mismatches.length} ranges differ`}`);
    if (job.undoSnapshot !== null) lines.push(`  to undo: cdp-nbd restore ${job.volume} --snapshot ${job.undoSnapshot} --in-place`);
    if (typeof result['snapshot'] === 'string') lines.push(`  snapshot ${result['snapshot']} marks the seeded state`);
  }
  return lines.join('\n');
}

function rangeText(range: unknown): string {
  const { startBytes, endBytes } = range as { startBytes: number; endBytes: number };
  return `[${startBytes}, ${endBytes}) ${formatBytes(endBytes - startBytes)}`;
}

/** A bar redrawn in place on a terminal; elsewhere a plain line every 5 s. */
class ProgressDisplay {
  private lastLineMs = 0;
  private lastPhase = '';
  private drawn = false;

  constructor(private readonly terminal: boolean) {}

  show(job: JobJson): void {
    const { phase, doneBytes, totalBytes, rateBytesPerSecond, etaSeconds } = job.progress;
    const fraction = totalBytes > 0 ? Math.min(1, doneBytes / totalBytes) : 0;
    const units = phase === 'records' ? `${doneBytes}/${totalBytes} records` : `${formatBytes(doneBytes)}/${formatBytes(totalBytes)}`;
    const rate = phase === 'records' ? '' : ` ${formatBytes(rateBytesPerSecond)}/s`;
    const eta = etaSeconds === null ? '' : ` ETA ${formatDuration(etaSeconds)}`;
    if (this.terminal) {
      const width = 30;
      const filled = Math.round(fraction * width);
      process.stderr.write(`\r${phase.padEnd(12)} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(1).padStart(5)}% ${units}${rate}${eta}\u001b[K`);
      this.drawn = true;
      return;
    }
    const nowMs = Date.now();
    if (phase === this.lastPhase && nowMs - this.lastLineMs < 5000) return;
    this.lastPhase = phase;
    this.lastLineMs = nowMs;
    process.stderr.write(`${job.id} ${phase} ${(fraction * 100).toFixed(1)}% ${units}${rate}${eta}\n`);
  }

  end(): void {
    if (this.drawn) process.stderr.write('\n');
  }
}

function formatDuration(seconds: number): string {
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${String(seconds % 60).padStart(2, '0')}`;
}
