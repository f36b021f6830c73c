// The module exports exactly the surface that index.d.ts and README.md describe.
import t from 'tap';
import * as native from 'cdp-native';

t.test('exports', async (t) => {
  t.same(Object.keys(native).sort(), [
    'allocate',
    'blockSize',
    'crc32c',
    'crc32cImplementation',
    'crc32cv',
    'limitAllocatorRetention',
    'lockExclusive',
    'preadNoWait',
    'punchHole',
    'pwriteAligned',
    'pwriteAlignedSync',
    'pwriteBatch',
    'seekData',
    'seekHole',
    'setTcpKeepAlive',
    'setTcpUserTimeout',
    'zeroRange',
  ]);
  for (const [name, value] of Object.entries(native)) {
    if (name === 'crc32cImplementation') continue;
    t.type(value, 'function', name);
    t.equal((value as { name: string }).name, name, `${name} carries its own name`);
  }
});
