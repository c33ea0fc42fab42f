// The narrated demo (README's first command): pods get Ziti interception with no capability in
// the pod, on this machine's kernel and a real container runtime (containerd + runc over CRI).
// Walks through the node suite's main scenarios and removes everything, also when interrupted.
import type { V1Pod } from '@kubernetes/client-node'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { loadConfList } from './lib/cni-exec.ts'
import { app, appPod, infraPod, injected } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { enrollmentTls, startIdentityControllerReplica, startWebhook } from './lib/webhook.ts'
import { assertRoot } from '../../shared/testkit/root.ts'
import { FakeZitiController } from './standins/ziti-controller.ts'
import { FakeEdgeRouter } from './standins/ziti-router.ts'

const say = (s = '') => process.stdout.write(`${s}\n`)
const step = (n: number, title: string) => say(`\n\x1b[1m== ${n}. ${title}\x1b[0m`)
const indent = (text: string, pad = '   ') => text.trimEnd().split('\n').map((l) => pad + l).join('\n')
let failures = 0
const check = (ok: boolean, what: string) => { if (!ok) failures++; say(`   ${ok ? '✔' : '✘'} ${what}`) }
const identity = JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' } })

async function waitFor(probe: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!probe()) {
    if (Date.now() > deadline) return false
    await new Promise((r) => setTimeout(r, 200))
  }
  return true
}

