// The narrated demo (README's first command): pods get Ziti interception with no capability in
// the pod, on this machine's kernel and a real container runtime (containerd + runc over CRI).
// Walks through the node suite's main scenarios and removes everything, also when interrupted.
import type { V1Pod } from '@kubernetes/client-node'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { loadConfList } from './lib/cni-exec.ts'
import { app, appPod, infraPod, injected } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { startWebhook } from './lib/webhook.ts'
import { assertRoot } from '../../shared/testkit/root.ts'

const say = (s = '') => process.stdout.write(`${s}\n`)
const step = (n: number, title: string) => say(`\n\x1b[1m== ${n}. ${title}\x1b[0m`)
const indent = (text: string, pad = '   ') => text.trimEnd().split('\n').map((l) => pad + l).join('\n')
let failures = 0
const check = (ok: boolean, what: string) => { if (!ok) failures++; say(`   ${ok ? '✔' : '✘'} ${what}`) }
const identity = JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' } })

async function main(): Promise<void> {
  assertRoot(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr'])
  sweepLeftovers()
  const node = new TestNode({ id: 9 })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  let cleaned = false
  const cleanup = async () => {
    if (cleaned) return
    cleaned = true
    await node.teardown()
    await webhook?.close()
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => { say(`\n${sig}: cleaning up`); void cleanup().then(() => process.exit(130)) })
  }
  try {
    step(1, 'A node: containerd + runc (CRI), the API server stand-in, the admission webhook (HTTPS), the ziti-cni agent')
    await node.start()
    const v = await node.containerd.cri.version()
    say(`   runtime: ${v.runtime_name} ${v.runtime_version}, driven over CRI ${v.runtime_api_version} like a kubelet`)
    const list = loadConfList(node.confDir)
    say(`   the agent's installer appended itself to the primary CNI config, which containerd's libcni runs:`)
    say(`   ${list.name}: ${list.plugins.map((p) => p.type).join(' -> ')}`)
    const infra = await node.runPod(await node.createPod(infraPod()))
    node.clusterDns.push(infra.ip)
    webhook = await startWebhook({ validator: { image: IMAGES.validator }, tproxy: { image: IMAGES.tproxy, clusterDns: [infra.ip] } })
    node.api.admission = webhook.admission
    say(`   a plain pod ${infra.ip} serves the "cluster DNS" and an echo server (not Ziti)`)

    step(2, 'A pod asks for Ziti services by name, in a namespace labelled cni.openziti.io/inject=enabled')
    await node.createSecret('apps', 'billing-identity', { 'identity.json': identity })
    const annotations = { 'cni.openziti.io/identity-secret': 'billing-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api, logs.ziti:514/udp=logs' }
    say(indent(Object.entries(annotations).map(([k, v]) => `${k}: ${v}`).join('\n')))
    const pod = await node.createPod(appPod('billing', 'apps', annotations)) as V1Pod
    const sidecar = injected(pod, 'ziti-tunnel')
    say(`   the webhook injected a native sidecar "${sidecar.name}" (${sidecar.image}) and a validator init container`)
    say(`     args: ${sidecar.args!.join(' ')}`)
    say(`     runs as uid ${sidecar.securityContext!.runAsUser}, capabilities drop ${sidecar.securityContext!.capabilities!.drop}, read-only root, seccomp RuntimeDefault`)
    say(`   hostAliases: ${pod.spec!.hostAliases!.map((a) => `${a.hostnames!.join(',')} -> ${a.ip}`).join(', ')}`)
    say(`   interception intent: ${pod.metadata!.annotations!['cni.openziti.io/interception']}`)

    step(3, 'The kubelet runs it: RunPodSandbox (containerd runs loopback, bridge + host-local, then ziti-cni), then the containers')
    const billing = await node.runPod(pod)
    say(`   pod IP ${billing.ip}, netns ${billing.netns}; the agent programmed it:`)
    say(indent(node.inNetns(billing, ['nft', 'list', 'table', 'inet', 'ziti_cni']).stdout, '     '))
    say(`   validator exited ${billing.statuses.get('ziti-cni-validator')?.exit_code}: ${node.kubelet.logs(billing, 'ziti-cni-validator').trim()}`)
    say(`   the sidecar (a stand-in reproducing \`ziti tunnel proxy\` from its source) started:`)
    say(indent(node.kubelet.logs(billing, 'ziti-tunnel').trim(), '     '))

    step(4, 'The app (uid 1000, no capabilities) uses the services by name: TCP, and UDP from a connected socket')
    for (const [proto, host, port] of [['tcp', 'pg.ziti', '5432'], ['tcp', 'api.ziti', '443'], ['udp', 'logs.ziti', '514']] as const) {
      const r = await app(node, billing, [proto, host, port])
      say(`   ${proto} ${host}:${port} resolved to ${r.resolved}; the reply: ${r.reply ?? r.error}`)
      check(!!r.reply?.startsWith('ziti-service='), `${host}:${port}/${proto} reached the Ziti sidecar and the reply came back`)
    }

    step(5, 'The fence: the sidecar listens on 0.0.0.0, yet another pod cannot use it')
    const intruder = await app(node, infra, ['tcp', billing.ip, '15100'], 'echo')
    check(!intruder.ok, `another pod -> ${billing.ip}:15100: ${intruder.error} (dropped by the fence)`)
    const self = await app(node, billing, ['tcp', '127.0.0.1', '15100'])
    check(!!self.ok, `the billing pod itself -> 127.0.0.1:15100: ${self.reply}`)

    step(6, 'Nobody in the pod can undo it: no capability in any container')
    for (const who of ['app', 'ziti-tunnel']) {
      const caps = (await node.exec(billing, who, ['grep', 'CapEff', '/proc/self/status'])).stdout.trim()
      const r = await node.exec(billing, who, ['nft', 'flush', 'ruleset'])
      const why = r.stderr.split('\n').find((l) => /Operation not permitted/.test(l))?.trim()
      check(r.code !== 0 && why !== undefined, `${who} (${caps}): nft flush ruleset -> ${why ?? r.stderr.trim()}`)
    }

    step(7, 'tproxy profile on the eBPF datapath: a plain catch-all sees every connection to the Ziti range, with its original destination')
    await node.createSecret('apps', 'scanner-identity', { 'identity.json': identity })
    const tpod = await node.createPod(appPod('scanner', 'apps', { 'cni.openziti.io/identity-secret': 'scanner-identity', 'cni.openziti.io/mode': 'tproxy' })) as V1Pod
    say(`   intent: ${tpod.metadata!.annotations!['cni.openziti.io/interception']}`)
    say(`   the sidecar gets capabilities ${JSON.stringify(injected(tpod, 'ziti-tunnel').securityContext!.capabilities)}; the pod passes Pod Security "restricted"`)
    const scanner = await node.runPod(tpod)
    const tcp = await app(node, scanner, ['tcp', '100.64.3.7', '443'])
    check(!!tcp.reply?.includes('orig_dst=100.64.3.7:443'), `TCP 100.64.3.7:443 -> ${tcp.reply ?? tcp.error}`)
    const udp = await app(node, scanner, ['udp', '100.100.0.9', '5353'])
    check(!!udp.reply?.includes('orig_dst=100.100.0.9:5353'), `UDP 100.100.0.9:5353 -> ${udp.reply ?? udp.error}`)
    const dns = await app(node, scanner, ['resolve', 'billing.ziti'])
    check(dns.answers?.[0] === '100.64.0.7', `DNS billing.ziti -> ${dns.answers ?? dns.error} (the tunneler's resolver at 100.64.0.2, reached through the same datapath)`)
    const other = await app(node, scanner, ['resolve', 'controller.example'])
    check(other.answers?.[0] === '192.0.2.53', `DNS controller.example -> ${other.answers ?? other.error} (REFUSED by the tunneler, answered by the cluster DNS)`)

    step(8, 'Cleaning up: pods (CNI DEL through containerd), containerd, the agent, bridges, netns')
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
