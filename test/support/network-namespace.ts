// A network namespace joined to this one by a veth pair, for tests of peers that vanish: a
// process started inside it reaches the host side's address, and cutOff() takes the inside link
// down, so its packets stop with no FIN and no RST, as when a host loses power. Needs root and
// iproute2's `ip`; everything is removed at teardown (deleting the namespace deletes the pair).

import { run } from './tools.js';

interface Teardown {
  teardown(callback: () => void | Promise<void>): void;
}

export interface NetworkNamespace {
  readonly name: string;
  /** This side's address (listen here); the namespace reaches it. */
  readonly hostAddress: string;
  /** The namespace side's address. */
  readonly peerAddress: string;
  /** The command line that runs `command` inside the namespace. */
  exec(command: string[]): string[];
  /** Take the namespace's link down: its packets stop, nothing tells the other side. */
  cutOff(): Promise<void>;
}

async function ip(args: string[]): Promise<void> {
  const result = await run('ip', args, { timeoutMs: 30_000 });
  if (result.code !== 0) throw new Error(`ip ${args.join(' ')}: ${result.stderr.trim()}`);
}

/** Names unique to this process (interface names have at most 15 characters). */
export async function makeNetworkNamespace(t: Teardown): Promise<NetworkNamespace> {
  const tag = String(process.pid);
  const name = `cdpt${tag}`;
  const hostLink = `cdph${tag}`;
  const peerLink = `cdpn${tag}`;
  const octet = process.pid % 250;
  const hostAddress = `10.231.${octet}.1`;
  const peerAddress = `10.231.${octet}.2`;
  t.teardown(async () => {
    await run('ip', ['netns', 'delete', name]);
    await run('ip', ['link', 'delete', hostLink]); // gone with the namespace unless that failed half way
  });
  await ip(['netns', 'add', name]);
  await ip(['link', 'add', hostLink, 'type', 'veth', 'peer', 'name', peerLink, 'netns', name]);
  await ip(['addr', 'add', `${hostAddress}/30`, 'dev', hostLink]);
  await ip(['link', 'set', hostLink, 'up']);
  await ip(['-n', name, 'addr', 'add', `${peerAddress}/30`, 'dev', peerLink]);
  await ip(['-n', name, 'link', 'set', peerLink, 'up']);
  await ip(['-n', name, 'link', 'set', 'lo', 'up']);
  return {
    name,
    hostAddress,
    peerAddress,
    exec: (command) => ['ip', 'netns', 'exec', name, ...command],
    cutOff: () => ip(['-n', name, 'link', 'set', peerLink, 'down']),
  };
}
