// End to end: the real appliance runs restore, verify and seed jobs against NBD servers that
// break the protocol or go silent (test/support/hostile-nbd-server.ts, in this process). Restore
// targets and seed sources are the hosts most likely to be compromised.
// Invariants, after each hostile peer: the job ends `failed` (or, when the peer fails before the
// job can start, the request is refused) with a message that says what the peer did; the
// appliance process is still running; a real client (qemu-io) still reads the volume through
// it; and no job is left running, so a silent peer does not keep a job slot.

import t from 'tap';
import { ChunkType, CommandType, ReplyFlag } from 'nbd-protocol-ts';
import { apiRequest } from '../support/api.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { chunk, offsetDataPayload, simpleReply, startHostileNbdServer, type Behaviour, type HostileServerOptions } from '../support/hostile-nbd-server.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';
import { withinMs } from '../support/waits.js';

const MiB = 1024 * 1024;
const volumeSizeBytes = 64 * MiB;
const timeoutSeconds = 2;

type JobKind = 'restore' | 'verify' | 'seed';

interface HostilePeer {
  name: string;
  job: JobKind;
  server: Omit<HostileServerOptions, 'sizeBytes' | 'behaviour'> & { behaviour: Behaviour };
  /** What the job's error (or the refusal) must say. */
  error: RegExp;
  /** The peer fails before the job can start: a refusal of the request is as good as a failed job. */
  mayBeRefused?: boolean;
}

/** A READ answered with data 4 KiB before the request: Buffer.copy threw in a socket handler here once. */
const offsetDataBefore: Behaviour = (request, peer) => {
  if (request.type !== CommandType.READ) return peer.honest(request);
  peer.send(chunk(request.cookie, ReplyFlag.DONE, ChunkType.OFFSET_DATA, offsetDataPayload(Math.max(0, request.offsetBytes - 4096), Buffer.alloc(request.lengthBytes))));
};

const peers: HostilePeer[] = [
  { name: 'a seed source answering a READ with a bad OFFSET_DATA', job: 'seed', server: { behaviour: offsetDataBefore }, error: /broke the NBD protocol \(STRUCTURED_REPLY_NOT_NEGOTIATED\)/ },
  { name: 'a restore target answering a READ with a bad OFFSET_DATA', job: 'restore', server: { behaviour: offsetDataBefore }, error: /broke the NBD protocol \(STRUCTURED_REPLY_NOT_NEGOTIATED\)/ },
  {
    name: 'a verification peer that answers 40 READs, then sends a bad OFFSET_DATA',
    job: 'verify',
    server: { behaviour: (request, peer) => (peer.requestCount <= 40 ? peer.honest(request) : offsetDataBefore(request, peer)) },
    error: /broke the NBD protocol \(STRUCTURED_REPLY_NOT_NEGOTIATED\)/,
  },
  {
    name: 'a verification peer replying with a cookie never sent',
    job: 'verify',
    server: { behaviour: (request, peer) => peer.send(simpleReply(request.cookie ^ 0xffffn, 0, Buffer.alloc(request.type === CommandType.READ ? request.lengthBytes : 0))) },
    error: /broke the NBD protocol \(UNKNOWN_COOKIE\)/,
  },
  { name: 'a seed source sending garbage', job: 'seed', server: { behaviour: (_request, peer) => peer.send(Buffer.from('\0garbage, not a reply'.repeat(10))) }, error: /broke the NBD protocol \(BAD_REPLY_MAGIC\)/ },
  {
    name: 'a restore target closing the connection in the middle of a reply',
    job: 'restore',
    server: {
      behaviour: (request, peer) => {
        peer.send(simpleReply(request.cookie, 0, Buffer.alloc(Math.floor(request.lengthBytes / 2))));
        peer.close();
      },
    },
    error: /closed the connection/,
  },
  { name: 'a verification peer that goes silent once attached', job: 'verify', server: { behaviour: () => undefined }, error: new RegExp(`did not answer NBD_CMD_READ \\d+\\+\\d+ \\(nor any of the \\d+ requests in flight\\) within ${timeoutSeconds * 1000} ms`) },
  { name: 'a seed source that goes silent once attached', job: 'seed', server: { behaviour: () => undefined }, error: /did not answer NBD_CMD_READ/ },
  {
    name: 'a restore target that accepts the connection and never greets',
    job: 'restore',
    server: { behaviour: () => undefined, silentHandshake: true },
    error: new RegExp(`did not connect and negotiate within ${timeoutSeconds * 1000} ms`),
    mayBeRefused: true,
  },
];