async function main(): Promise<void> {
  assertRoot(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr'])
  sweepLeftovers()
  const node = new TestNode({ id: 9, tunDevicePlugin: true })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  let identities: Awaited<ReturnType<typeof startIdentityControllerReplica>> | undefined
  let controller: FakeZitiController | undefined
  let router: FakeEdgeRouter | undefined
  let cleaned = false
  const cleanup = async () => {
    if (cleaned) return
    cleaned = true
    await node.teardown()
    await webhook?.close()
    await identities?.close()
    await controller?.close()
    await router?.close()
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
    // The OpenZiti controller stand-in, on the pod network's gateway so sidecars reach it.
    controller = new FakeZitiController({ host: node.gateway })
    await controller.listen()
    const svc = (name: string, attrs: string[], intercept: Record<string, unknown>, proxy?: Record<string, unknown>) =>
      controller!.addService(name, attrs, [controller!.addConfig(`${name}-intercept`, 'intercept.v1', intercept), ...(proxy ? [controller!.addConfig(`${name}-proxy`, 'proxy.v1', proxy)] : [])])
    svc('postgres', ['db'], { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })
    svc('ledger', ['db'], { protocols: ['tcp'], addresses: ['ledger.ziti'], portRanges: [{ low: 7000, high: 7000 }] })
    svc('vault', ['secrets'], { protocols: ['tcp'], addresses: ['vault.ziti'], portRanges: [{ low: 8200, high: 8200 }] })
    controller.addPolicy('billing-dials-db', 'Dial', ['#billing'], ['#db'])
    const admin = controller.addCertIdentity('ziti-cni-identity-controller', ['identity.create', 'identity.read', 'identity.delete', 'service.read', 'config.read'])
    const credential = JSON.stringify({ ztAPI: `${controller.url}/edge/client/v1`, id: { cert: admin.cert, key: admin.key, ca: controller.ca.certPem } })
    await node.deviceManager!.ready('tun.openziti.io/tun')
    const tls = enrollmentTls(node.gateway)
    const idc = (enrollUrl: string) => ({ url: controller!.url, cluster: 'demo', reconcileSeconds: 1, graceSeconds: 3, enrollUrl, enrollCa: tls.ca.certPem, enrollImage: IMAGES.validator, attributePolicy: [{ namespace: 'apps', attributes: ['billing'] }] })
    // The Lease's namespace, as deploy/components/controller-identities/namespace.yaml makes it
    // (the API stand-in refuses a Lease in a namespace that does not exist: NamespaceLifecycle).
    node.api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ziti-cni-identity' } } as never)
    identities = await startIdentityControllerReplica({ controller: idc('https://127.0.0.1:1') }, { kubeconfig: node.agentKubeconfig, credential, replica: 'identity-controller-0', tls: { cert: tls.serving.certPem, key: tls.serving.keyPem }, host: node.gateway, port: 0 })
    node.api.put('serviceaccounts', { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: 'apps' } } as never)
    webhook = await startWebhook({
      validator: { image: IMAGES.validator }, tproxy: { image: IMAGES.tproxy, clusterDns: [infra.ip] }, tun: { image: IMAGES.tun },
      controller: idc(`https://${node.gateway}:${identities.port}`),
    })
    node.api.admission = webhook.admission
    say(`   a plain pod ${infra.ip} serves the "cluster DNS" and an echo server (not Ziti)`)
    say(`   an OpenZiti controller stand-in at ${controller.url}: services postgres, ledger (#db), vault (#secrets); #billing may dial #db`)
    say(`   the agent's kubelet device plugin registered tun.openziti.io/tun`)

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
    check(other.answers?.[0] === '192.0.2.53', `DNS controller.example -> ${other.answers ?? other.error} (forwarded by the tunneler to the cluster DNS)`)

    step(8, 'identity: auto: the platform governs the attributes; the identity controller creates the identity for the stored pod')
    const autoAnn = { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'billing', 'cni.openziti.io/services': 'pg.ziti:5432=postgres, ledger.ziti:7000=ledger' }
    say(indent(Object.entries(autoAnn).map(([k, v]) => `${k}: ${v}`).join('\n')))
    const refused = await node.createPod(appPod('greedy', 'apps', { ...autoAnn, 'cni.openziti.io/role-attributes': 'billing, vault-admin' })).catch((e: Error) => e)
    check(/not allowed .* attribute policy/.test(String(refused)), `an attribute outside the policy is refused at admission: ${String(refused).replace(/^.*denied the request: /, '')}`)
    const apod = await node.createPod(appPod('ledger-reader', 'apps', autoAnn)) as V1Pod
    say(`   injected: ${apod.spec!.initContainers!.map((c) => c.name).join(', ')} (the enrollment step presents the pod's projected token, audience ${apod.spec!.volumes!.find((v) => v.projected)?.projected?.sources?.[0]?.serviceAccountToken?.audience})`)
    await waitFor(() => [...controller!.identities.values()].some((i) => i.tags['ziti-cni.openziti.io/pod-uid'] === apod.metadata!.uid), 10_000)
    const id = [...controller.identities.values()].find((i) => i.tags['ziti-cni.openziti.io/pod-uid'] === apod.metadata!.uid)
    check(!!id, `the identity controller created ${id?.name} with role attributes ${JSON.stringify(id?.roleAttributes)}`)
    const ledger = await node.runPod(apod)
    say(`   ziti-enroll: ${node.kubelet.logs(ledger, 'ziti-enroll').trim().split('\n').at(-1)}`)
    check(!!controller.identities.get(id!.id)?.certFingerprint, 'the init step enrolled the JWT it fetched (TokenReview-verified) with a key made in the pod')
    for (const [host, port] of [['pg.ziti', '5432'], ['ledger.ziti', '7000']] as const) {
      const r = await app(node, ledger, ['tcp', host, port])
      check(!!r.reply?.startsWith('ziti-service='), `tcp ${host}:${port} -> ${r.reply ?? r.error}`)
    }
    await node.removePod(ledger)
    node.api.delete('pods', 'apps', apod.metadata!.name!)
    const gone = await waitFor(() => !controller!.identities.has(id!.id), 20_000)
    check(gone, 'the pod was deleted; the identity controller deleted its identity')

    step(9, 'tun mode: upstream ziti-edge-tunnel v1.18.2 (with the attach shim) on a device the CNI made, no capability')
    // An edge-router stand-in for the real tunneler's data path; postgres without end-to-end
    // encryption (the stand-in has none).
    router = new FakeEdgeRouter(controller.ca, { apiSessionIdentity: (tok) => controller!.apiSessionIdentity(tok), dialService: (d, i) => controller!.clientApi.dialService(d, i) }, node.gateway)
    controller.clientApi.addRouter('er-demo', await router.listen())
    for (const s of controller.services.values()) if (s.name === 'postgres') s.encryptionRequired = false
    const tunId = controller.addCertIdentity('tunapp-pod', [])
    tunId.identity.roleAttributes.push('billing')
    await node.createSecret('apps', 'tun-identity', { 'identity.json': JSON.stringify({ ztAPI: `${controller.url}/edge/client/v1`, id: { cert: `pem:${tunId.cert}`, key: `pem:${tunId.key}`, ca: `pem:${controller.ca.certPem}` } }) })
    const upod = await node.createPod(appPod('tunapp', 'apps', { 'cni.openziti.io/identity-secret': 'tun-identity', 'cni.openziti.io/mode': 'tun' })) as V1Pod
    say(`   intent: ${upod.metadata!.annotations!['cni.openziti.io/interception']}`)
    say(`   the sidecar asks for ${JSON.stringify(injected(upod, 'ziti-tunnel').resources!.limits)}; pod DNS: ${upod.spec!.dnsConfig!.nameservers!.join(', ')}`)
    const tun = await node.runPod(upod)
    say(indent(node.inNetns(tun, ['ip', '-d', 'link', 'show', 'dev', 'ziti0']).stdout.split('\n').slice(0, 3).join('\n'), '     '))
    say(indent(node.kubelet.logs(tun, 'ziti-tunnel').split('\n').filter((l) => /ziti-tun-attach|INFO: running|connected to controller|router .* connected|starting intercepting/.test(l)).join('\n'), '     '))
    const caps = (await node.exec(tun, 'ziti-tunnel', ['sh', '-c', 'for p in /proc/[0-9]*; do [ "$(cat $p/comm)" = ziti-edge-tunne ] && grep CapEff $p/status; done'])).stdout.trim()
    check(/^CapEff:\s+0+$/.test(caps), `the tunneler holds no capability (${caps})`)
    const name = await app(node, tun, ['resolve', 'pg.ziti'])
    check(!!name.answers?.[0]?.startsWith('100.64.'), `DNS pg.ziti -> ${name.answers ?? name.error} (answered by the real tunneler inside the device)`)
    const tt = await app(node, tun, ['tcp', 'pg.ziti', '5432'])
    check(tt.reply === 'ziti-service=postgres caller=tunapp-pod', `tcp pg.ziti:5432 -> ${tt.reply ?? tt.error} (tun -> ziti-edge-tunnel -> edge router)`)

    step(10, 'Cleaning up: pods (CNI DEL through containerd), containerd, the agent, bridges, netns')
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
