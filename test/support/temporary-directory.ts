// Temporary folders for tests, removed when the test ends.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

interface Teardown {
  teardown(callback: () => void | Promise<void>): void;
}

export function temporaryDirectory(t: Teardown, prefix = 'cdp-nbd-test-'): string {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(directory, { recursive: true, force: true }));
  return directory;
}
