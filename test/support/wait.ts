// Waiting in tests for a condition, never for a time: poll until it holds, with a generous deadline.

/** Poll `condition` until it gives a value (not undefined), or fail after the deadline saying what was awaited. */
export async function waitFor<T>(what: string, condition: () => Promise<T | undefined> | T | undefined, deadlineMs = 60_000, pollMs = 250): Promise<T> {
  const deadline = performance.now() + deadlineMs;
  for (;;) {
    const value = await condition();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`waited ${deadlineMs / 1000} s for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
