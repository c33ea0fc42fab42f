// The narrated demo (README's first command): a pod gets Ziti interception with no
// capability in the pod, on this machine's real kernel. Walks through scenarios 1, 3, 4
// and 5 of the node-level suite and cleans up everything, also when interrupted.
import { spawnSync, type ChildProcess } from 'node:child_process'
import type { V1Pod } from '@kubernetes/client-node'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { APP_UID, app, node as nodeScript, runInPod, startInPod, startSidecar } from './lib/processes.ts'
import { startWebhook } from './lib/webhook.ts'
import { assertRoot } from '../../shared/testkit/root.ts'

const say = (s = '') => process.stdout.write(`${s}\n`)
const step = (n: number, title: string) => say(`\n\x1b[1m== ${n}. ${title}\x1b[0m`)
const indent = (text: string, pad = '   ') => text.trimEnd().split('\n').map((l) => pad + l).join('\n')
let failures = 0
const check = (ok: boolean, what: string) => { if (!ok) failures++; say(`   ${ok ? '✔' : '✘'} ${what}`) }

const restricted = {
  securityContext: { runAsNonRoot: true, runAsUser: APP_UID, seccompProfile: { type: 'RuntimeDefault' } },
  containers: [{ name: 'app', image: 'registry.example.com/billing:1.4.2', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }],
}

