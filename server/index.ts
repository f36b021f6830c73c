// The server layer's public surface: the NBD server, its export table and its limits.

export { NbdServer, parseListenAddress, type ConnectionFigures, type ListenAddress, type NbdServerOptions } from './listener.js';
export { ExportTable, type ExportEntry } from './exports.js';
export { connectionLimitsOf, connectionMemoryBoundBytes, defaultConnectionLimits, serverLimits, type ConnectionLimits } from './limits.js';
export { accessAllows, accessLimits, narrowedPolicy, openAccessPolicy, parseAccessPolicy, shownAllowRules, type AccessPolicy, type ClientIdentity } from './access.js';
export { loadServerTls, tlsModes, tlsOff, type ServerTls, type TlsFiles, type TlsMode } from './tls.js';
export { silentLogger, type Logger } from './logger.js';
export type { AccessRefusedNotice, Connection } from './connection.js';
