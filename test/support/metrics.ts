// The appliance's /metrics as numbers, and its process's resident memory, for tests that bound
// what the appliance holds.

import fs from 'node:fs';
import type { Appliance } from './appliance.js';

/** Every sample of GET /metrics, keyed by name and labels as written: `name` or `name{reason="x"}`. */
export async function readMetrics(appliance: Appliance): Promise<Map<string, number>> {
  const response = await fetch(`${appliance.httpBase}/metrics`, { headers: { authorization: `Bearer ${appliance.token}` } });
  if (response.status !== 200) throw new Error(`GET /metrics answered ${response.status}`);
  const samples = new Map<string, number>();
  for (const line of (await response.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    samples.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return samples;
}

/** One sample of the metrics; throws naming it when it is missing. */
export function sample(metrics: Map<string, number>, key: string): number {
  const value = metrics.get(key);
  if (value === undefined) throw new Error(`no metric ${key}`);
  return value;
}

/** The process's resident set size (VmRSS of /proc/PID/status), in bytes. */
export function residentBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (match === null) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]) * 1024;
}
