// The tun device plugin against a fake kubelet speaking the real v1beta1 gRPC API and
// behaving like the kubelet's device manager (e2e/node/lib/fake-kubelet.ts, cited there): it
// registers, lists healthy devices, allocates the private device node (c 10:200, 0600, owned
// by the sidecar), repairs a tampered node, registers again after a kubelet restart and after
// a lost ListAndWatch stream, and the kubelet keeps allocations across its restart.
import t from 'tap'
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { pino } from 'pino'
import { rootOnly } from '../../shared/testkit/root.ts'
import { deviceplugin, TunDevicePlugin } from '../src/deviceplugin/tun-plugin.ts'
import { CHECKPOINT, FakeKubelet, isExtendedResourceName } from '../../e2e/node/lib/fake-kubelet.ts'

const RESOURCE = 'tun.openziti.io/tun'

async function until(what: string, cond: () => boolean, ms = 8000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

t.test('the proto is the kubelet\'s v1beta1 API', async (t) => {
  const proto = readFileSync(new URL('../src/deviceplugin/v1beta1.proto', import.meta.url), 'utf8')
  for (const line of ['rpc Register(RegisterRequest) returns (Empty) {}', 'rpc ListAndWatch(Empty) returns (stream ListAndWatchResponse) {}', 'rpc Allocate(AllocateRequest) returns (AllocateResponse) {}',
    'string resource_name = 3;', 'repeated DeviceSpec devices = 3;', 'string container_path = 1;', 'string host_path = 2;', 'string permissions = 3;', 'repeated ContainerAllocateRequest container_requests = 1;']) {
    t.ok(proto.includes(line), line)
  }
})

t.test('the kubelet\'s extended resource name rule (IsExtendedResourceName)', async (t) => {
  for (const ok of [RESOURCE, 'example.com/foo', 'a.b/c_d.e-f']) t.ok(isExtendedResourceName(ok), ok)
  for (const bad of ['tun', 'kubernetes.io/tun', 'x.kubernetes.io/tun', 'requests.example.com/foo', 'Example.com/foo', 'example.com/', 'example.com/-foo', 'a/b/c', `example.com/${'x'.repeat(64)}`]) t.notOk(isExtendedResourceName(bad), bad)
})

function setup(t: { teardown: (f: () => unknown) => void }, devices = 3) {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-dp-'))
  const node = join(dir, 'dev/net-tun')
  const kubelet = new FakeKubelet(join(dir, 'plugins'), { dialTimeoutMs: 500 })
  mkdirSync(kubelet.dir, { recursive: true })
  const plugins: TunDevicePlugin[] = []
  const plugin = () => {
    const p = new TunDevicePlugin({ dir: kubelet.dir, resource: RESOURCE, socketName: 'ziti-cni-tun.sock', deviceNode: node, uid: 2171, gid: 2171, devices, watchMs: 100, log: pino({ level: 'silent' }) })
    plugins.push(p)
    return p
  }
  t.teardown(async () => { for (const p of plugins) await p.stop(); await kubelet.stop(); rmSync(dir, { recursive: true, force: true }) })
  return { dir, node, kubelet, plugin }
}

t.test('the kubelet dials the plugin before it answers Register, and checks the name', async (t) => {
  const { kubelet } = setup(t)
  await kubelet.start()
  const client = new (deviceplugin().Registration)(`unix://${join(kubelet.dir, 'kubelet.sock')}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Register: (r: object, cb: (e: grpc.ServiceError | null) => void) => void }
  t.teardown(() => client.close())
  const register = (r: object) => new Promise<grpc.ServiceError | null>((resolve) => client.Register(r, (e) => resolve(e)))
  const dead = await register({ version: 'v1beta1', endpoint: 'nobody.sock', resource_name: RESOURCE })
  t.match(dead?.details, /failed to dial device plugin/, 'an endpoint nobody serves: Register fails')
  const bad = await register({ version: 'v1beta1', endpoint: 'x.sock', resource_name: 'kubernetes.io/tun' })
  t.match(bad?.details, /the ResourceName "kubernetes\.io\/tun" is invalid/)
  const old = await register({ version: 'v1alpha', endpoint: 'x.sock', resource_name: RESOURCE })
  t.match(old?.details, /requested API version "v1alpha" is not supported/)
  t.equal(kubelet.capacity(RESOURCE).capacity, 0, 'nothing registered')
})

t.test('device plugin and fake kubelet over gRPC', rootOnly(['mknod']), async (t) => {
  const { node, kubelet, plugin: make } = setup(t)
  await kubelet.start()
  const plugin = make()
  await plugin.start()
  await kubelet.ready(RESOURCE)
  t.same(kubelet.registrations, [{ version: 'v1beta1', endpoint: 'ziti-cni-tun.sock', resource_name: RESOURCE, options: { pre_start_required: false, get_preferred_allocation_available: false } }], 'registered with the v1beta1 API')
  const specs = await kubelet.allocate(RESOURCE, 1, { podUid: 'p1', container: 'sidecar' })
  t.same(specs, [{ container_path: '/dev/net/tun', host_path: node, permissions: 'rw' }], 'Allocate gives the private node as /dev/net/tun')
  const st = lstatSync(node)
  t.ok(st.isCharacterDevice(), 'a character device')
  t.equal(st.rdev, (10 << 8) | 200, 'c 10:200 (the tun clone device)')
  t.same([st.uid, st.gid, (st.mode & 0o777).toString(8)], [2171, 2171, '600'], 'owned by the sidecar, 0600')

  chmodSync(node, 0o666)
  await kubelet.allocate(RESOURCE, 1, { podUid: 'p2', container: 'sidecar' })
  t.equal((lstatSync(node).mode & 0o777).toString(8), '600', 'a tampered node is recreated before it is handed out')
  await kubelet.allocate(RESOURCE, 1, { podUid: 'p3', container: 'sidecar' })
  await t.rejects(kubelet.allocate(RESOURCE, 1, { podUid: 'p4', container: 'sidecar' }), /OutOftun\.openziti\.io\/tun: 0 of 1/, 'three devices: the fourth pod waits, as the scheduler would make it')
  kubelet.freePod('p2')
  await kubelet.allocate(RESOURCE, 1, { podUid: 'p4', container: 'sidecar' })
  t.pass('a removed pod\'s device goes to the next pod')

  await kubelet.restart()
  t.equal(kubelet.capacity(RESOURCE).healthy, 0, 'a restarted kubelet knows the resource but no device until the plugin registers again')
  await until('registered again', () => plugin.registrations >= 2)
  t.equal(plugin.registrations, 2, 'registered again after the kubelet restarted (its socket was deleted)')
  await kubelet.ready(RESOURCE)
  t.same(kubelet.capacity(RESOURCE), { capacity: 3, healthy: 3, allocated: 3 }, 'the checkpoint kept the three allocations across the restart')
  await t.rejects(kubelet.allocate(RESOURCE, 1, { podUid: 'p5', container: 'sidecar' }), /OutOf/, 'so no device is handed out twice')
  kubelet.freePod('p1')
  t.same(await kubelet.allocate(RESOURCE, 1, { podUid: 'p5', container: 'sidecar' }), specs, 'and allocates again once a pod is gone')
})

t.test('a lost ListAndWatch stream: Unhealthy at once, healthy again after the plugin registers again', rootOnly(['mknod']), async (t) => {
  const { kubelet, plugin: make } = setup(t)
  await kubelet.start()
  const plugin = make()
  await plugin.start()
  await kubelet.ready(RESOURCE)
  kubelet.dropStream(RESOURCE)
  await until('devices unhealthy', () => kubelet.capacity(RESOURCE).healthy === 0, 2000)
  t.same(kubelet.capacity(RESOURCE), { capacity: 3, healthy: 0, allocated: 0 }, 'the kubelet marks every device Unhealthy when the stream ends')
  await until('registered again', () => plugin.registrations >= 2)
  await kubelet.ready(RESOURCE)
  t.equal(kubelet.capacity(RESOURCE).healthy, 3, 'the plugin noticed the stream end and registered again: healthy')
})

t.test('an agent restart: devices Unhealthy while it is away, allocations kept, healthy once it is back', rootOnly(['mknod']), async (t) => {
  const { kubelet, plugin: make } = setup(t)
  await kubelet.start()
  const first = make()
  await first.start()
  await kubelet.ready(RESOURCE)
  await kubelet.allocate(RESOURCE, 1, { podUid: 'running', container: 'sidecar' })
  await first.stop()
  await until('devices unhealthy', () => kubelet.capacity(RESOURCE).healthy === 0, 2000)
  t.same(kubelet.capacity(RESOURCE), { capacity: 3, healthy: 0, allocated: 1 }, 'stopped plugin: no device for new pods, the running pod keeps its own')
  await t.rejects(kubelet.allocate(RESOURCE, 1, { podUid: 'new', container: 'sidecar' }), /OutOf/)
  const second = make()
  await second.start()
  await kubelet.ready(RESOURCE)
  t.same(kubelet.capacity(RESOURCE), { capacity: 3, healthy: 3, allocated: 1 }, 'the restarted agent registers at start; same device IDs, so the allocation still counts')
  t.equal(second.registrations, 1)
})

t.test('the checkpoint file: allocations by pod and container, read back after a restart', async (t) => {
  const { dir, kubelet } = setup(t)
  await kubelet.start()
  await kubelet.stop()
  // A checkpoint as the kubelet left it: a pod holding tun-1.
  const { writeFileSync } = await import('node:fs')
  const data = { PodDeviceEntries: [{ PodUID: 'old', ContainerName: 'sidecar', ResourceName: RESOURCE, DeviceIDs: { '-1': ['tun-1'] }, AllocResp: '' }], RegisteredDevices: { [RESOURCE]: ['tun-0', 'tun-1'] } }
  let h = 0x811c9dc5
  for (const b of Buffer.from(JSON.stringify(data))) h = Math.imul(h ^ b, 0x01000193) >>> 0
  writeFileSync(join(dir, 'plugins', CHECKPOINT), JSON.stringify({ Data: data, Checksum: h }))
  writeFileSync(join(dir, 'plugins', 'stale.sock'), '')
  await kubelet.start()
  t.same(kubelet.podsWithDevices(), ['old'], 'allocations come back from the checkpoint')
  t.same(kubelet.capacity(RESOURCE), { capacity: 0, healthy: 0, allocated: 1 }, 'the resource is known, with no device until its plugin registers')
  const { existsSync } = await import('node:fs')
  t.notOk(existsSync(join(dir, 'plugins', 'stale.sock')), 'every other file in the dir is removed at start')
  t.ok(existsSync(join(dir, 'plugins', CHECKPOINT)), 'but the checkpoint')
})
