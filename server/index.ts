// The server layer's public surface: the NBD server, its export table and its limits.

export { NbdServer, parseListenAddress, type ListenAddress, type NbdServerOptions } from './listener.js';
export { ExportTable, type ExportEntry } from './exports.js';
export { serverLimits } from './limits.js';
export { silentLogger, type Logger } from './logger.js';
export type { Connection } from './connection.js';