interface Outcome {
  state: string;
  error: string;
}

function jobRequest(kind: JobKind, uri: string): { route: string; body: Record<string, unknown> } {
  if (kind === 'restore') return { route: '/api/v1/restores?wait=true', body: { volume: 'vol0', snapshot: 'base', target: uri } };
  if (kind === 'verify') return { route: '/api/v1/verify?wait=true', body: { volume: 'vol0', against: uri } };
  return { route: '/api/v1/seeds?wait=true', body: { volume: 'vol0', source: uri } };
}

async function runJob(appliance: Appliance, kind: JobKind, uri: string): Promise<Outcome> {
  const { route, body } = jobRequest(kind, uri);
  const response = await withinMs(apiRequest(appliance, 'POST', route, body), 120_000, `${kind} against ${uri}`);
  if (response.status >= 400) return { state: `refused (${response.status})`, error: (response.json.error as { message?: string } | undefined)?.message ?? '' };
  return { state: String(response.json.state), error: String(response.json.error) };
}

async function qemuIo(appliance: Appliance, commands: string[]): Promise<{ code: number; output: string }> {
  const result = await run('qemu-io', ['-f', 'raw', appliance.uri(), ...commands.flatMap((command) => ['-c', command])]);
  return { code: result.code, output: `${result.stdout}${result.stderr}` };
}

t.test('hostile NBD peers fail their jobs; the appliance lives and serves', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const appliance = await startAppliance(t, {
    dataDirectory: temporaryDirectory(t),
    volumeSize: '64M',
    extraArguments: ['--nbd-connect-timeout', `${timeoutSeconds}s`, '--nbd-request-timeout', `${timeoutSeconds}s`],
  });
  const written = await qemuIo(appliance, ['write -P 0x11 0 4M', 'write -P 0x22 32M 1M']);
  t.equal(written.code, 0, written.output);
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'base' })).status, 201);

  for (const hostile of peers) {
    await t.test(hostile.name, async (t) => {
      const server = await startHostileNbdServer(t, { sizeBytes: volumeSizeBytes, ...hostile.server });
      const outcome = await runJob(appliance, hostile.job, server.uri());
      const acceptable = hostile.mayBeRefused === true ? /^(failed|refused \(400\))$/ : /^failed$/;
      t.match(outcome.state, acceptable, `the ${hostile.job} ${outcome.state}: ${outcome.error}`);
      t.match(outcome.error, hostile.error, 'its message says what the peer did');
      t.ok(server.connectionCount >= 1, 'the appliance did reach the peer');

      t.equal(appliance.child.exitCode, null, 'the appliance is still running');
      const read = await qemuIo(appliance, ['read -P 0x11 0 4M', 'read -P 0x22 32M 1M']);
      t.equal(read.code, 0, `qemu-io still reads the volume: ${read.output}`);
      t.notMatch(read.output, /Pattern verification failed/, 'and finds what was written');
      const jobs = (await apiRequest(appliance, 'GET', '/api/v1/jobs')).json.jobs as Array<{ state: string }>;
      t.same(jobs.filter((job) => job.state === 'running'), [], 'no job is left running');
    });
  }

  // The slots are free and the job machinery works: a verification against an honest peer.
  const honest = await startHostileNbdServer(t, { sizeBytes: volumeSizeBytes, behaviour: (request, peer) => peer.honest(request) });
  const verified = await runJob(appliance, 'verify', honest.uri());
  t.equal(verified.state, 'done', `a verification against an honest peer runs to the end: ${verified.error}`);
  t.equal(appliance.child.exitCode, null);
  const logged = appliance.output.join('\n');
  t.notMatch(logged, /uncaught|unhandled/i, 'nothing went unhandled in the appliance');
});
