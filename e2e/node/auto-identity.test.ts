// `cni.openziti.io/identity: auto` on the real-runtime tier: the controller drives the sidecar.
// The pod spec names no service and no port. The webhook (two replicas) creates the pod's
// identity at the fake controller and hands the JWT over in a per-pod Secret; containerd + runc
// run the pod; the stand-in `ziti tunnel proxy` enrolls with that JWT over HTTPS, logs in with
// its new certificate and listens for what its policies allow; the app reaches an
// auto-discovered service by name; the pod is deleted and its identity disappears.
import t from 'tap'
import type { V1Pod } from '@kubernetes/client-node'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { app, appPod, injected } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { startWebhook } from './lib/webhook.ts'
import { FakeZitiController, type FakeIdentity } from './standins/ziti-controller.ts'
import { restrictedViolations } from '../../webhook/test/pss-restricted.ts'

async function until<T>(what: string, probe: () => T | undefined | false, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const v = probe()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

t.test('identity: auto on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 4 })
  const closers: Array<() => Promise<unknown>> = []
  t.teardown(async () => {
    await node.teardown()
    for (const c of closers) await c().catch(() => {})
  })
  await node.start()
  // A plain pod first: the bridge (and its gateway address, where the controller listens for
  // the pods) exists once the first pod is on it.
  await node.runPod(await node.createPod(appPod('first', 'plain')))

  // The controller, as an operator configured it: configs, services, one Dial policy.
  const ctrl = new FakeZitiController({ host: node.gateway })
  await ctrl.listen()
  closers.push(() => ctrl.close())
  const svc = (name: string, attrs: string[], intercept: object, proxy?: object) =>
    ctrl.addService(name, attrs, [ctrl.addConfig(`${name}-intercept`, 'intercept.v1', intercept as Record<string, unknown>), ...(proxy ? [ctrl.addConfig(`${name}-proxy`, 'proxy.v1', proxy as Record<string, unknown>)] : [])])
  svc('postgres', ['db'], { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] }, { port: 15432, protocols: ['tcp'] })
  svc('billing-api', ['web'], { protocols: ['tcp'], addresses: ['api.ziti'], portRanges: [{ low: 443, high: 443 }] })
  svc('logs', ['web'], { protocols: ['udp'], addresses: ['logs.ziti'], portRanges: [{ low: 514, high: 514 }] }, { port: 15514, protocols: ['udp'] })
  svc('warehouse', ['web'], { protocols: ['tcp'], addresses: ['10.98.0.0/24'], portRanges: [{ low: 7000, high: 7003 }] })
  svc('vault', ['secrets'], { protocols: ['tcp'], addresses: ['vault.ziti'], portRanges: [{ low: 8200, high: 8200 }] })
  ctrl.addPolicy('billing-dials-db-and-web', 'Dial', ['#billing'], ['#db', '#web'])
  // The webhook's credential: least privilege (2.x permissions), not an admin.
  const admin = ctrl.addCertIdentity('ziti-cni-webhook', ['identity', 'service.read', 'config.read'])
  const credential = JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${admin.cert}`, key: `pem:${admin.key}`, ca: `pem:${ctrl.ca.certPem}` } })

  const raw = { validator: { image: IMAGES.validator }, controller: { url: ctrl.url, cluster: 'e2e', reconcileSeconds: 1, graceSeconds: 8, leaseSeconds: 3 } }
  const replicas = [
    await startWebhook(raw, { kubeconfig: node.agentKubeconfig, credential, replica: 'webhook-a' }),
    await startWebhook(raw, { kubeconfig: node.agentKubeconfig, credential, replica: 'webhook-b' }),
  ]
  for (const r of replicas) closers.push(() => r.close())
  node.api.admission = replicas[0]!.admission
  const ours = () => [...ctrl.identities.values()].filter((i) => i.tags['ziti-cni.openziti.io/cluster'] === 'e2e')

  let identity: FakeIdentity | undefined
  let pod: Awaited<ReturnType<TestNode['createPod']>>
  await t.test('admission creates the identity; the pod spec names no service and no port', async (t) => {
    const manifest = appPod('billing', 'apps', { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'billing, eu' })
    t.notMatch(JSON.stringify(manifest), /[a-z]\.ziti\b|5432|443|514|postgres|billing-api/, 'the manifest: no service, no port')
    pod = await node.createPod(manifest)
    identity = ours()[0]
    t.ok(identity, 'created at the controller')
    t.equal(pod.metadata.annotations['cni.openziti.io/identity-id'], identity!.id)
    t.same(identity!.roleAttributes, ['billing', 'eu'])
    t.match(identity!.name, /^k8s-apps-billing-[0-9a-f]{8}$/)
    const intent = parseIntent(pod.metadata.annotations['cni.openziti.io/interception']!)
    t.equal(intent.mode, 'proxy')
    t.same(restrictedViolations(pod as V1Pod), [], 'the injected pod passes Pod Security "restricted"')
    t.notOk(pod.spec!.hostAliases!.some((a) => a.hostnames!.includes('vault.ziti')), 'vault: no policy, not intercepted')
  })

  let rp: Awaited<ReturnType<TestNode['runPod']>>
  await t.test('the stand-in sidecar enrolls with the JWT and dials only what its policies allow', async (t) => {
    rp = await node.runPod(pod)
    const enrolled = ctrl.identities.get(identity!.id)!
    t.ok(enrolled.certFingerprint, 'the identity has a certificate: enrolled with a CSR')
    t.notOk(enrolled.enrollment, 'the one-time token is spent')
    t.ok(ctrl.calls.some((c) => c.identity === identity!.id && c.path.startsWith('/edge/client/v1/services')), 'the sidecar listed its services as itself (cert login)')
    const log = node.kubelet.logs(rp, 'ziti-tunnel')
    t.match(log, /service postgres is listening addr=0\.0\.0\.0:15432/, 'postgres on its proxy.v1 port')
    t.match(log, /service logs is listening addr=0\.0\.0\.0:15514/)
    t.notMatch(log, /vault/)
  })

  await t.test('the app reaches each auto-discovered service by name and gets the reply', async (t) => {
    const pg = await app(node, rp, ['tcp', 'pg.ziti', '5432'])
    t.match(pg.reply, /^ziti-service=postgres listener=15432 /, `pg.ziti:5432 (${pg.error ?? 'ok'})`)
    const api = await app(node, rp, ['tcp', 'api.ziti', '443'])
    t.match(api.reply, /^ziti-service=billing-api listener=15100 /, `api.ziti:443 (${api.error ?? 'ok'})`)
    const logs = await app(node, rp, ['udp', 'logs.ziti', '514'])
    t.match(logs.reply, /^ziti-service=logs listener=15514 via=udp/, `logs.ziti:514/udp (${logs.error ?? 'ok'})`)
    const range = await app(node, rp, ['tcp', '10.98.0.9', '7002'])
    t.match(range.reply, /^ziti-service=warehouse listener=15101 /, `an address and port inside a service's CIDR and port range (${range.error ?? 'ok'})`)
    const outside = await app(node, rp, ['tcp', '10.98.0.9', '7004'])
    t.notOk(outside.ok, `a port outside its range is not redirected (${outside.error})`)
    const vault = await app(node, rp, ['tcp', 'vault.ziti', '8200'])
    t.notOk(vault.ok, `vault.ziti is not there for this pod (${vault.error})`)
  })

  await t.test('the spent token\'s Secret is deleted while the pod runs', async (t) => {
    const secret = injected(pod, 'ziti-tunnel').env!.find((e) => e.name === 'ZITI_ENROLL_TOKEN')!.valueFrom!.secretKeyRef!.name!
    await until('the Secret to go', () => !node.api.get('secrets', 'apps', secret))
    t.pass(`Secret apps/${secret} deleted by the reconciler`)
    t.equal(ctrl.identities.has(identity!.id), true, 'the identity stays with its pod')
  })

  await t.test('two replicas: one leads the reconciler, both admit', async (t) => {
    const leaders = replicas.map((r) => r.controller!.leader.isLeader())
    t.same(leaders.filter(Boolean).length, 1, `exactly one leader (${leaders})`)
    node.api.admission = replicas[1]!.admission
    const second = await node.createPod(appPod('billing-2', 'apps', { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'billing' }))
    t.ok(second.metadata.annotations['cni.openziti.io/identity-id'], 'the other replica admits too')
    node.api.delete('pods', 'apps', second.metadata.name)
    node.api.admission = replicas[0]!.admission
  })

  await t.test('controller down at admission: the auto pod is refused with the reason', async (t) => {
    ctrl.setDown(true)
    const e = await node.createPod(appPod('billing-3', 'apps', { 'cni.openziti.io/identity': 'auto' })).catch((err: Error) => err)
    t.match(String(e), /identity: auto: the OpenZiti controller is unreachable, so no identity was created/)
    ctrl.setDown(false)
  })

  await t.test('pod deleted: its identity disappears, also when the controller was down at the time', async (t) => {
    ctrl.setDown(true)
    await node.removePod(rp)
    node.api.delete('pods', 'apps', pod.metadata.name)
    await new Promise((r) => setTimeout(r, 2500))
    t.ok(ctrl.identities.has(identity!.id), 'nothing can be deleted while the controller is down')
    ctrl.setDown(false)
    await until('the identities of deleted pods to go', () => ours().length === 0, 30_000)
    t.pass('every identity of a deleted pod is gone')
  })
})
