// Finding TCP peers that vanished (docs/limits.md "Dead and stuck clients"). A host that lost
// power sends no FIN: without help its connection stays open, and its export stays attached,
// forever. Keepalive probes find it while the connection is idle; TCP_USER_TIMEOUT bounds how long
// replies sent to it may stay unacknowledged, which keepalive does not cover (it does not probe
// while data is outstanding, and retransmissions alone last ~15 minutes). Node chooses only the
// idle time (libuv fixes 10 probes 1 s apart) and never sets the user timeout: both come from the
// native addon. A healthy client that is only quiet answers the probes from its kernel, so it is
// never dropped for being idle.

import type { Socket } from 'node:net';
import { setTcpKeepAlive, setTcpUserTimeout } from 'cdp-native';
import { serverLimits } from './limits.js';

export interface KeepAliveSettings {
  idleSeconds: number;
  intervalSeconds: number;
  probeCount: number;
  /** The kernel's verdict: no answer for this long and the connection ends with ETIMEDOUT. */
  userTimeoutMs: number;
}

/** Probes from half of the dead-peer timeout, spread over the rest of it (whole seconds, at least 1). */
export function keepAliveSettingsOf(deadPeerTimeoutMs: number): KeepAliveSettings {
  const totalSeconds = Math.max(2, Math.floor(deadPeerTimeoutMs / 1000));
  const idleSeconds = Math.max(1, Math.floor(totalSeconds / 2));
  const probeCount = serverLimits.keepAliveProbeCount;
  const intervalSeconds = Math.max(1, Math.floor((totalSeconds - idleSeconds) / probeCount));
  return { idleSeconds, intervalSeconds, probeCount, userTimeoutMs: totalSeconds * 1000 };
}

/**
 * Keepalive and the user timeout on an accepted TCP socket. Returns false when only Node's part
 * could be set (no descriptor, or the system refused): then the system's defaults decide, as
 * the caller should log.
 */
export function enableKeepAlive(socket: Socket, settings: KeepAliveSettings): boolean {
  socket.setKeepAlive(true, settings.idleSeconds * 1000);
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return false;
  try {
    setTcpKeepAlive(fd, settings.idleSeconds, settings.intervalSeconds, settings.probeCount);
    setTcpUserTimeout(fd, settings.userTimeoutMs);
    return true;
  } catch {
    return false;
  }
}
