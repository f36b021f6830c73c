// The spec's rules for strings (section "Conventions"): UTF-8, no NUL, at
// most 4096 bytes. Names (exports, metadata contexts, queries) are checked
// strictly because they are identifiers a peer will look up. Human text
// (error messages, descriptions) is written truncated and cleaned rather
// than rejected, and read leniently, because refusing a reply over a
// cosmetic message would turn a readable error into a dropped connection.
import { isUtf8 } from 'node:buffer';
import { ProtocolLimit } from './constants.js';
import { ProtocolError } from './errors.js';

/** Decodes bytes [start, end) of `buffer` as a protocol name, or says why not. */
export function decodeName(buffer: Buffer, startBytes: number, endBytes: number): string | ProtocolError {
  const lengthBytes = endBytes - startBytes;
  if (lengthBytes > ProtocolLimit.STRING_MAX_BYTES) {
    return new ProtocolError('STRING_TOO_LONG', `string of ${lengthBytes} bytes exceeds ${ProtocolLimit.STRING_MAX_BYTES}`);
  }
  const bytes = buffer.subarray(startBytes, endBytes);
  if (bytes.includes(0)) return new ProtocolError('STRING_HAS_NUL', 'string contains a NUL byte');
  if (!isUtf8(bytes)) return new ProtocolError('STRING_NOT_UTF8', 'string is not valid UTF-8');
  return bytes.toString('utf8');
}

/** Decodes human text; invalid sequences become U+FFFD instead of failing. */
export function decodeText(buffer: Buffer, startBytes: number, endBytes: number): string {
  return buffer.toString('utf8', startBytes, endBytes);
}

/** Encodes a name, throwing TypeError if it breaks the string rules. */
export function encodeName(name: string, what: string): Buffer {
  if (typeof name !== 'string') throw new TypeError(`${what} must be a string`);
  if (name.includes('\0')) throw new TypeError(`${what} must not contain NUL`);
  const bytes = Buffer.from(name, 'utf8');
  if (bytes.length > ProtocolLimit.STRING_MAX_BYTES) {
    throw new TypeError(`${what} is ${bytes.length} bytes; the limit is ${ProtocolLimit.STRING_MAX_BYTES}`);
  }
  return bytes;
}

/**
 * Encodes human text for the wire: NULs removed, then cut to at most
 * `maximumBytes` on a character boundary so the result stays valid UTF-8.
 */
export function encodeText(text: string, maximumBytes: number = ProtocolLimit.STRING_MAX_BYTES): Buffer {
  const bytes = Buffer.from(text.replaceAll('\0', ''), 'utf8');
  if (bytes.length <= maximumBytes) return bytes;
  let endBytes = maximumBytes;
  // Step back over continuation bytes (10xxxxxx) to the start of the
  // character that straddles the limit, and cut before it.
  while (endBytes > 0 && ((bytes[endBytes] as number) & 0xc0) === 0x80) endBytes--;
  return bytes.subarray(0, endBytes);
}
