// Who may use an export: its access policy (TLS-only or not, and an allowlist of client
// addresses, CIDR blocks, client-certificate names and the unix socket), parsed once at the edge
// and checked in negotiation.ts on INFO, GO, EXPORT_NAME and the meta-context options. The
// policy travels with the export table entry, so the server never asks storage who may connect.
// The user-facing rules are in docs/tls.md.

import net from 'node:net';

/** One allowlist entry, as a user writes it: "10.0.0.0/8", "192.0.2.7", "::1", "cn:alice", "unix". */
export type AccessRuleText = string;

/** What the server knows of a client when it chooses an export. */
export interface ClientIdentity {
  /** The peer's IP address (IPv4-mapped IPv6 turned into IPv4); null on a unix socket. */
  address: string | null;
  /** The CN of a client certificate that verified against the CA; null without one. */
  certificateName: string | null;
}

export interface AccessPolicy {
  /** Refuse the export until the client has started TLS (the spec's "TLS-only export"). */
  readonly tlsOnly: boolean;
  /** The allowlist as given (normalised); empty means every client. */
  readonly allow: readonly AccessRuleText[];
  readonly addresses: net.BlockList;
  readonly certificateNames: ReadonlySet<string>;
  readonly unixSocket: boolean;
  /**
   * A policy the client must pass as well: a view's or clone's volume's, which the export
   * narrows (narrowedPolicy). Null for a policy of its own.
   */
  readonly within: AccessPolicy | null;
}

/** Limits on what a user may configure, so a policy stays cheap to check. */
export const accessLimits = {
  ruleCountMax: 256,
  certificateNameBytesMax: 64,
} as const;

export const openAccessPolicy: AccessPolicy = compiledPolicy(false, [], new net.BlockList(), new Set(), false, null);

/** A policy from user input; throws Error with a message for the user on a bad rule. */
export function parseAccessPolicy(rules: readonly string[], options: { tlsOnly?: boolean } = {}): AccessPolicy {
  if (rules.length > accessLimits.ruleCountMax) throw new Error(`at most ${accessLimits.ruleCountMax} allow rules per export`);
  const addresses = new net.BlockList();
  const certificateNames = new Set<string>();
  let unixSocket = false;
  const normalised: string[] = [];
  for (const rule of rules) {
    const text = rule.trim();
    if (text === 'unix') {
      unixSocket = true;
      normalised.push('unix');
    } else if (/^cn:/i.test(text)) {
      const name = text.slice(3);
      const problem = certificateNameProblem(name);
      if (problem !== null) throw new Error(`allow rule "${rule}": ${problem}`);
      certificateNames.add(name);
      normalised.push(`cn:${name}`);
    } else {
      normalised.push(addAddressRule(addresses, text, rule));
    }
  }
  return compiledPolicy(options.tlsOnly ?? false, normalised, addresses, certificateNames, unixSocket, null);
}

/**
 * `own` narrowing `base`: a client must pass both allowlists, and TLS is demanded if either
 * demands it. So an export of a volume's past can only ever be used by fewer clients than the
 * volume itself.
 */
export function narrowedPolicy(base: AccessPolicy, own: AccessPolicy): AccessPolicy {
  if (own.within !== null) throw new TypeError('narrowedPolicy() of a policy that already narrows another');
  return compiledPolicy(own.tlsOnly || base.tlsOnly, [...own.allow], own.addresses, own.certificateNames, own.unixSocket, base);
}

/** The rules to show for a policy: its own, or those of the policy it narrows when it has none. */
export function shownAllowRules(policy: AccessPolicy): readonly AccessRuleText[] {
  return policy.allow.length > 0 || policy.within === null ? policy.allow : shownAllowRules(policy.within);
}

/** Whether the allowlists let this client in (TLS-only is checked apart: it has its own reply). */
export function accessAllows(policy: AccessPolicy, client: ClientIdentity): boolean {
  if (policy.within !== null && !accessAllows(policy.within, client)) return false;
  if (policy.allow.length === 0) return true;
  if (client.address === null) {
    if (policy.unixSocket) return true;
  } else if (policy.addresses.check(client.address, net.isIPv6(client.address) ? 'ipv6' : 'ipv4')) {
    return true;
  }
  return client.certificateName !== null && policy.certificateNames.has(client.certificateName);
}

/** The peer address as rules compare it: "::ffff:192.0.2.7" becomes "192.0.2.7". */
export function normaliseAddress(address: string | undefined): string | null {
  if (address === undefined || address === '') return null;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped === null ? address : mapped[1]!;
}

/** Why a client-certificate name is unusable in a rule, or null. */
export function certificateNameProblem(name: string): string | null {
  if (name.length === 0) return 'the certificate name is empty';
  if (Buffer.byteLength(name) > accessLimits.certificateNameBytesMax) return `a certificate name has at most ${accessLimits.certificateNameBytesMax} bytes`;
  if (!/^[A-Za-z0-9][A-Za-z0-9 ._@-]*$/.test(name)) return 'a certificate name has letters, digits, spaces, ".", "_", "@" and "-", starting with a letter or digit';
  return null;
}

function addAddressRule(addresses: net.BlockList, text: string, rule: string): string {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const family = net.isIP(address);
  if (family === 0) throw new Error(`allow rule "${rule}" is not an IP address, a CIDR block (10.0.0.0/8), cn:NAME or unix`);
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (slash < 0) {
    addresses.addAddress(address, type);
    return address;
  }
  const prefixText = text.slice(slash + 1);
  const prefixBits = Number(prefixText);
  const prefixBitsMax = family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(prefixText) || prefixBits > prefixBitsMax) throw new Error(`allow rule "${rule}": the prefix length must be 0 to ${prefixBitsMax}`);
  addresses.addSubnet(address, prefixBits, type);
  return `${address}/${prefixBits}`;
}

function compiledPolicy(
  tlsOnly: boolean,
  allow: string[],
  addresses: net.BlockList,
  certificateNames: ReadonlySet<string>,
  unixSocket: boolean,
  within: AccessPolicy | null,
): AccessPolicy {
  return Object.freeze({ tlsOnly, allow: Object.freeze(allow), addresses, certificateNames, unixSocket, within });
}
