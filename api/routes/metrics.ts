// GET /metrics: Prometheus text exposition of the appliance's counters and gauges, and each
// volume's history lifecycle (bytes by part, how far back it reaches, reclaim and its cost).

import type { FastifyInstance } from 'fastify';
import type { ConnectionFigures } from '../../server/index.js';
import type { RetentionStatus, Volume } from '../../storage/index.js';
import type { AppContext } from '../context.js';

interface Metric {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  samples: Array<{ labels: Record<string, string>; value: number; suffix?: string }>;
}

function render(metrics: readonly Metric[]): string {
  const lines: string[] = [];
  for (const metric of metrics) {
    lines.push(`# HELP ${metric.name} ${metric.help}`, `# TYPE ${metric.name} ${metric.type}`);
    for (const sample of metric.samples) {
      const labels = Object.entries(sample.labels).map(([key, value]) => `${key}="${value.replace(/["\\\n]/g, (character) => (character === '\n' ? '\\n' : `\\${character}`))}"`);
      lines.push(`${metric.name}${sample.suffix ?? ''}${labels.length > 0 ? `{${labels.join(',')}}` : ''} ${sample.value}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** TLS handshakes and allowlist refusals since start (server/connection.ts counts them). */
function securityMetrics(counts: { tlsStarted: number; tlsFailed: number; accessRefused: number }): Metric[] {
  return [
    {
      name: 'cdp_nbd_tls_handshakes_total',
      help: 'NBD STARTTLS handshakes, by result.',
      type: 'counter',
      samples: [
        { labels: { result: 'ok' }, value: counts.tlsStarted },
        { labels: { result: 'failed' }, value: counts.tlsFailed },
      ],
    },
    { name: 'cdp_nbd_access_refusals_total', help: 'NBD clients an export allowlist turned away.', type: 'counter', samples: [{ labels: {}, value: counts.accessRefused }] },
  ];
}

/** The NBD server's connection limits at work (docs/limits.md): memory held, clients refused and dropped. */
function connectionLimitMetrics(figures: ConnectionFigures): Metric[] {
  const gauge = (name: string, help: string, value: number): Metric => ({ name, help, type: 'gauge', samples: [{ labels: {}, value }] });
  const byReason = (name: string, help: string, counts: Record<string, number>): Metric => ({
    name,
    help,
    type: 'counter',
    samples: Object.entries(counts).map(([reason, value]) => ({ labels: { reason }, value })),
  });
  return [
    gauge('cdp_nbd_connections_negotiating', 'NBD connections that have not chosen an export yet.', figures.negotiatingCount),
    gauge('cdp_nbd_connections_waiting_for_memory', 'NBD connections not read until the memory budget has room for their next request.', figures.waitingForMemoryCount),
    gauge('cdp_nbd_connection_memory_bytes', 'Bytes NBD connections hold: requests being received, in flight, replies queued.', figures.heldBytes),
    gauge('cdp_nbd_connection_memory_shared_bytes', "Of those, the bytes beyond the connections' floors, which the budget bounds.", figures.sharedBytes),
    gauge('cdp_nbd_connection_memory_budget_bytes', 'The memory budget shared by NBD connections (serve --memory-budget).', figures.memoryBudgetBytes),
    gauge('cdp_nbd_connection_memory_bound_bytes', 'The most NBD connections can hold: the budget, a floor per connection and a read per socket.', figures.memoryBoundBytes),
    byReason('cdp_nbd_connections_refused_total', 'NBD connections closed at accept, by cap: serverFull, perAddress, negotiating.', figures.refusedCounts),
    byReason('cdp_nbd_connections_dropped_total', 'NBD connections the server ended, by reason: negotiationTimeout, evicted, writeStall, receiveStall, deadPeer.', figures.droppedCounts),
  ];
}

/** The history lifecycle of each volume that keeps history (storage/retention/lifecycle.ts). */
function historyMetrics(volumes: readonly Volume[]): Metric[] {
  const statuses = volumes.flatMap((volume) => (volume.history === null ? [] : [{ volume: volume.config.name, status: volume.history.lifecycle.status() }]));
  const fromStatus = (name: string, help: string, type: Metric['type'], value: (status: RetentionStatus) => number): Metric => ({
    name,
    help,
    type,
    samples: statuses.map(({ volume, status }) => ({ labels: { volume }, value: value(status) })),
  });
  const parts = { log: 'logBytes', packs: 'packBytes', base: 'baseBytes', index: 'indexBytes' } as const;
  return [
    {
      name: 'cdp_history_bytes',
      help: 'Bytes the history takes on disk, by part: log segments, interval packs, the base image, the index.',
      type: 'gauge',
      samples: statuses.flatMap(({ volume, status }) => Object.entries(parts).map(([part, field]) => ({ labels: { volume, part }, value: status.historyBytes[field] }))),
    },
    fromStatus('cdp_history_max_bytes', 'The cap on the bytes history takes (the retention policy).', 'gauge', (status) => status.maxHistoryBytes),
    fromStatus('cdp_history_projected_bytes', 'What the retention policy would keep at the current write rate.', 'gauge', (status) => status.projectedHistoryBytes),
    fromStatus('cdp_history_oldest_timestamp_seconds', 'The oldest recoverable instant, in Unix seconds.', 'gauge', (status) => status.oldestRecoverableMicros / 1_000_000),
    fromStatus('cdp_protection_window_seconds', 'Seconds from the oldest recoverable instant to now.', 'gauge', (status) => status.protectionWindowSeconds),
    fromStatus('cdp_history_under_pressure', '1 while history is expired early to stay under its cap and the free-space reserve.', 'gauge', (status) => (status.underPressure ? 1 : 0)),
    fromStatus('cdp_filesystem_size_bytes', "Size of the file system holding the volume's data.", 'gauge', (status) => status.fileSystem.sizeBytes),
    fromStatus('cdp_filesystem_free_bytes', "Free bytes of the file system holding the volume's data.", 'gauge', (status) => status.fileSystem.freeBytes),
    fromStatus('cdp_filesystem_reserve_bytes', 'Free bytes the retention policy keeps on that file system.', 'gauge', (status) => status.fileSystem.reserveBytes),
    fromStatus('cdp_history_reclaimed_bytes_total', 'Bytes of history reclaimed by expiry and compaction.', 'counter', (status) => status.statistics.reclaimedBytes),
    fromStatus('cdp_history_expiry_seconds_total', 'Time spent expiring history (folding it into the base image).', 'counter', (status) => status.statistics.expirySeconds),
    fromStatus('cdp_history_expiry_operations_total', 'Expiry operations (folds) started.', 'counter', (status) => status.statistics.folds),
    fromStatus('cdp_history_compaction_seconds_total', 'Time spent compacting history (packing windows, merging intervals).', 'counter', (status) => status.statistics.compactionSeconds),
    fromStatus('cdp_history_compaction_operations_total', 'Compaction operations (packs and merges) started.', 'counter', (status) => status.statistics.packs + status.statistics.merges),
    fromStatus('cdp_history_segments_deleted_total', 'Write-log segments deleted once history no longer needed them.', 'counter', (status) => status.statistics.segmentsDeleted),
    fromStatus('cdp_history_lifecycle_failures_total', 'Lifecycle passes that failed.', 'counter', (status) => status.statistics.operationFailures),
  ];
}

export async function metricsRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  app.get('/metrics', { config: { role: 'read' }, schema: { summary: 'Prometheus metrics', tags: ['health'], produces: ['text/plain'] } }, async (_request, reply) => {
    const volumes = context.appliance.store.openVolumes();
    const perVolume = (name: string, help: string, type: Metric['type'], value: (stats: ReturnType<(typeof volumes)[number]['stats']>) => number): Metric => ({
      name,
      help,
      type,
      samples: volumes.map((volume) => ({ labels: { volume: volume.config.name }, value: value(volume.stats()) })),
    });
    const flushHistogram: Metric = { name: 'cdp_nbd_flush_seconds', help: 'Time a FLUSH takes, from request to durable.', type: 'histogram', samples: [] };
    for (const volume of volumes) {
      const histogram = volume.flushLatency();
      let cumulative = 0;
      histogram.bucketsSeconds.forEach((bound, index) => {
        cumulative += histogram.counts[index]!;
        flushHistogram.samples.push({ labels: { volume: volume.config.name, le: String(bound) }, value: cumulative, suffix: '_bucket' });
      });
      cumulative += histogram.counts[histogram.bucketsSeconds.length]!;
      flushHistogram.samples.push({ labels: { volume: volume.config.name, le: '+Inf' }, value: cumulative, suffix: '_bucket' });
      flushHistogram.samples.push({ labels: { volume: volume.config.name }, value: histogram.sumSeconds, suffix: '_sum' });
      flushHistogram.samples.push({ labels: { volume: volume.config.name }, value: cumulative, suffix: '_count' });
    }
    const maps: Metric = { name: 'cdp_nbd_delta_maps', help: 'Delta maps in the index, per level (level 0: windows cut from the log).', type: 'gauge', samples: [] };
    for (const volume of volumes) {
      (volume.history?.mapsPerLevel ?? []).forEach((count, level) => maps.samples.push({ labels: { volume: volume.config.name, level: String(level) }, value: count }));
    }
    const volumeFailedMetric = perVolume('cdp_nbd_volume_failed', '1 when the volume failed to open (not exported), or failed since and refuses writes until restart.', 'gauge', (stats) => (stats.failed === null ? 0 : 1));
    for (const failure of context.appliance.store.failedVolumes()) volumeFailedMetric.samples.push({ labels: { volume: failure.name }, value: 1 });
    const withHistory = volumes.flatMap((volume) => (volume.history === null ? [] : [{ volume: volume.config.name, cuts: volume.history.cutStatistics() }]));
    const perHistory = (name: string, help: string, type: Metric['type'], value: (cuts: (typeof withHistory)[number]['cuts']) => number): Metric => ({
      name,
      help,
      type,
      samples: withHistory.map(({ volume, cuts }) => ({ labels: { volume }, value: value(cuts) })),
    });
    const metrics: Metric[] = [
      perVolume('cdp_nbd_writes_total', 'Writes received (WRITE requests).', 'counter', (stats) => stats.writeCount),
      perVolume('cdp_nbd_write_bytes_total', 'Bytes written by WRITE requests.', 'counter', (stats) => stats.writeBytes),
      perVolume('cdp_nbd_reads_total', 'Reads served.', 'counter', (stats) => stats.readCount),
      perVolume('cdp_nbd_read_bytes_total', 'Bytes read.', 'counter', (stats) => stats.readBytes),
      perVolume('cdp_nbd_flushes_total', 'FLUSH requests.', 'counter', (stats) => stats.flushCount),
      perVolume('cdp_nbd_log_records', 'Records in the write log (the last sequence number).', 'gauge', (stats) => stats.appendedSequence),
      perVolume('cdp_nbd_log_bytes', 'Bytes of the write log on disk.', 'gauge', (stats) => stats.logBytes),
      perVolume('cdp_nbd_dirty_regions', 'Regions of the live image that may differ from the log.', 'gauge', (stats) => stats.dirtyRegionCount),
      perVolume('cdp_nbd_unapplied_bytes', 'Bytes in the write-log buffer not yet in the live image.', 'gauge', (stats) => stats.unappliedBytes),
      volumeFailedMetric,
      flushHistogram,
      maps,
      perHistory('cdp_index_tail_records', 'Records not yet cut into the delta-map index, held in memory.', 'gauge', (cuts) => cuts.tailRecordCount),
      perHistory('cdp_index_tail_records_max', 'The most records the in-memory tail holds; past it writes wait, or are refused while cuts fail.', 'gauge', (cuts) => cuts.tailRecordCountMax),
      perHistory('cdp_index_cut_failures_total', 'Cuts of the delta-map index that failed (each is tried again with backoff).', 'counter', (cuts) => cuts.cutFailuresTotal),
      perHistory('cdp_index_cuts_failed_in_a_row', 'Cuts that failed since the last one that succeeded (0: cutting works).', 'gauge', (cuts) => cuts.cutsFailedInARow),
      perHistory('cdp_index_refusing_writes', '1 while writes are refused (ENOSPC) because the tail is full and cuts fail.', 'gauge', (cuts) => (cuts.refusingWritesForIndex ? 1 : 0)),
      { name: 'cdp_nbd_connections', help: 'NBD connections open.', type: 'gauge', samples: [{ labels: {}, value: context.appliance.nbd.connectionCount }] },
      { name: 'cdp_nbd_exports', help: 'NBD exports (live volumes, views and clones).', type: 'gauge', samples: [{ labels: {}, value: context.appliance.exports.list().length }] },
      ...securityMetrics(context.appliance.nbd.securityCounts),
      ...connectionLimitMetrics(context.appliance.nbd.figures),
      ...historyMetrics(volumes),
    ];
    return reply.type('text/plain; version=0.0.4').send(render(metrics));
  });
}
