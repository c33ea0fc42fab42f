// The node-level end-to-end suite: pod manifest -> real webhook over HTTPS -> API stand-in
// -> real runtime-like CNI chain (loopback, bridge+host-local, ziti-cni) -> real agent ->
// nft/ip in a fresh netns -> unprivileged stand-in sidecars and app clients.
import t from 'tap'
import { spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { V1Pod } from '@kubernetes/client-node'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { AGENT_BUNDLE, TestNode, sweepLeftovers, type PodSandbox } from './lib/node.ts'
import { CniCallError } from './lib/runtime.ts'
import { APP_UID, app, node as nodeScript, runInPod, startInPod, startSidecar, validatorCommand } from './lib/processes.ts'
import { startWebhook } from './lib/webhook.ts'
import { restrictedViolations } from '../../webhook/test/pss-restricted.ts'

const restricted = {
  securityContext: { runAsNonRoot: true, runAsUser: APP_UID, seccompProfile: { type: 'RuntimeDefault' } },
  containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }],
}
function manifest(name: string, namespace: string, annotations: Record<string, string>): V1Pod & { metadata: { name: string; namespace: string } } {
  return { apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace, annotations }, spec: structuredClone(restricted) as V1Pod['spec'] }
}
const SIDECAR = { uid: 2171, gid: 2171 }

/** Runs the injected validator init container's command with its uid and env, as the kubelet would. */
function runValidator(netns: string, pod: V1Pod) {
  const c = pod.spec!.initContainers!.find((x) => x.name === 'ziti-cni-validator')!
  const uid = c.securityContext!.runAsUser!
  return runInPod(netns, { uid, gid: uid }, ['env', ...c.env!.map((e) => `${e.name}=${e.value}`), ...validatorCommand()])
}

async function inBatches<T>(jobs: Array<() => Promise<T>>, size: number): Promise<T[]> {
  const out: T[] = []
  for (let i = 0; i < jobs.length; i += size) out.push(...await Promise.all(jobs.slice(i, i + size).map((j) => j())))
  return out
}
const hasTable = (s: PodSandbox) => spawnSync('ip', ['netns', 'exec', s.netns, 'nft', 'list', 'table', 'inet', 'ziti_cni']).status === 0

