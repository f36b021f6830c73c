// Rough CRC-32C throughput on 4 KiB records and on 1 MiB buffers, printed, never asserted.
// Run `npm run bench -w cdp-native`; CDP_NATIVE_CRC32C=table measures the portable tables.
import { crc32c, crc32cImplementation } from '../index.js';

const DURATION_MS = 1000;

function measure(lengthBytes) {
  const buffer = Buffer.alloc(lengthBytes, 0xa5);
  let calls = 0;
  let sink = 0;
  const startNs = process.hrtime.bigint();
  const stopNs = startNs + BigInt(DURATION_MS) * 1_000_000n;
  let nowNs = startNs;
  while (nowNs < stopNs) {
    for (let i = 0; i < 1000; i++) sink = (sink + crc32c(buffer)) >>> 0;
    calls += 1000;
    nowNs = process.hrtime.bigint();
  }
  const elapsedS = Number(nowNs - startNs) / 1e9;
  const gigabytesPerS = (calls * lengthBytes) / elapsedS / 1e9;
  const callsPerS = calls / elapsedS;
  console.log(
    `${crc32cImplementation} ${lengthBytes} B: ${gigabytesPerS.toFixed(2)} GB/s, ` +
      `${(callsPerS / 1e6).toFixed(2)} M calls/s (sum of results 0x${sink.toString(16)})`,
  );
}

measure(4096);
measure(1 << 20);
