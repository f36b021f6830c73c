// Sizes as people write them on a command line: 1073741824, 512M, 1G, 1GiB, 4k.

const multipliers: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

export function parseSize(text: string): number {
  const match = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (match === null) throw new Error(`"${text}" is not a size (examples: 1073741824, 512M, 1G, 1GiB)`);
  const value = Number(match[1]) * multipliers[match[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(value)) throw new Error(`size "${text}" is too large`);
  return value;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${units[unit]}`;
}
