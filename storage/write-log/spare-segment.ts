// The next log segment, created and allocated in the background while the current one fills, so
// that switching segments costs nothing on the write path and a full disk shows up before any
// write depends on it (docs/decisions/0002-segment-numbers.md).

import { storageErrorFromSystem, type StorageError } from '../errors.js';
import type { OpenSegment } from './segment.js';

export class SpareSegment {
  readonly ready: Promise<void>;
  readonly attemptedAtMs = performance.now();
  segment: OpenSegment | null = null;
  error: StorageError | null = null;

  constructor(create: () => Promise<OpenSegment>) {
    this.ready = create().then(
      (segment) => {
        this.segment = segment;
      },
      (error: unknown) => {
        this.error = storageErrorFromSystem(error, 'preparing the next write-log segment');
      },
    );
  }
}
