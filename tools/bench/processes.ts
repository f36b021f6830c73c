// Child processes of the benchmark: every one is tracked, so that on exit, on Ctrl-C or on a
// crash of the harness no server is left running and no socket is left behind.

import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { rmSync } from 'node:fs';

const liveChildren = new Set<ChildProcess>();
const pathsToRemoveOnExit = new Set<string>();
const signalGraceMs = 3000;
let interruptedBy: NodeJS.Signals | undefined;

/** The signal that is stopping the harness, if any: errors after it are expected, not news. */
export function interruptingSignal(): NodeJS.Signals | undefined {
  return interruptedBy;
}

export function trackChild(child: ChildProcess): ChildProcess {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  child.once('error', () => liveChildren.delete(child));
  return child;
}

/** Removed (best effort) when the harness exits, however it exits. */
export function removeOnExit(path: string): void {
  pathsToRemoveOnExit.add(path);
}

export function forgetRemoveOnExit(path: string): void {
  pathsToRemoveOnExit.delete(path);
}

export interface CommandResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, capturing its output; kills it after `timeoutMs`. */
export function runCommand(command: string, args: string[], timeoutMs: number): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = trackChild(spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (exitCode, signal) => {
      clearTimeout(timer);
      const text = (chunks: Buffer[]) => Buffer.concat(chunks).toString('utf8');
      resolve({ exitCode, signal, stdout: text(stdout), stderr: text(stderr) });
    });
  });
}

/** Like runCommand, but a non-zero exit is an error that quotes the command's stderr. */
export async function runCommandOrThrow(command: string, args: string[], timeoutMs: number): Promise<string> {
  const result = await runCommand(command, args, timeoutMs);
  if (result.exitCode !== 0) {
    const how = result.signal !== null ? `was killed by ${result.signal}` : `exited with ${result.exitCode}`;
    throw new Error(`${command} ${args.join(' ')} ${how}:\n${result.stderr.trim() || result.stdout.trim()}`);
  }
  return result.stdout;
}

/** First line of a command's output, or undefined when it cannot run (for version strings). */
export function firstOutputLine(command: string, args: string[]): string | undefined {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 10_000 });
  if (result.status !== 0) return undefined;
  const text = `${result.stdout}${result.stderr}`.trim();
  return text.split('\n')[0]?.trim();
}

export function spawnTracked(command: string, args: string[], options: SpawnOptions): ChildProcess {
  return trackChild(spawn(command, args, options));
}

export function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

function killEveryChild(signal: NodeJS.Signals): void {
  for (const child of liveChildren) {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  }
}

function removeRegisteredPaths(): void {
  for (const path of pathsToRemoveOnExit) rmSync(path, { force: true, recursive: true });
  pathsToRemoveOnExit.clear();
}

/**
 * On SIGINT/SIGTERM/SIGHUP: ask every child to stop, wait a little, kill what is left, remove
 * sockets, exit. On any exit: kill what is left synchronously.
 */
export function installCleanupHandlers(log: (line: string) => void): void {
  process.once('exit', () => {
    killEveryChild('SIGKILL');
    removeRegisteredPaths();
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      interruptedBy = signal;
      log(`\nbench: ${signal}: stopping ${liveChildren.size} child process(es) and exiting`);
      killEveryChild('SIGTERM');
      const deadline = Date.now() + signalGraceMs;
      const poll = setInterval(() => {
        if (liveChildren.size > 0 && Date.now() < deadline) return;
        clearInterval(poll);
        process.exit(signal === 'SIGINT' ? 130 : 143);
      }, 50);
    });
  }
}
