// The last record that wrote each chunk of the volume (the `W` keys of docs/formats/delta-map.md),
// in memory as one number per chunk (8 bytes per MiB of volume at most 2^20 chunks: 8 MiB), kept
// in the database as of the checkpoint. A view reads a chunk no record after its instant wrote
// straight from the live image.

import { indexLimits } from '../limits.js';
import type { IndexedRecord } from './tail.js';
import { chunkLastWriteKey, chunkLastWriteRange, decodeChunkLastWrite, encodeSequence } from './map-keys.js';
import type { IndexBatch, MapStore } from './map-store.js';

/** The chunk size of a volume: 1 MiB, or larger so there are at most 2^20 chunks. */
export function chunkBytesFor(volumeSizeBytes: number): number {
  let chunkBytes: number = indexLimits.chunkBytesMin;
  while (Math.ceil(volumeSizeBytes / chunkBytes) > indexLimits.chunkCountMax) chunkBytes *= 2;
  return chunkBytes;
}

export class LastWriteTable {
  readonly chunkBytes: number;
  private readonly byChunk: Float64Array;
  /** Chunks written since the last cut: their keys go into the next cut's batch. */
  private changed = new Set<number>();

  constructor(volumeSizeBytes: number) {
    this.chunkBytes = chunkBytesFor(volumeSizeBytes);
    this.byChunk = new Float64Array(Math.ceil(volumeSizeBytes / this.chunkBytes));
  }

  async load(store: MapStore): Promise<void> {
    for await (const [key, value] of store.db.iterator(chunkLastWriteRange)) {
      const { chunk, sequence } = decodeChunkLastWrite(key, value);
      if (chunk < this.byChunk.length) this.byChunk[chunk] = sequence;
    }
  }

  note(record: IndexedRecord): void {
    if (record.change !== 'data' && record.change !== 'zeroes') return;
    const firstChunk = Math.floor(record.offsetBytes / this.chunkBytes);
    const lastChunk = Math.floor((record.offsetBytes + record.lengthBytes - 1) / this.chunkBytes);
    for (let chunk = firstChunk; chunk <= lastChunk; chunk++) {
      this.byChunk[chunk] = record.sequence;
      this.changed.add(chunk);
    }
  }

  /** The newest record that wrote the chunk holding offsetBytes (0: none yet). */
  sequenceAt(offsetBytes: number): number {
    return this.byChunk[Math.floor(offsetBytes / this.chunkBytes)] ?? 0;
  }

  /**
   * Add the changed chunks' keys to a cut's batch. Returns a function that puts them back as
   * changed if the batch fails (the next cut writes them then).
   */
  takeChanged(batch: IndexBatch): () => void {
    const changed = this.changed;
    this.changed = new Set();
    for (const chunk of changed) batch.push({ type: 'put', key: chunkLastWriteKey(chunk), value: encodeSequence(this.byChunk[chunk]!) });
    return () => {
      for (const chunk of changed) this.changed.add(chunk);
    };
  }
}
