// The tun device plugin against a fake kubelet speaking the real v1beta1 gRPC API: it
// registers, lists healthy devices, allocates the private device node (c 10:200, 0600, owned
// by the sidecar), repairs a tampered node, and registers again after a kubelet restart.
import t from 'tap'
import { chmodSync, lstatSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TunDevicePlugin } from '../src/deviceplugin/tun-plugin.ts'
import { FakeKubelet } from '../../e2e/node/lib/fake-kubelet.ts'

const RESOURCE = 'tun.openziti.io/tun'

t.test('the proto is the kubelet\'s v1beta1 API', async (t) => {
  const proto = readFileSync(new URL('../src/deviceplugin/v1beta1.proto', import.meta.url), 'utf8')
  for (const line of ['rpc Register(RegisterRequest) returns (Empty) {}', 'rpc ListAndWatch(Empty) returns (stream ListAndWatchResponse) {}', 'rpc Allocate(AllocateRequest) returns (AllocateResponse) {}',
    'string resource_name = 3;', 'repeated DeviceSpec devices = 3;', 'string container_path = 1;', 'string host_path = 2;', 'string permissions = 3;', 'repeated ContainerAllocateRequest container_requests = 1;']) {
    t.ok(proto.includes(line), line)
  }
})

t.test('device plugin and fake kubelet over gRPC', rootOnly(['mknod']), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-dp-'))
  const node = join(dir, 'dev/net-tun')
  const kubelet = new FakeKubelet(join(dir, 'plugins'))
  const { mkdirSync } = await import('node:fs')
  mkdirSync(kubelet.dir, { recursive: true })
  await kubelet.start()
  const plugin = new TunDevicePlugin({ dir: kubelet.dir, resource: RESOURCE, socketName: 'ziti-cni-tun.sock', deviceNode: node, uid: 2171, gid: 2171, devices: 3, watchMs: 200, log: pino({ level: 'silent' }) })
  t.teardown(async () => { await plugin.stop(); await kubelet.stop(); rmSync(dir, { recursive: true, force: true }) })
  await plugin.start()
  await kubelet.ready(RESOURCE)
  t.same(kubelet.registrations, [{ version: 'v1beta1', endpoint: 'ziti-cni-tun.sock', resource_name: RESOURCE, options: { pre_start_required: false, get_preferred_allocation_available: false } }], 'registered with the v1beta1 API')
  const specs = await kubelet.allocate(RESOURCE, 1)
  t.same(specs, [{ container_path: '/dev/net/tun', host_path: node, permissions: 'rw' }], 'Allocate gives the private node as /dev/net/tun')
  const st = lstatSync(node)
  t.ok(st.isCharacterDevice(), 'a character device')
  t.equal(st.rdev, (10 << 8) | 200, 'c 10:200 (the tun clone device)')
  t.same([st.uid, st.gid, (st.mode & 0o777).toString(8)], [2171, 2171, '600'], 'owned by the sidecar, 0600')

  chmodSync(node, 0o666)
  await kubelet.allocate(RESOURCE, 1)
  t.equal((lstatSync(node).mode & 0o777).toString(8), '600', 'a tampered node is recreated before it is handed out')
  await kubelet.allocate(RESOURCE, 1)
  await t.rejects(kubelet.allocate(RESOURCE, 1), /OutOftun\.openziti\.io\/tun: 0 of 1/, 'three devices: the fourth pod waits, as the scheduler would make it')

  await kubelet.restart()
  const deadline = Date.now() + 5000
  while (plugin.registrations < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  t.equal(plugin.registrations, 2, 'registered again after the kubelet restarted (its socket was deleted)')
  await kubelet.ready(RESOURCE)
  t.same(await kubelet.allocate(RESOURCE, 1), specs, 'and allocates again')
})
