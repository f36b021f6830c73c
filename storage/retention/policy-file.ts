// retention.json: a volume's retention policy on disk (docs/formats/retention.md), and the one
// place that changes it. Every write replaces the whole file atomically and durably (written to a
// temporary file, synced, renamed, directory synced), so a crash leaves the old policy or the new
// one, never a mix; the policy in memory changes only once the new one is durable.

import { StorageError } from '../errors.js';
import { readWholeFile, writeFileAtomic, type FileSystem } from '../io/file-system.js';
import { calendarTierPeriods, retentionFormatVersion, validateRetentionPolicy, type RetentionPolicy, type RetentionTier, type TierEvery } from './policy.js';

/** Told the new policy once it is durable. */
export type RetentionPolicyListener = (policy: RetentionPolicy) => void;

export class RetentionPolicyFile {
  private current: RetentionPolicy;
  /** Writes of the file, one at a time (they share its temporary file). */
  private writing: Promise<void> = Promise.resolve();
  private readonly listeners = new Set<RetentionPolicyListener>();

  private constructor(
    private readonly fileSystem: FileSystem,
    readonly path: string,
    policy: RetentionPolicy,
  ) {
    this.current = frozenCopy(policy);
  }

  /** Write a new volume's policy (EINVAL, with the reason in words, when it is not sound). */
  static async create(fileSystem: FileSystem, path: string, policy: RetentionPolicy): Promise<void> {
    requireSoundPolicy(policy);
    await writeRetentionFile(fileSystem, path, policy);
  }

  /**
   * Read the policy; a volume made before policies existed has no file, and gets `defaults()`
   * written now.
   */
  static async open(fileSystem: FileSystem, path: string, defaults: () => RetentionPolicy): Promise<RetentionPolicyFile> {
    if (!fileSystem.exists(path)) {
      const policy = defaults();
      await RetentionPolicyFile.create(fileSystem, path, policy);
      return new RetentionPolicyFile(fileSystem, path, policy);
    }
    return new RetentionPolicyFile(fileSystem, path, readRetentionFile(fileSystem, path));
  }

  get policy(): RetentionPolicy {
    return this.current;
  }

  /** Validate (EINVAL with the reason in words), write durably, then tell the listeners. */
  async set(policy: RetentionPolicy): Promise<void> {
    requireSoundPolicy(policy);
    const copy = frozenCopy(policy);
    const written = this.writing.then(async () => {
      await writeRetentionFile(this.fileSystem, this.path, copy);
      this.current = copy;
      for (const listener of this.listeners) listener(copy);
    });
    this.writing = written.catch(() => undefined);
    return written;
  }

  /** Call `listener` after every change; returns the function that stops it. */
  onChanged(listener: RetentionPolicyListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

function requireSoundPolicy(policy: RetentionPolicy): void {
  const problem = validateRetentionPolicy(policy);
  if (problem !== null) throw new StorageError('EINVAL', `retention policy: ${problem}`);
}

interface RetentionFileContent {
  formatVersion: number;
  policy: RetentionPolicy;
}

async function writeRetentionFile(fileSystem: FileSystem, path: string, policy: RetentionPolicy): Promise<void> {
  const content: RetentionFileContent = { formatVersion: retentionFormatVersion, policy };
  await writeFileAtomic(fileSystem, path, Buffer.from(`${JSON.stringify(content, null, 2)}\n`));
}

function readRetentionFile(fileSystem: FileSystem, path: string): RetentionPolicy {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readWholeFile(fileSystem, path).toString('utf8'));
  } catch (error) {
    throw new StorageError('ECORRUPT', `${path}: not readable JSON`, { cause: error });
  }
  const content = (parsed ?? {}) as Partial<RetentionFileContent>;
  if (content.formatVersion !== retentionFormatVersion) {
    throw new StorageError('ECORRUPT', `${path}: unsupported retention format version ${String(content.formatVersion)}`);
  }
  const policy = retentionPolicyOf(content.policy);
  const problem = typeof policy === 'string' ? policy : validateRetentionPolicy(policy);
  if (problem !== null) throw new StorageError('ECORRUPT', `${path}: ${problem}`);
  return policy as RetentionPolicy;
}

/** A policy with exactly the fields of RetentionPolicy, or what is wrong with its shape. */
function retentionPolicyOf(value: unknown): RetentionPolicy | string {
  const candidate = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  for (const key of ['keepAllSeconds', 'maxHistoryBytes', 'requiredWindowSeconds'] as const) {
    if (typeof candidate[key] !== 'number') return `policy.${key} is missing or not a number`;
  }
  if (!Array.isArray(candidate['tiers'])) return 'policy.tiers is missing or not a list';
  const tiers: RetentionTier[] = [];
  for (const tier of candidate['tiers'] as unknown[]) {
    const { every, keepSeconds } = (tier ?? {}) as Record<string, unknown>;
    const everyIsKnown = typeof every === 'number' || (calendarTierPeriods as readonly unknown[]).includes(every);
    if (!everyIsKnown || typeof keepSeconds !== 'number') return 'policy.tiers holds a tier without a known period or keepSeconds';
    tiers.push({ every: every as TierEvery, keepSeconds });
  }
  const reserve = (candidate['reserve'] ?? {}) as Record<string, unknown>;
  const reserveOf = typeof reserve['percent'] === 'number' ? { percent: reserve['percent'] } : typeof reserve['bytes'] === 'number' ? { bytes: reserve['bytes'] } : null;
  if (reserveOf === null) return 'policy.reserve is neither {percent} nor {bytes}';
  return {
    keepAllSeconds: candidate['keepAllSeconds'] as number,
    tiers,
    maxHistoryBytes: candidate['maxHistoryBytes'] as number,
    reserve: reserveOf,
    requiredWindowSeconds: candidate['requiredWindowSeconds'] as number,
  };
}

function frozenCopy(policy: RetentionPolicy): RetentionPolicy {
  const reserve = Object.freeze('percent' in policy.reserve ? { percent: policy.reserve.percent } : { bytes: policy.reserve.bytes });
  return Object.freeze({
    keepAllSeconds: policy.keepAllSeconds,
    tiers: Object.freeze(policy.tiers.map((tier) => Object.freeze({ every: tier.every, keepSeconds: tier.keepSeconds }))) as RetentionTier[],
    maxHistoryBytes: policy.maxHistoryBytes,
    reserve,
    requiredWindowSeconds: policy.requiredWindowSeconds,
  });
}
