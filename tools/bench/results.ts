// The record of one benchmark run: every measurement with its context. run.ts fills it, report.ts
// renders it, and it is saved whole as JSON in the work folder.

import type { FioMeasurement } from './fio-suite.js';
import type { MachineDescription, ToolVersions } from './machine.js';
import type { BenchOptions, CacheDropMethod, PrefillMode, ServerName, TestId } from './options.js';
import type { StopReport } from './servers.js';

export interface Sample {
  mode: PrefillMode;
  /** 1-based. */
  round: number;
  testId: TestId;
  server: ServerName;
  measurement: FioMeasurement;
  /** Bytes of the server's live image in the page cache when the test started. */
  imageResidentBytesAtStart: number | undefined;
  /** How long the servers took to go idle after the test. */
  settleSeconds: number;
  /** Share of all cores busy right after the test while our servers were idle (0..1). */
  machineBusyFractionAfter: number;
  /** Dirty and under-writeback page cache of the machine at that moment (/proc/meminfo). */
  dirtyBytesAfter: number;
  loadAverageOneMinuteAtStart: number;
  startedAt: string;
}

export interface ServerModeReport {
  server: ServerName;
  prefillSeconds: number;
  /** Highest VmHWM seen for the server's process during the mode. */
  peakRssBytes: number | undefined;
  /** Disk space of the server's storage folder after the mode (cdp-nbd: image plus write log). */
  storageBytesAtEnd: number;
  stop: StopReport | undefined;
}

export interface ModeResult {
  mode: PrefillMode;
  samples: Sample[];
  servers: ServerModeReport[];
  durationSeconds: number;
}

export interface RunRecord {
  startedAt: string;
  durationSeconds: number;
  /** The command line that produced the record, as a user would type it. */
  command: string;
  options: BenchOptions;
  /** The work folder, relative to the repository root when inside it. */
  workDirectoryShown: string;
  machine: MachineDescription;
  workFreeBytesAtStart: number;
  versions: ToolVersions;
  /** Each server's command line with repository paths made relative. */
  serverCommands: Partial<Record<ServerName, string>>;
  fioCommonArguments: string[];
  fioTestArguments: Partial<Record<TestId, string[]>>;
  cacheDropMethod: CacheDropMethod;
  loadAverageAtStart: [number, number, number];
  loadAverageAtEnd: [number, number, number];
  modes: ModeResult[];
  notes: string[];
}