t.test('node-level end-to-end', rootOnly(['nft', 'ip', 'nsenter', 'setpriv']), async (t) => {
  sweepLeftovers()
  const webhook = await startWebhook()
  const node = new TestNode({ id: 2, admission: webhook.admission })
  const procs: ChildProcess[] = []
  t.teardown(async () => {
    for (const p of procs) p.kill('SIGKILL')
    await node.teardown()
    await webhook.close()
  })
  await node.start()

  // Another "pod" on the same bridge: a plain server and the cluster DNS (not Ziti).
  const infraPod = await node.createPod(manifest('infra', 'plain', {}))
  const infra = await node.runSandbox(infraPod)
  procs.push(await startInPod(infra.netns, { uid: 3000, gid: 3000 }, nodeScript('echo-server.ts', infra.ip, '8080')))
  procs.push(await startInPod(infra.netns, { uid: 3000, gid: 3000, caps: ['NET_BIND_SERVICE'] }, nodeScript('dns-server.ts', infra.ip, '53', '192.0.2.53')))

  const billingPod = await node.createPod(manifest('billing', 'apps', {
    'cni.openziti.io/identity-secret': 'billing-identity',
    'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api',
  }))
  const billing = await node.runSandbox(billingPod)
  procs.push(await startSidecar(billing.netns, billingPod))

  await t.test('1. proxy profile: the app reaches each service by its natural name and port', async (t) => {
    t.equal(parseIntent(billingPod.metadata.annotations['cni.openziti.io/interception']).mode, 'proxy', 'the webhook wrote the intent')
    const pg = await app(billing.netns, 'tcp', 'pg.ziti', '5432')
    t.equal(pg.resolved, '100.64.0.2', 'pg.ziti resolves through the injected hostAliases')
    t.match(pg.reply, /^ziti-service=postgres listener=15100 /, 'landed on the postgres listener')
    const api = await app(billing.netns, 'tcp', 'api.ziti', '443')
    t.equal(api.resolved, '100.64.0.3')
    t.match(api.reply, /^ziti-service=billing-api listener=15101 /, 'landed on the billing-api listener')
  })

  await t.test('2. traffic that is not a Ziti service is untouched', async (t) => {
    const r = await app(billing.netns, 'tcp', infra.ip, '8080')
    t.equal(r.reply, `direct server=${infra.ip}:8080 peer=${billing.ip}`)
    const unmapped = await app(billing.netns, 'tcp', 'pg.ziti', '5433')
    t.notOk(unmapped.ok, 'a port that is not a service is not redirected')
  })

  await t.test('3. the fence: other pods cannot use this pod\'s proxy listeners', async (t) => {
    const fromOther = await app(infra.netns, 'tcp', billing.ip, '15100')
    t.notOk(fromOther.ok, `another pod connecting to ${billing.ip}:15100 fails (${fromOther.error})`)
    const fromSelf = await app(billing.netns, 'tcp', '127.0.0.1', '15100')
    t.match(fromSelf.reply, /ziti-service=postgres/, 'the pod itself still reaches it over lo')
  })

  await t.test('4. neither the app nor the sidecar can change the rules', async (t) => {
    for (const [who, id] of [['app', { uid: APP_UID, gid: APP_UID }], ['sidecar', SIDECAR]] as const) {
      const flush = await runInPod(billing.netns, id, ['nft', 'flush', 'ruleset'])
      t.not(flush.code, 0, `${who}: nft flush ruleset fails`)
      t.match(flush.stderr, /Operation not permitted/, `${who}: EPERM`)
      const route = await runInPod(billing.netns, id, ['ip', 'route', 'del', 'default'])
      t.match(route.stderr, /Operation not permitted/, `${who}: ip route del is EPERM`)
    }
    t.ok(hasTable(billing), 'table still there')
    t.match((await app(billing.netns, 'tcp', 'pg.ziti', '5432')).reply, /ziti-service=postgres/, 'still intercepted')
  })

  await t.test('5. tproxy profile: TCP, UDP and DNS capture with the original destination', async (t) => {
    const pod = await node.createPod(manifest('scanner', 'apps', {
      'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/dns-capture': 'true',
    }))
    const s = await node.runSandbox(pod, { resolvConf: `nameserver ${infra.ip}\noptions timeout:1 attempts:1\n` })
    procs.push(await startSidecar(s.netns, pod))
    procs.push(await startInPod(s.netns, SIDECAR, nodeScript('dns-server.ts', '127.0.0.1', '15053', '100.64.0.7')))
    const tcp = await app(s.netns, 'tcp', '100.64.3.7', '443')
    t.match(tcp.reply, new RegExp(`^tproxy proto=tcp orig_dst=100\\.64\\.3\\.7:443 peer=${s.ip.replace(/\./g, '\\.')}`), 'TCP arrives with its original destination')
    const udp = await app(s.netns, 'udp', '100.127.0.9', '5353')
    t.match(udp.reply, /^tproxy proto=udp orig_dst=100\.127\.0\.9:5353/, 'UDP arrives with its original destination')
    const dns = await app(s.netns, 'resolve', 'billing.ziti')
    t.same(dns.answers, ['100.64.0.7'], 'the app\'s DNS query is captured by the sidecar\'s DNS port')
    const own = await runInPod(s.netns, SIDECAR, nodeScript('app-client.ts', 'resolve', 'controller.example'))
    t.same(JSON.parse(own.stdout).answers, ['192.0.2.53'], 'the sidecar\'s own DNS query reaches the cluster DNS')
    const direct = await app(s.netns, 'tcp', infra.ip, '8080')
    t.match(direct.reply, /^direct /, 'addresses outside the intercept CIDRs are untouched')
    const fromOther = await app(infra.netns, 'tcp', s.ip, '15001')
    t.notOk(fromOther.ok, 'the catch-all port is fenced too')
    await node.removeSandbox(s)
  })

  await t.test('5b. tproxy over the eBPF datapath: the same interception with no capability anywhere in the pod', async (t) => {
    const pod = await node.createPod(manifest('scanner-ebpf', 'apps', {
      'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'ebpf',
    })) as V1Pod
    const sidecar = pod.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!
    t.same(sidecar.securityContext!.capabilities, { drop: ['ALL'] }, 'the sidecar gets no capability')
    t.same(restrictedViolations(pod), [], 'the whole pod passes Pod Security "restricted"')
    t.notMatch(pod.metadata!.annotations!['cni.openziti.io/interception'], /"dns"/, 'DNS capture is off on the ebpf datapath')
    const s = await node.runSandbox(pod)
    t.match(spawnSync('ip', ['netns', 'exec', s.netns, 'tc', 'filter', 'show', 'dev', 'lo', 'ingress'], { encoding: 'utf8' }).stdout, /name ziti_tproxy/, 'tc program attached to lo')
    const valid = await runValidator(s.netns, pod)
    t.equal(valid.code, 0, valid.stderr)
    procs.push(await startSidecar(s.netns, pod))
    const tcp = await app(s.netns, 'tcp', '100.64.3.7', '443')
    t.match(tcp.reply, /^tproxy proto=tcp orig_dst=100\.64\.3\.7:443 /, 'TCP reaches a plain listener with its original destination')
    const udp = await app(s.netns, 'udp', '100.127.0.9', '5353')
    t.match(udp.reply, /^tproxy proto=udp orig_dst=100\.127\.0\.9:5353/, 'UDP too, and the reply comes from the original destination')
    const asUser = await runInPod(s.netns, SIDECAR, ['nft', 'flush', 'ruleset'])
    t.match(asUser.stderr, /Operation not permitted/, 'the sidecar still cannot touch the rules')
    t.match((await app(s.netns, 'tcp', infra.ip, '8080')).reply, /^direct /, 'other traffic untouched')
    await node.runtime.check(s)
    spawnSync('ip', ['netns', 'exec', s.netns, 'tc', 'filter', 'del', 'dev', 'lo', 'ingress'])
    const drift = await node.runtime.check(s).then(() => undefined, (e: unknown) => e as CniCallError)
    t.match(drift?.error.msg, /eBPF program is not attached/, 'CHECK notices a detached program')
    await node.removeSandbox(s)
  })

  await t.test('6. a pod without injection gets no table and a working network', async (t) => {
    const pod = await node.createPod(manifest('plain-app', 'plain', { 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
    t.notOk(pod.metadata.annotations['cni.openziti.io/interception'], 'namespace not opted in: no intent')
    const s = await node.runSandbox(pod)
    t.notOk(hasTable(s))
    t.match((await app(s.netns, 'tcp', infra.ip, '8080')).reply, /^direct /)
    await node.removeSandbox(s)
  })

  await t.test('7. a crafted intent that bypassed the webhook programs nothing', async (t) => {
    const stored = node.api.put('pods', { metadata: { name: 'crafted', namespace: 'apps', annotations: { 'cni.openziti.io/interception': '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2\\"; flush ruleset","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}' } }, spec: { nodeName: 'e2e-node', containers: [] } })
    const err = await node.runSandbox(stored).then(() => undefined, (e: unknown) => e as CniCallError)
    t.equal(err?.plugin, 'ziti-cni', 'the ziti-cni step failed')
    t.same(Object.keys(err?.error ?? {}).sort(), ['cniVersion', 'code', 'details', 'msg'], 'the spec error JSON')
    t.equal(err?.error.code, 101)
    t.match(err?.error.msg, /field dnat\[0\]\.dst: ".*" is not an IPv4 address/)
    t.ok(err?.netns, 'the failed pod\'s netns was kept for inspection')
    t.equal(spawnSync('ip', ['netns', 'exec', err!.netns!, 'nft', 'list', 'ruleset'], { encoding: 'utf8' }).stdout.trim(), '', 'its ruleset is empty')
    await node.runtime.del({ containerId: 'x', netnsPath: `/var/run/netns/${err!.netns}`, ifName: 'eth0', pod: { namespace: 'apps', name: 'crafted', uid: stored.metadata.uid! } })
    node.deleteNetns(err!.netns!)
  })

  await t.test('8. agent stopped: plain pods start, intercepted pods fail closed, then recover', async (t) => {
    await node.stopAgent()
    const plain = await node.runSandbox(await node.createPod(manifest('plain-while-down', 'plain', {})))
    t.ok(plain.ip, 'pod without intent starts')
    const pod = await node.createPod(manifest('billing-2', 'apps', { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
    const err = await node.runSandbox(pod).then(() => undefined, (e: unknown) => e as CniCallError)
    t.equal(err?.error.code, 11)
    t.match(err?.error.msg, /agent is down/)
    await node.startAgent()
    const s = await node.runSandbox(pod)
    t.ok(hasTable(s), 'after the agent restarts, the same pod succeeds')
    await node.removeSandbox(s)
    await node.removeSandbox(plain)
  })

  await t.test('9. CHECK reports drift; DEL after the netns is gone succeeds; state is cleaned', async (t) => {
    await node.runtime.check(billing)
    spawnSync('ip', ['netns', 'exec', billing.netns, 'nft', 'delete', 'chain', 'inet', 'ziti_cni', 'fence_input'])
    const err = await node.runtime.check(billing).then(() => undefined, (e: unknown) => e as CniCallError)
    t.equal(err?.error.code, 104, 'drift reported')
    await node.removeSandbox(billing, { netnsFirst: true })
    t.notOk(existsSync(join(node.stateDir, `${billing.containerId}_eth0.json`)))
  })

  await t.test('10. 50 pods at once, mixed profiles: each one correct, no cross-talk', async (t) => {
    const N = 50
    const specs = Array.from({ length: N }, (_, i) => i % 2 === 0
      ? manifest(`proxy-${i}`, 'apps', { 'cni.openziti.io/identity-secret': `id-${i}`, 'cni.openziti.io/services': `svc.ziti:80=svc-${i}, db-${i}.ziti:5432=db-${i}` })
      : manifest(`tproxy-${i}`, 'apps', { 'cni.openziti.io/identity-secret': `id-${i}`, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': `100.64.${i}.0/24`, 'cni.openziti.io/dns-capture': 'false' }))
    const started = Date.now()
    const pods = await Promise.all(specs.map((m) => node.createPod(m)))
    const sandboxes = await Promise.all(pods.map((p) => node.runSandbox(p)))
    t.comment(`50 concurrent ADDs through the chain took ${Date.now() - started} ms`)
    const sidecars = await inBatches(pods.map((p, i) => () => startSidecar(sandboxes[i]!.netns, p)), 10)
    procs.push(...sidecars)
    // Two cores: the clients run ten at a time so a slow start is never mistaken for a failure.
    const results = await inBatches(sandboxes.map((s, i) => () => i % 2 === 0
      ? Promise.all([app(s.netns, 'tcp', 'svc.ziti', '80'), app(s.netns, 'tcp', `db-${i}.ziti`, '5432')])
      : Promise.all([app(s.netns, 'tcp', `100.64.${i}.9`, '443'), app(s.netns, 'tcp', `100.64.${(i + 1) % N}.9`, '443')])), 10)
    let good = 0
    results.forEach(([a, b], i) => {
      const ok = i % 2 === 0
        ? a.reply?.startsWith(`ziti-service=svc-${i} `) && b.reply?.startsWith(`ziti-service=db-${i} `)
        : a.reply?.startsWith(`tproxy proto=tcp orig_dst=100.64.${i}.9:443 peer=${sandboxes[i]!.ip}`) && !b.ok
      if (ok) good++
      else t.fail(`pod ${i}: ${JSON.stringify([a, b])}`)
    })
    t.equal(good, N, 'every pod reached only its own services (and a neighbour\'s CIDR was not captured)')
    for (const p of sidecars) p.kill('SIGKILL')
    await Promise.all(sandboxes.map((s) => node.removeSandbox(s)))
  })

  await t.test('11. the primary CNI rewrites its conflist: ziti-cni is back within seconds', async (t) => {
    const file = join(node.confDir, '10-bridge.conflist')
    writeFileSync(file, node.primaryConflist({ mtu: 1400 }))
    const started = Date.now()
    while (!readFileSync(file, 'utf8').includes('ziti-cni') && Date.now() - started < 10_000) await new Promise((r) => setTimeout(r, 50))
    const ms = Date.now() - started
    t.ok(readFileSync(file, 'utf8').includes('ziti-cni'), `re-inserted after ${ms} ms`)
    t.match(readFileSync(file, 'utf8'), /"mtu": 1400/, 'the primary CNI\'s change is kept')
    t.match(node.agentLog.join('\n'), /likely by the bridge CNI/, 'the warning names the likely culprit')
    const pod = await node.createPod(manifest('after-rewrite', 'apps', { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
    const s = await node.runSandbox(pod)
    procs.push(await startSidecar(s.netns, pod))
    t.match((await app(s.netns, 'tcp', 'pg.ziti', '5432')).reply, /ziti-service=postgres/, 'the next pod is intercepted')
    await node.removeSandbox(s)
  })

  await t.test('12. a pod that started before the plugin was installed is caught by its validator and recreated', async (t) => {
    // Node boot race: no agent yet and no ziti-cni entry in the CNI config.
    await node.stopAgent()
    const un = spawnSync(process.execPath, [AGENT_BUNDLE, 'uninstall', '--cni-bin-dir', node.binDir, '--cni-conf-dir', node.confDir, '--plugin-kubeconfig', node.pluginKubeconfig], { encoding: 'utf8' })
    t.equal(un.status, 0, un.stderr)
    const services = { 'cni.openziti.io/identity-secret': 'early-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }
    const early = await node.createPod(manifest('early', 'apps', services))
    const s = await node.runSandbox(early)
    t.notOk(hasTable(s), 'the pod started without ziti-cni in the chain: no rules')
    const bad = await runValidator(s.netns, early as V1Pod)
    t.equal(bad.code, 126, 'the validator exits with EXIT_NOT_INTERCEPTED')
    t.match(bad.stderr, /traffic is NOT intercepted: 100\.64\.0\.2:5432 did not reach 127\.0\.0\.1:15100/)
    // The kubelet reports the init container's exit; the agent comes up and repairs.
    node.api.put('pods', { ...early, status: { phase: 'Pending', initContainerStatuses: [{ name: 'ziti-cni-validator', ready: false, restartCount: 0, image: 'x', imageID: '', state: { terminated: { exitCode: 126, reason: 'Error' } } }] } } as never)
    await node.startAgent()
    const end = Date.now() + 15_000
    while (node.api.get('pods', 'apps', 'early') && Date.now() < end) await new Promise((r) => setTimeout(r, 100))
    t.notOk(node.api.get('pods', 'apps', 'early'), 'the agent deleted the unintercepted pod')
    t.match(await node.metrics(), /ziti_cni_repairs_total\{action="deleted"\} 1/)
    await node.removeSandbox(s)
    // Its controller recreates it; this time the chain includes ziti-cni and the validator agrees.
    const again = await node.createPod(manifest('early', 'apps', services))
    const s2 = await node.runSandbox(again)
    t.ok(hasTable(s2))
    const good = await runValidator(s2.netns, again as V1Pod)
    t.equal(good.code, 0, good.stderr)
    t.match(good.stdout, /ok, 100\.64\.0\.2:5432\/tcp is redirected to 127\.0\.0\.1:15100/)
    await node.removeSandbox(s2)
  })

  await t.test('cleanup: nothing of ours is left in the state dir', async (t) => {
    await node.removeSandbox(infra)
    t.same(readdirSync(node.stateDir), [], 'every attachment was cleaned up by DEL')
  })
})
