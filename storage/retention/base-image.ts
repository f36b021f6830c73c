// The base image: base.img, the volume as it was at the horizon, the oldest kept instant
// (docs/decisions/0007-history-lifecycle.md). It is created at the first fold, fully allocated
// (so later folds never run out of space halfway), and changed only by folds, which write the
// newest data of what they fold and are redone after a crash (the same bytes again).

import type { FileHandle, FileSystem } from '../io/file-system.js';

export class BaseImage {
  private constructor(private readonly handle: FileHandle) {}

  /** Open the base image, creating it (allocated to the volume's size, reading as zeroes) if missing. */
  static async openOrCreate(fileSystem: FileSystem, path: string, directory: string, sizeBytes: number): Promise<BaseImage> {
    const existed = fileSystem.exists(path);
    const handle = fileSystem.open(path, { create: true });
    try {
      if (handle.sizeBytes() < sizeBytes) await handle.allocate(0, sizeBytes);
      if (!existed) {
        await handle.datasync();
        await fileSystem.syncDirectory(directory);
      }
    } catch (error) {
      handle.close();
      if (!existed) fileSystem.remove(path);
      throw error;
    }
    return new BaseImage(handle);
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    await this.handle.writev([data], offsetBytes);
  }

  zero(offsetBytes: number, lengthBytes: number): void {
    this.handle.zeroRange(offsetBytes, lengthBytes);
  }

  async sync(): Promise<void> {
    await this.handle.datasync();
  }

  close(): void {
    this.handle.close();
  }
}
