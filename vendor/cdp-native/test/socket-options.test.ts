// setTcpKeepAlive and setTcpUserTimeout on real sockets. Invariants checked:
// - both succeed on a connected TCP socket, and the connection still carries data after;
// - a descriptor that is not a TCP socket fails like a system call (ENOTSOCK, EOPNOTSUPP, EBADF);
// - bad arguments (zero, fractions, out of range) throw TypeError before any system call.
// That the kernel then ends a silent connection in time is checked end to end by
// test/server/vanished-peer.test.ts, which drops a real peer's packets.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTcpKeepAlive, setTcpUserTimeout } from 'cdp-native';

const CLOSED_FD = 1 << 30;

function descriptorOf(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('no descriptor');
  return fd;
}

async function connectedPair(t: Test, address: net.ListenOptions): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve) => server.listen(address, resolve));
  const bound = server.address();
  const client = typeof bound === 'string' || bound === null ? net.connect(bound!) : net.connect(bound.port, '127.0.0.1');
  await new Promise((resolve) => client.once('connect', resolve));
  const serverSide = await accepted;
  t.teardown(() => {
    client.destroy();
    serverSide.destroy();
    server.close();
  });
  return [serverSide, client];
}

t.test('set on a connected TCP socket, which still carries data', async (t) => {
  const [serverSide, client] = await connectedPair(t, { port: 0, host: '127.0.0.1' });
  t.doesNotThrow(() => setTcpKeepAlive(descriptorOf(serverSide), 7, 2, 3));
  t.doesNotThrow(() => setTcpUserTimeout(descriptorOf(serverSide), 9000));
  t.doesNotThrow(() => setTcpUserTimeout(descriptorOf(serverSide), 0), '0 restores the default');
  const received = new Promise<Buffer>((resolve) => client.once('data', resolve));
  serverSide.write('still there');
  t.equal((await received).toString(), 'still there');
});

t.test('not a TCP socket: system-call errors', async (t) => {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'cdp-native-'));
  t.teardown(() => fs.rmSync(directory, { recursive: true, force: true }));
  const fd = fs.openSync(path.join(directory, 'file'), 'w');
  t.teardown(() => fs.closeSync(fd));
  t.throws(() => setTcpKeepAlive(fd, 1, 1, 1), { code: 'ENOTSOCK', syscall: 'setsockopt' });
  t.throws(() => setTcpUserTimeout(fd, 1000), { code: 'ENOTSOCK', syscall: 'setsockopt' });
  t.throws(() => setTcpKeepAlive(CLOSED_FD, 1, 1, 1), { code: 'EBADF' });
  const [unixSide] = await connectedPair(t, { path: path.join(directory, 'socket') });
  t.throws(() => setTcpKeepAlive(descriptorOf(unixSide), 1, 1, 1), { code: 'EOPNOTSUPP' }, 'a unix socket has no TCP options');
});

t.test('bad arguments are TypeErrors', async (t) => {
  const [serverSide] = await connectedPair(t, { port: 0, host: '127.0.0.1' });
  const fd = descriptorOf(serverSide);
  t.throws(() => setTcpKeepAlive(fd, 0, 1, 1), { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => setTcpKeepAlive(fd, 1, 0, 1), { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => setTcpKeepAlive(fd, 1, 1, 0), { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => setTcpKeepAlive(fd, 1.5, 1, 1), { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => setTcpKeepAlive(fd, 1, 1, 128), { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => setTcpUserTimeout(fd, -1), { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => (setTcpKeepAlive as unknown as (fd: string) => void)('3'), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
});
