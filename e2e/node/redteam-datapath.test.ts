// Red team, datapath half, on containerd + runc: each attack as its attacker would try it,
// asserting that it fails and showing why. The attackers: another tenant's pod on the same
// pod network (the "infra" pod here), and the shell user in the app container (uid 1000, no
// capability, no_new_privs). The world is scenarios.test.ts's: real webhook, real agent,
// containerd's libcni, the proxy stand-in reproducing `ziti tunnel proxy`'s dynamic listeners.
import t from 'tap'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { app, appPod, infraPod, STANDINS } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { startWebhook } from './lib/webhook.ts'

t.test('datapath red team on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 6 })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  t.teardown(async () => {
    await node.teardown()
    await webhook?.close()
  })
  await node.start()
  const infra = await node.runPod(await node.createPod(infraPod()))
  node.clusterDns.push(infra.ip)
  webhook = await startWebhook({ validator: { image: IMAGES.validator }, tproxy: { image: IMAGES.tproxy, args: [], datapath: 'ebpf', clusterDns: [infra.ip] }, egress: { clusterDns: [infra.ip] } })
  node.api.admission = webhook.admission

  // The identity may dial "vault" too, whose proxy.v1 config asks for port 9000: the tunneler
  // opens 0.0.0.0:9000 although admission only knew pg.ziti (proxy.go:143-197 at v2.0.3).
  await node.createSecret('apps', 'victim-identity', { 'identity.json': JSON.stringify({
    ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' },
    standinDialable: ['postgres', 'vault'], standinProxyV1: { vault: { port: 9000, protocols: ['tcp', 'udp'] } },
  }) })
  const manifest = appPod('victim', 'apps', { 'cni.openziti.io/identity-secret': 'victim-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' })
  // The app's own server, declared: it must stay reachable from outside.
  manifest.spec!.containers.push({ name: 'web', image: IMAGES.tools, command: ['node', `${STANDINS}/echo-server.ts`, '::', '8080'], ports: [{ containerPort: 8080 }], securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } })
  const victimPod = await node.createPod(manifest)
  const victim = await node.runPod(victimPod)
  const v6 = victim.ips.find((ip) => ip.includes(':'))
  t.ok(!JSON.stringify(parseIntent(victimPod.metadata.annotations['cni.openziti.io/interception']!)).includes('9000'), 'port 9000 is in no intent: admission never heard of it')
  for (let i = 0; i < 50 && !/service vault is listening addr=0\.0\.0\.0:9000/.test(node.kubelet.logs(victim, 'ziti-tunnel')); i++) await new Promise((r) => setTimeout(r, 100))
  t.match(node.kubelet.logs(victim, 'ziti-tunnel'), /service vault is listening addr=0\.0\.0\.0:9000/, 'the tunneler opened the dynamic proxy.v1 listener on 0.0.0.0:9000')
  t.equal(victim.statuses.get('ziti-cni-validator')?.exit_code, 0, 'the validator passed, fence probe included')
  t.match(node.kubelet.logs(victim, 'ziti-cni-validator'), /the fence drops what comes in on eth0 to undeclared ports/, 'the validator says what it proved')

  await t.test('another pod dials the dynamic proxy.v1 listener (port unknown at admission), TCP and UDP, v4 and v6', async (t) => {
    for (const proto of ['tcp', 'udp']) {
      for (const ip of [victim.ip, ...(v6 ? [v6] : [])]) {
        const r = await app(node, infra, [proto, ip, '9000'], 'echo')
        t.notOk(r.ok, `other pod -> ${proto} ${ip.includes(':') ? `[${ip}]` : ip}:9000 fails: ${r.error ?? r.reply}`)
      }
    }
    const self = await app(node, victim, ['tcp', '127.0.0.1', '9000'])
    t.match(self.reply, /^ziti-service=vault listener=9000/, 'the pod\'s own app still reaches it over lo (so the listener is really there)')
    const selfUdp = await app(node, victim, ['udp', '127.0.0.1', '9000'])
    t.match(selfUdp.reply, /^ziti-service=vault listener=9000 via=udp/, '...over UDP too')
  })

  await t.test('the app\'s declared containerPort stays reachable from another pod, v4 and v6', async (t) => {
    for (const ip of [victim.ip, ...(v6 ? [v6] : [])]) {
      const r = await app(node, infra, ['tcp', ip, '8080'], 'echo')
      t.match(r.reply, /^direct server=:::8080 /, `other pod -> ${ip}:8080 (declared) answers (${r.error ?? 'ok'})`)
    }
  })

  await t.test('another pod dials the tproxy catch-all (ebpf datapath), TCP and UDP, v4 and v6', async (t) => {
    await node.createSecret('apps', 'scanner-identity', { 'identity.json': JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' } }) })
    const pod = await node.createPod(appPod('scanner', 'apps', { 'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, fd00:ffff::/64' }))
    const s = await node.runPod(pod)
    t.equal(s.statuses.get('ziti-cni-validator')?.exit_code, 0, 'the validator passed')
    const own = await app(node, s, ['tcp', '100.64.3.7', '443'])
    t.match(own.reply, /^tproxy proto=tcp orig_dst=100\.64\.3\.7:443/, 'the pod\'s own traffic reaches the catch-all')
    const s6 = s.ips.find((ip) => ip.includes(':'))
    for (const proto of ['tcp', 'udp']) {
      for (const ip of [s.ip, ...(s6 ? [s6] : [])]) {
        const r = await app(node, infra, [proto, ip, '15001'], 'echo')
        t.notOk(r.ok, `other pod -> ${proto} ${ip}:15001 (the catch-all) fails: ${r.error ?? r.reply}`)
      }
    }
    await node.removePod(s)
  })

  await t.test('the app shell cannot change the datapath: nft, ip route, ip link, tc all EPERM; /dev/net/tun cannot be opened', async (t) => {
    const tries: Array<[string, string[]]> = [
      ['nft flush ruleset', ['nft', 'flush', 'ruleset']],
      ['ip route add', ['ip', 'route', 'add', '169.254.169.254/32', 'dev', 'eth0']],
      ['ip link set', ['ip', 'link', 'set', 'dev', 'lo', 'down']],
      ['tc qdisc add', ['tc', 'qdisc', 'add', 'dev', 'lo', 'clsact']],
    ]
    for (const [what, argv] of tries) {
      const r = await node.exec(victim, 'app', argv)
      t.not(r.code, 0, `${what} fails`)
      t.match(r.stderr, /Operation not permitted/, `${what}: ${r.stderr.split('\n').find((l) => l.includes('Operation not permitted'))?.trim()}`)
    }
    // Outside tun mode the runtime gives the container no tun node, and making one needs
    // CAP_MKNOD. (In tun mode the device plugin mounts one, 0600 and owned by the sidecar's uid:
    // cni-plugin/test/deviceplugin.test.ts.)
    const tun = await node.exec(victim, 'app', ['sh', '-c', 'exec 3<>/dev/net/tun'])
    t.not(tun.code, 0, 'opening /dev/net/tun fails')
    t.match(tun.stderr, /Permission denied|Operation not permitted|nonexistent directory|No such file/, `/dev/net/tun: ${tun.stderr.trim()}`)
    t.ok(node.hasTable(victim), 'the table is still there')
    t.notOk((await app(node, infra, ['tcp', victim.ip, '9000'], 'echo')).ok, 'and the fence still holds')
  })

  await t.test('egress: ziti-only: the app shell reaches a Ziti name and the cluster DNS, nothing else directly', async (t) => {
    const pod = await node.createPod(appPod('locked', 'apps', { 'cni.openziti.io/identity-secret': 'victim-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres', 'cni.openziti.io/egress': 'ziti-only' }))
    t.same(parseIntent(pod.metadata.annotations['cni.openziti.io/interception']!).egress, { dns: [infra.ip], cidrs: [], ports: [] }, 'the webhook wrote the lockdown with the cluster DNS')
    const s = await node.runPod(pod)
    t.equal(s.statuses.get('ziti-cni-validator')?.exit_code, 0, 'the validator passed')
    t.match(node.kubelet.logs(s, 'ziti-cni-validator'), /egress is locked down \(udp 192\.0\.2\.1:9: EPERM\)/, 'the validator proved the lockdown')
    const control = await app(node, victim, ['tcp', infra.ip, '8080'])
    t.match(control.reply, /^direct /, 'control: a pod without the lockdown reaches the other pod directly')
    const metadata = await app(node, s, ['tcp', '169.254.169.254', '80'])
    t.notOk(metadata.ok, `app -> 169.254.169.254:80 fails at once: ${metadata.error}`)
    t.equal(metadata.error, 'ECONNREFUSED', 'reset by the lockdown')
    const direct = await app(node, s, ['tcp', infra.ip, '8080'])
    t.equal(direct.error, 'ECONNREFUSED', `app -> another pod ${infra.ip}:8080 directly fails: ${direct.error}`)
    // UDP: the validator above proved it (a datagram out fails with EPERM); the kernel test
    // shows it against a real UDP listener.
    if (v6) {
      const infra6 = infra.ips.find((ip) => ip.includes(':'))
      if (infra6) t.equal((await app(node, s, ['tcp', infra6, '8080'])).error, 'ECONNREFUSED', `app -> [${infra6}]:8080 (IPv6) fails too`)
    }
    t.match((await app(node, s, ['tcp', 'pg.ziti', '5432'])).reply, /^ziti-service=postgres /, 'a Ziti name still works')
    t.same((await app(node, s, ['resolve', 'controller.example'])).answers, ['192.0.2.53'], 'the cluster DNS still answers')
    t.match((await app(node, s, ['tcp', infra.ip, '8080'], 'ziti-tunnel')).reply, /^direct /, 'the sidecar\'s own egress is exempt (its controller and routers)')
    await node.removePod(s)
  })
})
