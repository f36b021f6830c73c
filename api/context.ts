// What the HTTP API works with: the running appliance, and facts about this process.

import type { Appliance } from '../appliance/appliance.js';

export interface AppContext {
  appliance: Appliance;
  startedAtMs: number;
  version: string;
  /** The bearer token every route but /health requires. */
  token: string;
}
