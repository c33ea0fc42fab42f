// The node-level end-to-end suite on a real container runtime: pod manifest -> real webhook
// over HTTPS -> API stand-in -> kubelet-like harness over CRI -> containerd + runc, whose own
// libcni runs loopback, bridge + host-local and ziti-cni -> real agent -> nft/ip in the pod's
// netns -> the pod's containers (stand-in tunnelers, validator, app), unprivileged, in runc.
import t from 'tap'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { V1Pod } from '@kubernetes/client-node'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { AGENT_BUNDLE, TestNode, sweepLeftovers } from './lib/node.ts'
import { PodStartError } from './lib/kubelet.ts'
import { libcniFor } from './lib/cni-exec.ts'
import { app, appPod, inBatches, infraPod, injected } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { spawnSync } from 'node:child_process'
import { startWebhook } from './lib/webhook.ts'
import { restrictedViolations } from '../../webhook/test/pss-restricted.ts'

/** An identity Secret for a pod; `dialable` is what the stand-in's "controller" grants. */
function identityJson(dialable?: string[]): string {
  return JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' }, ...(dialable ? { standinDialable: dialable } : {}) })
}

t.test('node-level end-to-end on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 2 })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  t.teardown(async () => {
    await node.teardown()
    await webhook?.close()
  })
  await node.start()
  const runtime = await node.containerd.cri.version()
  t.comment(`runtime: ${runtime.runtime_name} ${runtime.runtime_version} (CRI ${runtime.runtime_api_version})`)

  // Another pod on the same bridge: a plain server and the cluster DNS (not Ziti). It runs
  // first: the webhook's config names the cluster DNS address, as an operator's would.
  const infra = await node.runPod(await node.createPod(infraPod()))
  node.clusterDns.push(infra.ip)
  webhook = await startWebhook({ validator: { image: IMAGES.validator }, tproxy: { image: IMAGES.tproxy, args: [], datapath: 'ebpf', clusterDns: [infra.ip] } })
  node.api.admission = webhook.admission

  const secret = (name: string, dialable?: string[]) => node.createSecret('apps', name, { 'identity.json': identityJson(dialable) })
  await secret('billing-identity')
  const billingPod = await node.createPod(appPod('billing', 'apps', {
    'cni.openziti.io/identity-secret': 'billing-identity',
    'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api, logs.ziti:514/udp=logs',
  }))
  const billing = await node.runPod(billingPod)

  await t.test('1. proxy profile: the app reaches each service by its natural name and port, TCP and UDP, and gets the reply', async (t) => {
    t.equal(parseIntent(billingPod.metadata.annotations['cni.openziti.io/interception']!).mode, 'proxy', 'the webhook wrote the intent')
    t.match(billing.netns, /^\/var\/run\/netns\/cni-[0-9a-f-]+$/, 'containerd made the pod netns')
    const pg = await app(node, billing, ['tcp', 'pg.ziti', '5432'])
    t.equal(pg.resolved, '100.64.0.2', 'pg.ziti resolves through the kubelet-written hostAliases')
    t.match(pg.reply, /^ziti-service=postgres listener=15100 /, 'landed on the postgres listener')
    const api = await app(node, billing, ['tcp', 'api.ziti', '443'])
    t.equal(api.resolved, '100.64.0.3')
    t.match(api.reply, /^ziti-service=billing-api listener=15101 /, 'landed on the billing-api listener')
    const logs = await app(node, billing, ['udp', 'logs.ziti', '514'])
    if (!logs.ok || !pg.ok) t.comment(`sidecar log:\n${node.kubelet.logs(billing, 'ziti-tunnel')}`)
    t.match(logs.reply, /^ziti-service=logs listener=15102 via=udp got=ping/, `a connected UDP client gets the reply (${logs.error ?? 'ok'})`)
  })

  await t.test('2. traffic that is not a Ziti service is untouched', async (t) => {
    const r = await app(node, billing, ['tcp', infra.ip, '8080'])
    t.equal(r.reply, `direct server=${infra.ip}:8080 peer=${billing.ip}`)
    const unmapped = await app(node, billing, ['tcp', 'pg.ziti', '5433'])
    t.notOk(unmapped.ok, `a port that is not a service is not redirected (${unmapped.error})`)
  })

  await t.test('3. the fence: other pods cannot use this pod\'s proxy listeners (TCP and UDP)', async (t) => {
    const fromOther = await app(node, infra, ['tcp', billing.ip, '15100'], 'echo')
    t.notOk(fromOther.ok, `another pod connecting to ${billing.ip}:15100 fails (${fromOther.error})`)
    const udpOther = await app(node, infra, ['udp', billing.ip, '15102'], 'echo')
    t.notOk(udpOther.ok, `another pod's datagram to ${billing.ip}:15102 gets no answer (${udpOther.error})`)
    const fromSelf = await app(node, billing, ['tcp', '127.0.0.1', '15100'])
    t.match(fromSelf.reply, /ziti-service=postgres/, 'the pod itself still reaches it over lo')
  })

  await t.test('4. neither the app nor the sidecar can change the rules; both run with no capability at all', async (t) => {
    for (const who of ['app', 'ziti-tunnel']) {
      const status = await node.exec(billing, who, ['grep', '-E', '^(Cap(Eff|Prm|Amb)|NoNewPrivs):', '/proc/self/status'])
      t.match(status.stdout, /CapPrm:\s+0{16}\nCapEff:\s+0{16}\n[\s\S]*CapAmb:\s+0{16}\nNoNewPrivs:\s+1/, `${who}: no capability in any set, no_new_privs`)
      const flush = await node.exec(billing, who, ['nft', 'flush', 'ruleset'])
      t.not(flush.code, 0, `${who}: nft flush ruleset fails`)
      t.match(flush.stderr, /Operation not permitted/, `${who}: EPERM`)
      const route = await node.exec(billing, who, ['ip', 'route', 'del', 'default'])
      t.match(route.stderr, /Operation not permitted/, `${who}: ip route del is EPERM`)
    }
    t.ok(node.hasTable(billing), 'table still there')
    t.match((await app(node, billing, ['tcp', 'pg.ziti', '5432'])).reply, /ziti-service=postgres/, 'still intercepted')
  })

  await t.test('5. tproxy on the ebpf datapath: TCP and UDP reach a plain catch-all with their original destination, no capability in the pod', async (t) => {
    await secret('scanner-identity')
    const pod = await node.createPod(appPod('scanner-ebpf', 'apps', {
      'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'ebpf',
    }))
    const sidecar = injected(pod, 'ziti-tunnel')
    t.same(sidecar.securityContext!.capabilities, { drop: ['ALL'] }, 'the sidecar gets no capability')
    t.same(restrictedViolations(pod), [], 'the whole pod passes Pod Security "restricted"')
    const s = await node.runPod(pod)
    t.match(node.inNetns(s, ['tc', 'filter', 'show', 'dev', 'lo', 'ingress']).stdout, /name ziti_tproxy/, 'tc program attached to lo')
    t.equal(s.statuses.get('ziti-cni-validator')?.exit_code, 0, 'the validator init container passed')
    const tcp = await app(node, s, ['tcp', '100.64.3.7', '443'])
    t.equal(tcp.reply, `tproxy proto=tcp orig_dst=100.64.3.7:443 peer=${s.ip}`, `TCP reaches the plain listener with its original destination, from the pod's own address (${tcp.error ?? 'ok'})`)
    const udp = await app(node, s, ['udp', '100.127.0.9', '5353'])
    t.equal(udp.reply, `tproxy proto=udp orig_dst=100.127.0.9:5353 peer=${s.ip}`, `a connected UDP client gets the reply from the original destination (${udp.error ?? 'ok'})`)
    const resolv = await node.exec(s, 'app', ['cat', '/etc/resolv.conf'])
    t.same(resolv.stdout.split('\n').filter((l) => l.startsWith('nameserver ')), ['nameserver 100.64.0.2'], 'resolv.conf: the tunneler\'s DNS address alone (tproxy.dns: forward)')
    const dns = await app(node, s, ['resolve', 'billing.ziti'])
    t.same(dns.answers, ['100.64.0.7'], `a Ziti name is answered by the tunneler through the datapath (${dns.error ?? 'ok'})`)
    const other = await app(node, s, ['resolve', 'controller.example'])
    t.same(other.answers, ['192.0.2.53'], `other names: the tunneler forwards them to the cluster DNS (ZITI_CNI_DNS_UPSTREAM) (${other.error ?? 'ok'})`)
    const flush = await node.exec(s, 'ziti-tunnel', ['nft', 'flush', 'ruleset'])
    t.match(flush.stderr, /Operation not permitted/, 'the sidecar still cannot touch the rules')
    t.match((await app(node, s, ['tcp', infra.ip, '8080'])).reply, /^direct /, 'other traffic untouched')
    // containerd 1.6 never sends CHECK: the executable is called the way libcni would.
    const cni = libcniFor(node, s, { namespace: 'apps', name: 'scanner-ebpf', uid: pod.metadata.uid })
    await cni.check()
    t.pass('CHECK passes on the live pod')
    node.inNetns(s, ['tc', 'filter', 'del', 'dev', 'lo', 'ingress'])
    const drift = await cni.drift()
    t.match(drift?.error.msg, /eBPF program is not attached/, 'CHECK notices a detached program')
    await node.removePod(s)
  })

  await t.test('5c. ebpf datapath, IPv6: TCP and UDP to an intercepted v6 range, original destination and the pod\'s v6 address as peer', async (t) => {
    const pod = await node.createPod(appPod('scanner-v6', 'apps', { 'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, fd00:ffff::/64' }))
    const s = await node.runPod(pod)
    const v6 = s.ips.find((ip) => ip.includes(':'))
    t.ok(v6, `the pod is dual-stack (${s.ips.join(', ')})`)
    const tcp = await app(node, s, ['tcp', 'fd00:ffff::7', '443'])
    t.equal(tcp.reply, `tproxy proto=tcp orig_dst=[fd00:ffff::7]:443 peer=${v6}`, `TCP over IPv6 (${tcp.error ?? 'ok'})`)
    const udp = await app(node, s, ['udp', 'fd00:ffff::9', '5353'])
    t.equal(udp.reply, `tproxy proto=udp orig_dst=[fd00:ffff::9]:5353 peer=${v6}`, `UDP over IPv6, reply to a connected client (${udp.error ?? 'ok'})`)
    await node.removePod(s)
  })

  await t.test('5a. ebpf datapath exclusions: excluded ports and CIDRs leave for real, and so does the sidecar\'s own traffic', async (t) => {
    const base = { 'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': `100.64.0.0/10, ${infra.ip}`, 'cni.openziti.io/dns-capture': 'false' }
    const direct = `direct server=${infra.ip}:8080 peer=`
    const plain = await node.runPod(await node.createPod(appPod('excl-none', 'apps', base)))
    t.equal((await app(node, plain, ['tcp', infra.ip, '8080'])).reply, `tproxy proto=tcp orig_dst=${infra.ip}:8080 peer=${plain.ip}`, 'an address in the CIDRs is intercepted, even another pod\'s')
    t.equal((await app(node, plain, ['tcp', infra.ip, '8080'], 'ziti-tunnel')).reply, `${direct}${plain.ip}`, 'the sidecar\'s own connection to it leaves for real (bypass mark, main table)')
    const ports = await node.runPod(await node.createPod(appPod('excl-ports', 'apps', { ...base, 'cni.openziti.io/exclude-ports': '8080' })))
    t.equal((await app(node, ports, ['tcp', infra.ip, '8080'])).reply, `${direct}${ports.ip}`, 'an excluded port leaves for real')
    t.equal((await app(node, ports, ['tcp', infra.ip, '9999'])).reply, `tproxy proto=tcp orig_dst=${infra.ip}:9999 peer=${ports.ip}`, 'other ports to the same address are intercepted')
    const cidrs = await node.runPod(await node.createPod(appPod('excl-cidrs', 'apps', { ...base, 'cni.openziti.io/exclude-cidrs': infra.ip })))
    t.equal((await app(node, cidrs, ['tcp', infra.ip, '8080'])).reply, `${direct}${cidrs.ip}`, 'an excluded CIDR leaves for real')
    t.equal((await app(node, cidrs, ['tcp', '100.64.3.7', '443'])).reply, `tproxy proto=tcp orig_dst=100.64.3.7:443 peer=${cidrs.ip}`, 'the rest of the CIDRs is intercepted')
    t.equal(node.inNetns(cidrs, ['sysctl', '-n', 'net.ipv4.conf.all.arp_ignore']).stdout.trim(), '1', 'the pod does not answer ARP for the intercept range on the pod network')
    t.match(node.inNetns(cidrs, ['ip', 'rule', 'show']).stdout, /^10:\s+from all fwmark 0x2a2 lookup main\s*\n100:\s+from all lookup local/m, 'bypass rule, then the local table')
    for (const s of [plain, ports, cidrs]) await node.removePod(s)
  })

  await t.test('5b. nftables TPROXY cannot deliver under a real runtime: a non-root container never holds NET_RAW effectively', async (t) => {
    // Any pod spec can ask for NET_RAW; the kubelet passes it, runc puts it in the bounding set only.
    const asked = await node.createPod({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'net-raw', namespace: 'plain' }, spec: {
      securityContext: { runAsNonRoot: true, runAsUser: 2171, runAsGroup: 2171, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [{ name: 'c', image: IMAGES.tools, securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'], add: ['NET_RAW'] } } }],
    } })
    const s = await node.runPod(asked)
    const caps = await node.exec(s, 'c', ['grep', '-E', '^Cap(Eff|Bnd|Amb):', '/proc/self/status'])
    t.match(caps.stdout, /CapEff:\s+0{16}\nCapBnd:\s+0{12}2000\nCapAmb:\s+0{16}/, 'NET_RAW only in the bounding set')
    const probe = await node.exec(s, 'c', ['/opt/zcni/standins/tproxy-standin', 'probe-transparent'])
    t.equal(probe.code, 1)
    t.match(probe.stdout, /IP_TRANSPARENT: Operation not permitted/, 'so a TPROXY listener cannot be made')
    await node.removePod(s)
    const refused = await node.createPod(appPod('scanner-nft', 'apps', { 'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'nftables' })).then(() => undefined, (e: Error) => e)
    t.match(refused?.message, /cni\.openziti\.io\/datapath: nftables/, 'the webhook refuses the nftables datapath, naming the key')
  })

  await t.test('6. a pod without injection gets no table and a working network', async (t) => {
    const pod = await node.createPod(appPod('plain-app', 'plain', { 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
    t.notOk(pod.metadata.annotations['cni.openziti.io/interception'], 'namespace not opted in: no intent')
    const s = await node.runPod(pod)
    t.notOk(node.hasTable(s))
    t.match((await app(node, s, ['tcp', infra.ip, '8080'])).reply, /^direct /)
    await node.removePod(s)
  })

  await t.test('7. a crafted intent that bypassed the webhook: the sandbox fails with the CNI message, nothing is programmed', async (t) => {
    const stored = node.api.put('pods', { metadata: { name: 'crafted', namespace: 'apps', annotations: { 'cni.openziti.io/interception': '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2\\"; flush ruleset","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}' } }, spec: { nodeName: 'e2e-node', containers: [{ name: 'app', image: IMAGES.tools }] } }) as V1Pod
    const before = readdirSync(node.stateDir).length
    const err = await node.runPod(stored).then(() => undefined, (e: Error) => e)
    t.match(err?.message, /plugin type="ziti-cni" failed \(add\): .*field dnat\[0\]\.dst: ".*" is not an IPv4 address/, 'containerd reports the CNI msg, as a kubelet event would')
    t.equal(readdirSync(node.stateDir).length, before, 'the agent kept no state for it')
    t.match(node.agentLog.join('\n'), /field dnat\[0\]\.dst/, 'the agent logged the refusal')
  })

  await t.test('8. agent stopped or hung: plain pods start, intercepted pods fail closed, then recover', async (t) => {
    // With the agent down the intent snapshot decides: a pod it shows without intent starts.
    const plainPod = await node.createPod(appPod('plain-while-down', 'plain'))
    const snapshotFile = join(node.socket, '..', 'intents.json')
    const seen = Date.now() + 10_000
    while (!readFileSync(snapshotFile, 'utf8').includes(plainPod.metadata.uid) && Date.now() < seen) await new Promise((r) => setTimeout(r, 50))
    await node.stopAgent()
    const plain = await node.runPod(plainPod)
    t.ok(plain.ip, 'pod without intent starts')
    await secret('billing-2-identity')
    const pod = await node.createPod(appPod('billing-2', 'apps', { 'cni.openziti.io/identity-secret': 'billing-2-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
    const down = await node.runPod(pod).then(() => undefined, (e: Error) => e)
    t.match(down?.message, /plugin type="ziti-cni" failed \(add\): ziti-cni agent is down .* fails closed/, 'fails closed while the agent is down')
    await node.startAgent()
    node.agent!.kill('SIGSTOP')
    const hung = await node.runPod(pod).then(() => undefined, (e: Error) => e)
    node.agent!.kill('SIGCONT')
    t.match(hung?.message, /no answer from the agent .* fails closed/, 'fails closed while the agent hangs')
    const s = await node.runPod(pod)
    t.ok(node.hasTable(s), 'once the agent answers, the same pod succeeds')
    t.match((await app(node, s, ['tcp', 'pg.ziti', '5432'])).reply, /ziti-service=postgres/)
    await node.removePod(s)
    await node.removePod(plain)
  })

  await t.test('9. CHECK reports drift on a live pod; StopPodSandbox (DEL) cleans the state', async (t) => {
    const cni = libcniFor(node, billing, { namespace: 'apps', name: 'billing', uid: billingPod.metadata.uid })
    await cni.check()
    node.inNetns(billing, ['nft', 'delete', 'chain', 'inet', 'ziti_cni', 'fence_input'])
    const err = await cni.drift()
    t.equal(err?.error.code, 104, 'drift reported')
    t.ok(readdirSync(node.stateDir).some((f) => f.startsWith(billing.sandboxId)), 'state recorded by ADD')
    await node.removePod(billing)
    t.notOk(readdirSync(node.stateDir).some((f) => f.startsWith(billing.sandboxId)), 'DEL from StopPodSandbox removed it')
  })

  await t.test('10. 50 pods at once, mixed profiles: each one correct, no cross-talk', async (t) => {
    const N = 50
    await Promise.all(Array.from({ length: N }, (_, i) => secret(`id-${i}`)))
    const specs = Array.from({ length: N }, (_, i) => i % 2 === 0
      ? appPod(`proxy-${i}`, 'apps', { 'cni.openziti.io/identity-secret': `id-${i}`, 'cni.openziti.io/services': `svc.ziti:80=svc-${i}, db-${i}.ziti:5432=db-${i}` })
      : appPod(`tproxy-${i}`, 'apps', { 'cni.openziti.io/identity-secret': `id-${i}`, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'ebpf', 'cni.openziti.io/intercept-cidrs': `100.64.${i}.0/24`, 'cni.openziti.io/dns-capture': 'false' }))
    const pods = await Promise.all(specs.map((m) => node.createPod(m)))
    const started = Date.now()
    // Two cores: a kubelet starts pods concurrently; ten at a time keeps probes honest.
    const running = await inBatches(pods.map((p) => () => node.runPod(p, { startupCapMs: 60_000 })), 10)
    t.comment(`50 pods (sandbox, validator, sidecar, app) running after ${Date.now() - started} ms`)
    const results = await inBatches(running.map((s, i) => () => i % 2 === 0
      ? Promise.all([app(node, s, ['tcp', 'svc.ziti', '80']), app(node, s, ['tcp', `db-${i}.ziti`, '5432'])])
      : Promise.all([app(node, s, ['tcp', `100.64.${i}.9`, '443']), app(node, s, ['tcp', `100.64.${(i + 1) % N}.9`, '443'])])), 10)
    let good = 0
    results.forEach(([a, b], i) => {
      const ok = i % 2 === 0
        ? a.reply?.startsWith(`ziti-service=svc-${i} `) && b.reply?.startsWith(`ziti-service=db-${i} `)
        : a.reply?.startsWith(`tproxy proto=tcp orig_dst=100.64.${i}.9:443 `) && !b.ok
      if (ok) good++
      else t.fail(`pod ${i}: ${JSON.stringify([a, b])}`)
    })
    t.equal(good, N, 'every pod reached only its own services (and a neighbour\'s CIDR was not captured)')
    await inBatches(running.map((s) => () => node.removePod(s)), 10)
  })

  await t.test('11. the primary CNI rewrites its conflist: ziti-cni is back within seconds', async (t) => {
    const file = join(node.confDir, '10-bridge.conflist')
    writeFileSync(file, node.primaryConflist({ mtu: 1400 }))
    const started = Date.now()
    while (!readFileSync(file, 'utf8').includes('ziti-cni') && Date.now() - started < 10_000) await new Promise((r) => setTimeout(r, 50))
    const ms = Date.now() - started
    t.ok(readFileSync(file, 'utf8').includes('ziti-cni'), `re-inserted after ${ms} ms`)
    t.match(readFileSync(file, 'utf8'), /"mtu": 1400/, 'the primary CNI\'s change is kept')
    // The agent logs asynchronously; give its line a moment to arrive.
    for (let i = 0; i < 50 && !/likely by the bridge CNI/.test(node.agentLog.join('\n')); i++) await new Promise((r) => setTimeout(r, 50))
    t.match(node.agentLog.join('\n'), /likely by the bridge CNI/, 'the warning names the likely culprit')
    await secret('after-rewrite-identity')
    const s = await node.runPod(await node.createPod(appPod('after-rewrite', 'apps', { 'cni.openziti.io/identity-secret': 'after-rewrite-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' })))
    t.match((await app(node, s, ['tcp', 'pg.ziti', '5432'])).reply, /ziti-service=postgres/, 'the next pod is intercepted')
    await node.removePod(s)
  })

  await t.test('12. a pod that started before the plugin was installed: its validator exits 126, the agent recreates it', async (t) => {
    // Node boot race: no agent yet and no ziti-cni entry in the CNI config.
    await node.stopAgent()
    const un = spawnSync(process.execPath, [AGENT_BUNDLE, 'uninstall', '--cni-bin-dir', node.binDir, '--cni-conf-dir', node.confDir, '--plugin-kubeconfig', node.pluginKubeconfig, '--socket', node.socket, '--state-dir', node.stateDir], { encoding: 'utf8' })
    t.equal(un.status, 0, un.stderr)
    await secret('early-identity')
    const annotations = { 'cni.openziti.io/identity-secret': 'early-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }
    const early = await node.createPod(appPod('early', 'apps', annotations))
    const failed = await node.runPod(early).then(() => undefined, (e: unknown) => e as PodStartError)
    t.type(failed, PodStartError)
    t.equal(failed?.pod.statuses.get('ziti-cni-validator')?.exit_code, 126, 'the validator init container exits with EXIT_NOT_INTERCEPTED')
    t.match(failed?.message, /traffic is NOT intercepted: 100\.64\.0\.2:5432 did not reach 127\.0\.0\.1:15100/)
    t.notOk(failed!.pod.containers.has('ziti-tunnel'), 'nothing after it started')
    // The kubelet reported the exit code; the agent comes up and repairs.
    await node.startAgent()
    const end = Date.now() + 15_000
    while (node.api.get('pods', 'apps', 'early') && Date.now() < end) await new Promise((r) => setTimeout(r, 100))
    t.notOk(node.api.get('pods', 'apps', 'early'), 'the agent deleted the unintercepted pod')
    t.match(await node.metrics(), /ziti_cni_repairs_total\{action="deleted"\} 1/)
    await node.removePod(failed!.pod)
    // Its controller recreates it; this time the chain includes ziti-cni and the validator agrees.
    const again = await node.runPod(await node.createPod(appPod('early', 'apps', annotations)))
    t.ok(node.hasTable(again))
    t.equal(again.statuses.get('ziti-cni-validator')?.exit_code, 0)
    t.match(node.kubelet.logs(again, 'ziti-cni-validator'), /ok, 100\.64\.0\.2:5432\/tcp is redirected to 127\.0\.0\.1:15100/)
    await node.removePod(again)
  })

  await t.test('13. uninstall: the DaemonSet is gone, the agent removes the plugin, and every pod still starts', async (t) => {
    node.api.delete('daemonsets', 'ziti-cni-system', 'ziti-cni-agent')
    await node.stopAgent()
    t.notMatch(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8'), /ziti-cni/, 'removed from the conflist')
    t.ok(readdirSync(node.binDir).includes('ziti-cni'), 'executable kept for the DELs of pods from before (e2e/node/uninstall.test.ts)')
    await secret('after-uninstall-identity')
    const s = await node.runPod(await node.createPod(appPod('after-uninstall', 'apps', { 'cni.openziti.io/identity-secret': 'after-uninstall-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' })), { initTimeoutMs: 20_000 }).then(() => undefined, (e: PodStartError) => e)
    t.equal(s?.pod.statuses.get('ziti-cni-validator')?.exit_code, 126, 'the sandbox starts (nothing blocks it); the validator says it is not intercepted')
    const plain = await node.runPod(await node.createPod(appPod('plain-after-uninstall', 'plain')))
    t.match((await app(node, plain, ['tcp', infra.ip, '8080'])).reply, /^direct /, 'plain pods are unaffected')
  })
})
