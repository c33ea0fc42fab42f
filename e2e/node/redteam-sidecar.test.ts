// Red team on the sidecar's own addresses and sockets, on containerd + runc with upstream's
// ziti-edge-tunnel (tun mode) and the `ziti tunnel proxy` stand-in (proxy mode). Attackers:
// another tenant's pod on the same pod network (the "infra" pod), and the shell user in the
// app (uid 1000, no capability, no_new_privs). Each attack shows why it fails: an nft witness
// counter in the victim's netns, or the probe the kubelet runs naming the squatter.
import t, { type Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { app, appPod, injected, APP_UID, STANDINS } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { startTunWorld } from './lib/tun-world.ts'
import type { RunningPod } from './lib/kubelet.ts'
import type { TestNode } from './lib/node.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A DNS A query straight to `server` (no resolv.conf, one try): node's c-ares resolver. */
async function queryA(node: TestNode, rp: RunningPod, container: string, server: string, name: string): Promise<string> {
  const script = 'const r = new (require("node:dns").promises.Resolver)({ timeout: 3000, tries: 1 }); r.setServers([process.argv[1]]); r.resolve4(process.argv[2]).then((a) => console.log("answer " + a.join(",")), (e) => console.log("error " + e.code))'
  return (await node.exec(rp, container, ['node', '-e', script, server, name], 20)).stdout.trim()
}

/** Named counters in a table of their own: what reached each hook, read without touching ours. */
function witness(node: TestNode, rp: RunningPod, rules: string): (name: string) => number {
  const r = spawnSync('nsenter', [`--net=${rp.netns}`, 'nft', '-f', '-'], { input: `table inet zcni_redteam_witness {\n${rules}\n}\n`, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`witness: ${r.stderr}`)
  return (name) => Number(/packets (\d+)/.exec(node.inNetns(rp, ['nft', 'list', 'counter', 'inet', 'zcni_redteam_witness', name]).stdout)?.[1] ?? NaN)
}

t.test('sidecar red team on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr', 'gcc']), async (t) => {
  const { node, infra, router } = await startTunWorld(t, { id: 18, identity: 'tunvictim-pod', attribute: 'tunvictim', secret: 'tun-identity', tproxy: true })

  /** The shell user's squatter: a container that binds `port` again and again until it gets it. */
  const squatter = (port: number) => ({ name: 'squatter', image: IMAGES.tools, command: ['sh', '-c', `while :; do node ${STANDINS}/echo-server.ts 0.0.0.0 ${port} 2>&1 | grep -m1 -o 'EADDRINUSE\\|READY'; sleep 0.3; done`], securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } })
  /** The sidecar dies and sits in back-off (a crash loop); the squatter takes `port`; then the kubelet restarts the sidecar. */
  const squatAfterRestart = async (t: Test, rp: RunningPod, port: number) => {
    for (let i = 0; i < 80 && !/EADDRINUSE/.test(node.kubelet.logs(rp, 'squatter')); i++) await sleep(250)
    t.match(node.kubelet.logs(rp, 'squatter'), /EADDRINUSE/, `while the sidecar runs, the app cannot bind ${port}: EADDRINUSE`)
    t.notMatch(node.kubelet.logs(rp, 'squatter'), /READY/)
    node.kubelet.holdRestarts(rp, 'ziti-tunnel')
    await node.containerd.cri.stopContainer(rp.containers.get('ziti-tunnel')!, 5)
    for (let i = 0; i < 40 && !/READY/.test(node.kubelet.logs(rp, 'squatter')); i++) await sleep(250)
    t.match(node.kubelet.logs(rp, 'squatter'), new RegExp('READY'), `with the sidecar gone, the app binds 0.0.0.0:${port} (the kernel allows it: the port is free and unprivileged)`)
    const hex = `00000000:${port.toString(16).toUpperCase().padStart(4, '0')} 00000000:0000 0A `
    const owner = node.inNetns(rp, ['cat', '/proc/net/tcp']).stdout.split('\n').find((l) => l.includes(hex))
    t.equal(owner?.trim().split(/\s+/)[7], String(APP_UID), `the listener on ${port} is uid ${APP_UID}'s`)
    const outside = await app(node, infra, ['tcp', rp.ip, String(port)], 'echo')
    t.notOk(outside.ok, `another pod cannot reach the squatted port: ${outside.error}`)
    const restarts = rp.records.get('ziti-tunnel')?.restarts ?? 0
    rp.held.delete('ziti-tunnel')
    for (let i = 0; i < 60 && (rp.records.get('ziti-tunnel')?.restarts ?? 0) === restarts; i++) await sleep(250)
    t.ok((rp.records.get('ziti-tunnel')?.restarts ?? 0) > restarts, `the kubelet restarted the sidecar (restartCount ${rp.records.get('ziti-tunnel')?.restarts})`)
  }

  await t.test('another pod attacks a tun-mode pod: the tun\'s address, an intercept routed into the tun, the tunneler\'s DNS', async (t) => {
    const manifest = appPod('tunvictim', 'apps', { 'cni.openziti.io/identity-secret': 'tun-identity', 'cni.openziti.io/mode': 'tun', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, 10.99.0.0/16' })
    // The app's own server on every address, port undeclared: reachable on the tun's address too.
    manifest.spec!.containers.push({ name: 'web', image: IMAGES.tools, command: ['node', `${STANDINS}/echo-server.ts`, '0.0.0.0', '7000'], securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } })
    const victim = await node.runPod(await node.createPod(manifest))
    t.equal(victim.statuses.get('ziti-cni-validator')?.exit_code, 0, 'the validator passed')
    // The strongest attacker beside the pod: one whose frames for the tun's networks reach the
    // victim's eth0 (any neighbour on the pod network can send them: a pod with the runtime's
    // default NET_RAW, a hostNetwork process). A tenant pod cannot add this route itself (no
    // NET_ADMIN); the test, as the network, does, so every packet really arrives.
    for (const cidr of ['100.64.0.0/10', '10.99.0.0/16']) {
      const r = node.inNetns(infra, ['ip', 'route', 'replace', cidr, 'via', victim.ip])
      t.equal(r.status, 0, `attacker netns: ${cidr} via the victim's pod IP ${r.stderr}`)
    }
    t.equal(node.inNetns(victim, ['cat', '/proc/sys/net/ipv4/ip_forward']).stdout.trim(), '1', 'the pod netns forwards IPv4 (inherited from the node, as on every node): only the fence stands between eth0 and the tun')
    const seen = witness(node, victim, [
      '\tcounter arrived {}', '\tcounter before_fence {}', '\tcounter after_fence {}', '\tcounter forwarded {}', '\tcounter into_tun {}',
      '\tchain pre { type filter hook prerouting priority -300; policy accept; iifname "eth0" ip daddr { 100.64.0.0/10, 10.99.0.0/16 } counter name "arrived"; }',
      '\tchain in_before { type filter hook input priority -1; policy accept; iifname "eth0" ip daddr { 100.64.0.0/10, 10.99.0.0/16 } counter name "before_fence"; }',
      '\tchain in_after { type filter hook input priority 1; policy accept; iifname "eth0" ip daddr { 100.64.0.0/10, 10.99.0.0/16 } counter name "after_fence"; }',
      '\tchain fwd_after { type filter hook forward priority 1; policy accept; iifname "eth0" ip daddr { 100.64.0.0/10, 10.99.0.0/16 } counter name "forwarded"; }',
      '\tchain post { type filter hook postrouting priority 300; policy accept; oifname "ziti0" ip saddr != 100.64.0.0/10 counter name "into_tun"; }',
    ].join('\n'))

    // 1. The tun's own address (a local address of the pod): the app's undeclared server on it.
    for (let i = 0; i < 100 && !/READY/.test(node.kubelet.logs(victim, 'web')); i++) await sleep(200)
    const lo = await app(node, victim, ['tcp', '127.0.0.1', '7000'])
    t.match(lo.reply, /^direct server=0\.0\.0\.0:7000 /, `control: the app's server answers inside the pod on lo (${lo.error ?? 'ok'})`)
    // Measured: inside the pod the tun's address fails too: tun_guard_output sends the Ziti
    // ranges only into ziti0, and the route to a local address is lo.
    const own = await app(node, victim, ['tcp', '100.64.0.1', '7000'])
    t.equal(own.error, 'timeout', `inside the pod, 100.64.0.1:7000 fails as well (${node.inNetns(victim, ['ip', 'route', 'get', '100.64.0.1']).stdout.split('\n')[0]!.trim()}: dropped by tun_guard_output)`)
    const tunAddr = await app(node, infra, ['tcp', '100.64.0.1', '7000'], 'echo')
    t.equal(tunAddr.error, 'timeout', 'other pod -> tcp 100.64.0.1:7000 (the tun\'s address) times out')
    const tunUdp = await app(node, infra, ['udp', '100.64.0.1', '7000'], 'echo')
    t.equal(tunUdp.error, 'timeout', 'other pod -> udp 100.64.0.1:7000 times out')
    t.ok(seen('before_fence') >= 2, `the attacker's packets reached the victim's input hook (${seen('before_fence')})`)
    t.equal(seen('after_fence'), 0, 'and none got past the fence: dropped (fence_input: not lo, not the tun, not a reply, not declared)')

    // 2. An intercept address routed into the tun: would be the victim's identity dialing.
    const connects = () => router.events.filter((e) => e.kind === 'connect').length
    const ctl = await app(node, victim, ['tcp', '10.99.0.7', '443'])
    t.equal(ctl.reply, 'ziti-service=billing-api caller=tunvictim-pod', `control: the pod's own app reaches billing-api through the tun (${ctl.error ?? 'ok'})`)
    const before = { connects: connects(), into: seen('into_tun'), arrived: seen('arrived') }
    const routed = await app(node, infra, ['tcp', '10.99.0.7', '443'], 'echo')
    t.notOk(routed.ok, `other pod -> tcp 10.99.0.7:443 (routed into the victim's tun) fails: ${routed.error ?? routed.reply}`)
    const routedUdp = await app(node, infra, ['udp', '100.64.0.3', '514'], 'echo')
    t.notOk(routedUdp.ok, `other pod -> udp 100.64.0.3:514 (the DNS range) fails: ${routedUdp.error ?? routedUdp.reply}`)
    t.ok(seen('arrived') > before.arrived, `the packets arrived on eth0 (${seen('arrived') - before.arrived})`)
    t.equal(seen('forwarded'), 0, 'none was forwarded (fence_forward drops what would go into the tun from another interface)')
    t.equal(seen('into_tun') - before.into, 0, 'nothing from outside entered the tun')
    t.equal(connects(), before.connects, 'the router saw no Connect with the victim\'s identity')

    // 3. The tunneler's DNS (upstream serves it inside the device, not on a kernel socket).
    const udp53 = node.inNetns(victim, ['sh', '-c', 'cat /proc/net/udp /proc/net/udp6']).stdout.split('\n').filter((l) => / [0-9A-F]+:0035 /.test(l))
    t.same(udp53, [], 'no kernel socket on port 53 in the pod: the resolver answers from inside the device')
    t.match(await queryA(node, victim, 'app', '100.64.0.2', 'pg.ziti'), /^answer 100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\./, 'control: inside the pod, 100.64.0.2 answers pg.ziti')
    const fwdBefore = seen('arrived')
    t.equal(await queryA(node, infra, 'echo', '100.64.0.2', 'pg.ziti'), 'error ETIMEOUT', 'other pod -> the tunneler\'s DNS at 100.64.0.2:53: no answer')
    t.ok(seen('arrived') > fwdBefore, 'the query arrived on eth0')
    t.equal(seen('forwarded') + seen('after_fence'), 0, '...and was dropped by the fence')
    t.match(node.inNetns(victim, ['nft', 'list', 'chain', 'inet', 'ziti_cni', 'fence_forward']).stdout, /oifname "ziti0" drop/, 'the rule that did it')
    for (const cidr of ['100.64.0.0/10', '10.99.0.0/16']) node.inNetns(infra, ['ip', 'route', 'del', cidr])
    await node.removePod(victim)
  })

  await t.test('the app shell squats the sidecar\'s ports after a sidecar restart: the probe names the squatter', async (t) => {
    await node.createSecret('apps', 'proxy-identity', { 'identity.json': JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' } }) })
    const manifest = appPod('squatted', 'apps', { 'cni.openziti.io/identity-secret': 'proxy-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' })
    manifest.spec!.containers.push(squatter(15100))
    const pod = await node.createPod(manifest)
    const intent = parseIntent(pod.metadata.annotations['cni.openziti.io/interception']!)
    t.same(intent.mode === 'proxy' && intent.fence, [15100], 'the listener: 15100')
    const probe = injected(pod, 'ziti-tunnel').livenessProbe!.exec!.command!
    t.same(probe.slice(-2), ['2171', 'tcp:15100'], 'the liveness (and startup) probe checks tcp/15100 is the sidecar uid\'s')
    const rp = await node.runPod(pod)
    await squatAfterRestart(t, rp, 15100)
    // What the squat buys: the pod's own Ziti connections (nobody else's: the fence).
    const own = await app(node, rp, ['tcp', 'pg.ziti', '5432'])
    t.match(own.reply, /^direct server=0\.0\.0\.0:15100 /, 'the app\'s own pg.ziti connection lands on the squatter')
    for (let i = 0; i < 60 && !/failed to intercept service/.test(node.kubelet.logs(rp, 'ziti-tunnel')); i++) await sleep(250)
    t.match(node.kubelet.logs(rp, 'ziti-tunnel'), /failed to intercept service: listen EADDRINUSE/, 'the restarted tunneler cannot bind its listener')
    const verdict = await node.exec(rp, 'ziti-tunnel', probe)
    t.equal(verdict.code, 1, 'the probe the kubelet runs fails (startup now, liveness once started)')
    t.equal(verdict.stdout.trim(), `not the ziti-tunnel sidecar (uid 2171) but another uid holds: tcp/15100(uid ${APP_UID})`, 'and names the squatter\'s uid')
    t.notOk(rp.records.get('ziti-tunnel')?.started, 'the sidecar is not started (not Ready): the pod reports it')
    await node.removePod(rp)
  })

  await t.test('the same on a tproxy pod: the catch-all (also its DNS, served on the catch-all) after a sidecar restart', async (t) => {
    await node.createSecret('apps', 'tproxy-identity', { 'identity.json': JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' } }) })
    const manifest = appPod('squatted-tp', 'apps', { 'cni.openziti.io/identity-secret': 'tproxy-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10' })
    manifest.spec!.containers.push(squatter(15001))
    const pod = await node.createPod(manifest)
    const probe = injected(pod, 'ziti-tunnel').startupProbe!.exec!.command!
    t.same(probe.slice(-3), ['2171', 'tcp:15001', 'udp:15001'], 'the probe checks the catch-all is the sidecar uid\'s, TCP and UDP')
    const rp = await node.runPod(pod)
    // First the neighbour's attack of the tun case, on this mode: the intercept range routed to
    // the pod. Its own traffic reaches the catch-all; the neighbour's never gets past the fence.
    t.match((await app(node, rp, ['tcp', '100.64.3.7', '443'])).reply, /^tproxy proto=tcp orig_dst=100\.64\.3\.7:443/, 'control: the pod\'s own connection reaches the catch-all')
    t.equal(node.inNetns(infra, ['ip', 'route', 'replace', '100.64.0.0/10', 'via', rp.ip]).status, 0, 'attacker netns: 100.64.0.0/10 via the victim')
    const seen = witness(node, rp, [
      '\tcounter arrived {}', '\tcounter after_fence {}',
      '\tchain pre { type filter hook prerouting priority -300; policy accept; iifname "eth0" ip daddr 100.64.0.0/10 counter name "arrived"; }',
      '\tchain in_after { type filter hook input priority 1; policy accept; iifname "eth0" ip daddr 100.64.0.0/10 counter name "after_fence"; }',
    ].join('\n'))
    for (const proto of ['tcp', 'udp']) {
      const r = await app(node, infra, [proto, '100.64.3.7', '443'], 'echo')
      t.notOk(r.ok, `other pod -> ${proto} 100.64.3.7:443 routed to the tproxy pod fails: ${r.error ?? r.reply}`)
    }
    t.ok(seen('arrived') > 0, `the packets arrived on eth0 (${seen('arrived')})`)
    t.equal(seen('after_fence'), 0, 'none reached a local socket past the fence')
    node.inNetns(infra, ['ip', 'route', 'del', '100.64.0.0/10'])
    await squatAfterRestart(t, rp, 15001)
    // The contract's tunneler cannot bind its catch-all and exits: the kubelet's startup probe
    // never passes, the container crash-loops, and its log says why.
    for (let i = 0; i < 60 && !/bind: Address already in use/.test(node.kubelet.logs(rp, 'ziti-tunnel')); i++) await sleep(250)
    t.match(node.kubelet.logs(rp, 'ziti-tunnel'), /tproxy-standin: bind: Address already in use/, 'the restarted tunneler cannot bind 127.0.0.1:15001 under the app\'s 0.0.0.0:15001')
    t.notOk(rp.records.get('ziti-tunnel')?.started, 'the sidecar is not started (not Ready): the pod reports it')
    const own = await app(node, rp, ['tcp', '100.64.3.7', '443'])
    t.match(own.reply, /^direct server=0\.0\.0\.0:15001 /, `the app's own intercepted connection lands on the squatter, its own socket (${own.reply ?? own.error})`)
    await node.removePod(rp)
  })
})
