// tun mode on the real-runtime tier: admission (mode tun) -> containerd's CNI ADD creates the
// device in the pod netns, owned by the sidecar -> the kubelet asks the agent's device plugin
// (real gRPC) for tun.openziti.io/tun and gives the container /dev/net/tun as a CRI device ->
// the stand-in ziti-edge-tunnel, with the attach shim preloaded, opens it as upstream tun_open
// does, with no capability -> the app resolves a Ziti service name through the tunneler's DNS
// inside the device and exchanges TCP and UDP with it; non-Ziti names still resolve.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import type { V1Pod } from '@kubernetes/client-node'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { app, appPod, infraPod, injected } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { libcniFor } from './lib/cni-exec.ts'
import { startWebhook } from './lib/webhook.ts'
import { restrictedViolations } from '../../webhook/test/pss-restricted.ts'

const RESOURCE = 'tun.openziti.io/tun'

t.test('tun mode on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr', 'gcc']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 5, tunDevicePlugin: true })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  t.teardown(async () => { await node.teardown(); await webhook?.close() })
  await node.start()
  await node.deviceManager!.ready(RESOURCE)
  t.pass('the agent\'s device plugin registered with the kubelet and lists healthy devices')

  const infra = await node.runPod(await node.createPod(infraPod()))
  node.clusterDns.push(infra.ip)
  webhook = await startWebhook({ validator: { image: IMAGES.validator }, tun: { image: IMAGES.tun }, tproxy: { clusterDns: [infra.ip] } })
  node.api.admission = webhook.admission

  // What this identity may dial, as the stand-in's controller answer (ziti-edge-tunnel.c).
  await node.createSecret('apps', 'tun-identity', { 'identity.json': JSON.stringify({
    ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' },
    standinTunServices: 'postgres=pg.ziti:tcp:5432,logs=logs.ziti:udp:514,billing-api=10.99.0.7:tcp:443',
  }) })
  const pod = await node.createPod(appPod('tunapp', 'apps', {
    'cni.openziti.io/identity-secret': 'tun-identity',
    'cni.openziti.io/mode': 'tun',
    'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, 10.99.0.0/16',
  }))
  const rp = await node.runPod(pod)

  await t.test('admission: restricted, the device from a resource limit, the sidecar pinned to the tun owner', async (t) => {
    t.same(restrictedViolations(pod as V1Pod), [], 'Pod Security "restricted" admits it')
    const sidecar = injected(pod, 'ziti-tunnel')
    t.equal(sidecar.resources?.limits?.[RESOURCE], '1')
    t.same([sidecar.securityContext?.runAsUser, sidecar.securityContext?.runAsGroup], [2171, 2171])
    t.same(sidecar.securityContext?.capabilities, { drop: ['ALL'] })
    const intent = parseIntent(pod.metadata.annotations['cni.openziti.io/interception']!)
    t.same(intent, { v: 1, mode: 'tun', uid: 2171, dev: 'ziti0', addr: '100.64.0.1/10', routes: ['10.99.0.0/16'] })
    t.same(pod.spec?.dnsConfig?.nameservers, ['100.64.0.2', infra.ip], 'the tunneler\'s resolver first, then the cluster DNS')
  })

  await t.test('the CNI made the device in the pod netns, and the sidecar attached with no capability', async (t) => {
    const link = node.inNetns(rp, ['ip', '-d', 'link', 'show', 'dev', 'ziti0']).stdout
    t.match(link, /tun type tun pi off .*user 2171 /, 'a tun owned by the sidecar')
    t.notMatch(link, /tun type tun .*\bgroup [0-9]/, '...and by no group (the app could be given its gid)')
    t.notMatch(link, /NO-CARRIER/, 'carrier: the tunneler holds it')
    const log = node.kubelet.logs(rp, 'ziti-tunnel')
    t.match(log, /TUNSETIFF "ziti%d": attaching to the pre-provisioned ziti0/, 'the shim attached upstream\'s template call to the CNI\'s device')
    t.match(log, /tun device ziti0 attached, mtu 1500, address 100\.64\.0\.1/)
    const status = (await node.exec(rp, 'ziti-tunnel', ['cat', '/proc/1/status'])).stdout
    t.match(status, /^CapPrm:\s+0+$/m, 'sidecar CapPrm 0')
    t.match(status, /^CapEff:\s+0+$/m, 'sidecar CapEff 0')
    t.match(status, /^CapAmb:\s+0+$/m, 'sidecar CapAmb 0')
    t.match(status, /^NoNewPrivs:\s+1$/m)
    t.match(status, /^Uid:\s+2171\s/m)
    const dev = await node.exec(rp, 'ziti-tunnel', ['ls', '-ln', '/dev/net/tun'])
    t.match(dev.stdout, /^crw------- +1 2171 +2171 +10, +200 /, 'the device plugin\'s node: c 10:200, 0600, the sidecar\'s')
    const appDev = await node.exec(rp, 'app', ['ls', '/dev/net/tun'])
    t.not(appDev.code, 0, 'the app container has no /dev/net/tun')
  })

  await t.test('the app resolves a Ziti service name through the tunneler and exchanges TCP and UDP with it', async (t) => {
    const name = await app(node, rp, ['resolve', 'pg.ziti'])
    t.same(name.answers, ['100.64.0.3'], `pg.ziti resolved by the tunneler inside the device (${name.error ?? 'ok'})`)
    const pg = await app(node, rp, ['tcp', 'pg.ziti', '5432'])
    t.equal(pg.reply, 'ziti-service=postgres via=tun peer=100.64.0.1', `TCP through the device (${pg.error ?? 'ok'})`)
    const logs = await app(node, rp, ['udp', 'logs.ziti', '514'])
    t.equal(logs.reply, 'ziti-service=logs via=tun-udp got=ping', `UDP, reply to a connected socket (${logs.error ?? 'ok'})`)
    const api = await app(node, rp, ['tcp', '10.99.0.7', '443'])
    t.equal(api.reply, 'ziti-service=billing-api via=tun peer=100.64.0.1', `an intercept address outside the DNS range, routed by the CNI (${api.error ?? 'ok'})`)
    const other = await app(node, rp, ['resolve', 'www.example.org'])
    t.same(other.answers, ['192.0.2.53'], 'a non-Ziti name: the tunneler says REFUSED, glibc asks the cluster DNS next')
    const notAService = await app(node, rp, ['tcp', '100.64.0.9', '80'])
    t.notOk(notAService.ok, `an address that is no service is refused inside the device (${notAService.error})`)
    const direct = await app(node, rp, ['tcp', infra.ip, '8080'])
    t.equal(direct.reply, `direct server=${infra.ip}:8080 peer=${rp.ip}`, 'other traffic is untouched')
  })

  await t.test('the app cannot change the pod\'s network', async (t) => {
    for (const argv of [['ip', 'route', 'del', '10.99.0.0/16'], ['ip', 'link', 'set', 'ziti0', 'down'], ['ip', 'addr', 'add', '100.64.0.9/10', 'dev', 'ziti0']]) {
      const r = await node.exec(rp, 'app', argv)
      t.match(r.stderr, /Operation not permitted/, `${argv.join(' ')}: EPERM`)
    }
  })

  await t.test('CHECK passes, and detects a device that lost its owner or routes', async (t) => {
    // containerd 1.6 never sends CHECK: the executable is called the way libcni would.
    const cni = libcniFor(node, rp, { namespace: 'apps', name: 'tunapp', uid: pod.metadata.uid })
    await cni.check()
    t.pass('CHECK passes on the live pod')
    node.inNetns(rp, ['ip', 'route', 'del', '10.99.0.0/16', 'dev', 'ziti0'])
    const drift = await cni.drift()
    t.equal(drift?.error.code, 104, 'code 104 (drift)')
    t.match(drift?.error.msg, /route 10\.99\.0\.0\/16 dev ziti0 is missing/)
    node.inNetns(rp, ['ip', 'route', 'add', '10.99.0.0/16', 'dev', 'ziti0'])
  })

  await t.test('no tunneler attached: nothing for the Ziti ranges leaves the pod', async (t) => {
    await node.containerd.cri.stopContainer(rp.containers.get('ziti-tunnel')!, 5)
    const link = node.inNetns(rp, ['ip', 'link', 'show', 'dev', 'ziti0']).stdout
    t.match(link, /NO-CARRIER/, 'the device has no carrier once the tunneler is gone')
    // An independent witness in the pod netns: a counter at postrouting (after the CNI's guard)
    // for Ziti destinations leaving by any interface but ziti0. eth0's own packet counter is
    // not one: it moved by 20 in one CI run with nothing Ziti-bound leaving (other traffic of
    // the dual-stack pod, not captured).
    const witness = 'table inet zcni_leak_witness {\n\tchain post {\n\t\ttype filter hook postrouting priority 100; policy accept;\n\t\toifname != "ziti0" ip daddr { 100.64.0.0/10, 10.99.0.0/16 } counter\n\t}\n}\n'
    const r = spawnSync('nsenter', [`--net=${rp.netns}`, 'nft', '-f', '-'], { input: witness, encoding: 'utf8' })
    t.equal(r.status, 0, `witness loaded ${r.stderr}`)
    const results = []
    for (let i = 0; i < 3; i++) {
      results.push(await app(node, rp, ['udp', '100.64.0.3', '514']), await app(node, rp, ['udp', '10.99.0.7', '443']))
    }
    t.same(results.map((x) => x.error), Array(6).fill('timeout'), 'the app sent 6 datagrams and got no answer')
    const counted = node.inNetns(rp, ['nft', 'list', 'table', 'inet', 'zcni_leak_witness']).stdout
    t.match(counted, /counter packets 0 bytes 0/, 'not one of them left the pod by another interface')
    // The witness does see a leak: without the route into the device and the guard, the same
    // datagram takes the default route out of eth0.
    node.inNetns(rp, ['ip', 'route', 'del', '10.99.0.0/16', 'dev', 'ziti0'])
    node.inNetns(rp, ['nft', 'delete', 'table', 'inet', 'ziti_cni'])
    await app(node, rp, ['udp', '10.99.0.7', '443'])
    t.match(node.inNetns(rp, ['nft', 'list', 'table', 'inet', 'zcni_leak_witness']).stdout, /counter packets [1-9]/, 'control: with route and guard removed, the witness counts it')
  })

  await t.test('DEL removes the device; StopPodSandbox takes the pod down', async (t) => {
    await libcniFor(node, rp, { namespace: 'apps', name: 'tunapp', uid: pod.metadata.uid }).del()
    t.not(node.inNetns(rp, ['ip', 'link', 'show', 'dev', 'ziti0']).status, 0, 'no ziti0 after DEL')
    t.not(node.inNetns(rp, ['nft', 'list', 'table', 'inet', 'ziti_cni']).status, 0, 'no table after DEL')
    await node.removePod(rp)
  })
})