async function main(): Promise<void> {
  assertRoot(['nft', 'ip', 'nsenter', 'setpriv'])
  sweepLeftovers()
  const procs: ChildProcess[] = []
  const webhook = await startWebhook()
  const node = new TestNode({ id: 9, admission: webhook.admission })
  let cleaned = false
  const cleanup = async () => {
    if (cleaned) return
    cleaned = true
    for (const p of procs) p.kill('SIGKILL')
    await node.teardown()
    await webhook.close()
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => { say(`\n${sig}: cleaning up`); void cleanup().then(() => process.exit(130)) })
  }
  try {
    step(1, 'A node: API server stand-in, the admission webhook (HTTPS), the ziti-cni agent')
    await node.start()
    const list = node.runtime.confList()
    say(`   the agent's installer appended itself to the primary CNI config:`)
    say(`   ${list.name}: ${list.plugins.map((p) => p.type).join(' -> ')}`)

    step(2, 'A pod asks for two Ziti services by name, in a namespace labelled cni.openziti.io/inject=enabled')
    const manifest = {
      apiVersion: 'v1', kind: 'Pod',
      metadata: { name: 'billing', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'billing-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api' } },
      spec: structuredClone(restricted),
    }
    say(indent(Object.entries(manifest.metadata.annotations).map(([k, v]) => `${k}: ${v}`).join('\n')))
    const pod = await node.createPod(manifest) as V1Pod
    const sidecar = pod.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!
    say(`   the webhook injected a native sidecar "${sidecar.name}" (${sidecar.image})`)
    say(`     args: ${sidecar.args!.join(' ')}`)
    say(`     runs as uid ${sidecar.securityContext!.runAsUser}, capabilities drop ${sidecar.securityContext!.capabilities!.drop}, read-only root, seccomp RuntimeDefault`)
    say(`     identity: env ZITI_IDENTITY_JSON from Secret billing-identity (the webhook never reads it)`)
    say(`   hostAliases: ${pod.spec!.hostAliases!.map((a) => `${a.hostnames!.join(',')} -> ${a.ip}`).join(', ')}`)
    say(`   interception intent: ${pod.metadata!.annotations!['cni.openziti.io/interception']}`)

    step(3, 'The runtime creates the pod sandbox: loopback, bridge + host-local, then ziti-cni')
    const billing = await node.runSandbox(pod)
    say(`   pod IP ${billing.ip}; the agent programmed the pod's network namespace:`)
    say(indent(spawnSync('ip', ['netns', 'exec', billing.netns, 'nft', 'list', 'table', 'inet', 'ziti_cni'], { encoding: 'utf8' }).stdout, '     '))
    procs.push(await startSidecar(billing.netns, pod))
    say('   started a stand-in for `ziti tunnel proxy` with exactly the injected args, uid and (no) capabilities')

    step(4, 'The app (uid 1000, no capabilities) connects to pg.ziti:5432 and api.ziti:443')
    for (const [host, port] of [['pg.ziti', '5432'], ['api.ziti', '443']] as const) {
      const r = await app(billing.netns, 'tcp', host, port)
      say(`   ${host}:${port} resolved to ${r.resolved}; the connection landed on: ${r.reply}`)
      check(!!r.reply?.startsWith('ziti-service='), `${host}:${port} reached the Ziti sidecar without the app knowing a proxy port`)
    }

    step(5, 'The fence: the sidecar listens on 0.0.0.0, yet another pod cannot use it')
    const other = await node.runSandbox(await node.createPod({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'intruder', namespace: 'plain' }, spec: structuredClone(restricted) }))
    const intruder = await app(other.netns, 'tcp', billing.ip, '15100')
    check(!intruder.ok, `intruder pod -> ${billing.ip}:15100: ${intruder.error} (dropped by the fence)`)
    const self = await app(billing.netns, 'tcp', '127.0.0.1', '15100')
    check(!!self.ok, `the billing pod itself -> 127.0.0.1:15100: ${self.reply}`)

    step(6, 'Nobody in the pod can undo it: no NET_ADMIN anywhere')
    for (const [who, id] of [['app', { uid: APP_UID, gid: APP_UID }], ['sidecar', { uid: 2171, gid: 2171 }]] as const) {
      const r = await runInPod(billing.netns, id, ['nft', 'flush', 'ruleset'])
      const why = r.stderr.split('\n').find((l) => /Operation not permitted/.test(l))?.trim()
      check(r.code !== 0 && why !== undefined, `${who}: nft flush ruleset -> ${why ?? r.stderr.trim()}`)
    }

    step(7, 'tproxy profile: a catch-all listener sees every connection to the Ziti range, with its original destination')
    const tpod = await node.createPod({
      apiVersion: 'v1', kind: 'Pod',
      metadata: { name: 'scanner', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy' } },
      spec: structuredClone(restricted),
    }) as V1Pod
    say(`   intent: ${tpod.metadata!.annotations!['cni.openziti.io/interception']}`)
    say(`   the sidecar gets only ${tpod.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!.securityContext!.capabilities!.add} (IP_TRANSPARENT for nft TPROXY); the app gets nothing`)
    const scanner = await node.runSandbox(tpod, { resolvConf: `nameserver ${other.ip}\noptions timeout:1 attempts:1\n` })
    procs.push(await startSidecar(scanner.netns, tpod))
    procs.push(await startInPod(scanner.netns, { uid: 2171, gid: 2171 }, nodeScript('dns-server.ts', '127.0.0.1', '15053', '100.64.0.7')))
    const tcp = await app(scanner.netns, 'tcp', '100.64.3.7', '443')
    check(!!tcp.reply?.includes('orig_dst=100.64.3.7:443'), `TCP 100.64.3.7:443 -> ${tcp.reply}`)
    const udp = await app(scanner.netns, 'udp', '100.100.0.9', '5353')
    check(!!udp.reply?.includes('orig_dst=100.100.0.9:5353'), `UDP 100.100.0.9:5353 -> ${udp.reply}`)
    const dns = await app(scanner.netns, 'resolve', 'billing.ziti')
    check(dns.answers?.[0] === '100.64.0.7', `DNS query for billing.ziti answered by the sidecar's DNS port: ${dns.answers}`)

    step(8, 'Cleaning up')
  } finally {
    await cleanup()
  }
  say(failures === 0 ? '\nAll demo checks passed.' : `\n${failures} demo check(s) FAILED.`)
  process.exitCode = failures === 0 ? 0 : 1
}

main().catch((e: unknown) => {
  process.stderr.write(`demo failed: ${(e as Error).stack ?? e}\n`)
  process.exit(1)
})
