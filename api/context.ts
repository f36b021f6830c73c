// What the HTTP API works with: the running appliance, and facts about this process.

import type { TokenStore } from '../appliance/api-tokens.js';
import type { Appliance } from '../appliance/appliance.js';

export interface AppContext {
  appliance: Appliance;
  startedAtMs: number;
  version: string;
  /** The API's tokens and their roles (data/api-tokens.json). */
  tokens: TokenStore;
}
