// `cni.openziti.io/identity: auto` on the real-runtime tier. The webhook is pure: it checks the
// platform's attribute policy and injects a reference (the `ziti-enroll` init step and its
// audience-bound projected token). The identity controller (two replicas, one Lease) creates
// the identity for the pod the API server stored, with attributes nobody can forge; in the pod,
// containerd + runc run the init step, which presents the kubelet-projected token to the
// enrollment endpoint (TokenReview), enrolls the one-time JWT with a key it makes and writes the
// identity into the sidecar's emptyDir, where the stand-in `ziti tunnel proxy` loads it (it
// never enrolls, so its restarts cannot strand a spent token); the app reaches its services;
// the pod goes and so does its identity, also when the controller was down at the time.
import t from 'tap'
import { request } from 'node:https'
import type { V1Pod } from '@kubernetes/client-node'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { app, appPod } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { enrollmentTls, startIdentityControllerReplica, startWebhook } from './lib/webhook.ts'
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

function post(url: string, ca: string, body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', ca, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    })
    req.on('error', reject)
    req.end(body)
  })
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
  // A plain pod first: the bridge (and its gateway address, where the controllers listen for
  // the pods) exists once the first pod is on it.
  await node.runPod(await node.createPod(appPod('first', 'plain')))

  // The OpenZiti controller, as an operator configured it. One policy selects by a role
  // attribute the pod requests (#billing), one by the platform's ServiceAccount attribute.
  const ctrl = new FakeZitiController({ host: node.gateway })
  await ctrl.listen()
  closers.push(() => ctrl.close())
  const svc = (name: string, attrs: string[], intercept: object, proxy?: object) =>
    ctrl.addService(name, attrs, [ctrl.addConfig(`${name}-intercept`, 'intercept.v1', intercept as Record<string, unknown>), ...(proxy ? [ctrl.addConfig(`${name}-proxy`, 'proxy.v1', proxy as Record<string, unknown>)] : [])])
  svc('postgres', ['db'], { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })
  svc('billing-api', ['web'], { protocols: ['tcp'], addresses: ['api.ziti'], portRanges: [{ low: 443, high: 443 }] })
  ctrl.addPolicy('billing-dials-db', 'Dial', ['#billing'], ['#db'])
  ctrl.addPolicy('billing-sa-dials-web', 'Dial', ['#k8s.sa:e2e/apps/billing'], ['#web'])
  // The identity controller's credential: exactly the granular permissions it needs.
  const admin = ctrl.addCertIdentity('ziti-cni-identity-controller', ['identity.create', 'identity.read', 'identity.delete', 'service.read', 'config.read'])
  const credential = JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${admin.cert}`, key: `pem:${admin.key}`, ca: `pem:${ctrl.ca.certPem}` } })
  // The Lease's namespace, as deploy/components/controller-identities/namespace.yaml makes it.
  node.api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ziti-cni-identity' } } as never)
  node.api.put('serviceaccounts', { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'billing', namespace: 'apps' } } as never)
  node.api.put('serviceaccounts', { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: 'apps' } } as never)

  const tls = enrollmentTls(node.gateway)
  const controller = (enrollUrl: string) => ({
    url: ctrl.url, cluster: 'e2e', reconcileSeconds: 1, graceSeconds: 3, leaseSeconds: 3,
    enrollUrl, enrollCa: tls.ca.certPem, enrollImage: IMAGES.validator,
    attributePolicy: [{ namespace: 'apps', serviceAccount: 'billing', attributes: ['billing'] }],
  })
  const replicas: Array<Awaited<ReturnType<typeof startIdentityControllerReplica>>> = []
  for (const name of ['ic-a', 'ic-b']) {
    const r = await startIdentityControllerReplica({ controller: controller('https://127.0.0.1:1') }, { kubeconfig: node.agentKubeconfig, credential, replica: name, tls: { cert: tls.serving.certPem, key: tls.serving.keyPem }, host: node.gateway, port: 0 })
    replicas.push(r)
    closers.push(() => r.close())
  }
  const leader = await until('one replica to lead', () => replicas.find((r) => r.rt.leader.isLeader()))
  // In a cluster a Service spreads pods over both replicas; here they enroll at the leader.
  const webhook = await startWebhook({ validator: { image: IMAGES.validator }, controller: controller(`https://${node.gateway}:${leader.port}`) })
  closers.push(() => webhook.close())
  node.api.admission = webhook.admission
  const ours = () => [...ctrl.identities.values()].filter((i) => i.tags['ziti-cni.openziti.io/cluster'] === 'e2e')
  const manifest = (name: string, annotations: Record<string, string>) => {
    const m = appPod(name, 'apps', { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api', ...annotations })
    m.spec!.serviceAccountName = 'billing'
    return m
  }

  await t.test('a forged AdmissionReview (any namespace, attributes, uid) leaves the controller and the API server unchanged', async (t) => {
    // The identity controller keeps running (Lease renewals, reconcile lists): what must not
    // change is every write but the Lease's, and every controller call but a list.
    const writes = () => node.api.requests.filter((r) => r.method !== 'GET' && !r.path.includes('/leases')).length
    const zitiWrites = () => ctrl.calls.filter((c) => c.method !== 'GET' && !c.path.includes('/authenticate')).length
    const before = { ids: JSON.stringify([...ctrl.identities.values()]), zitiWrites: zitiWrites(), writes: writes(), tokens: node.api.serviceAccountTokens.issued.length, reviews: node.api.serviceAccountTokens.reviews.length }
    for (const [ns, attrs, uid] of [['apps', 'billing', 'a'], ['kube-system', 'admin', 'b'], ['apps', 'admin, payments', '00000000-0000-0000-0000-000000000000']]) {
      const pod = manifest('forged', { 'cni.openziti.io/role-attributes': attrs! })
      const text = await post(webhook.admission.url, webhook.admission.ca, JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid, kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: ns, name: 'forged', object: { ...pod, metadata: { ...pod.metadata, namespace: ns } } } }))
      t.match(text, /"response"/, `${ns}/${attrs}: an answer, nothing else`)
    }
    await new Promise((r) => setTimeout(r, 1500)) // anything asynchronous would show by now
    t.equal(JSON.stringify([...ctrl.identities.values()]), before.ids, 'no identity created, changed or deleted')
    t.equal(zitiWrites(), before.zitiWrites, 'the controller got no write')
    t.equal(writes(), before.writes, 'nothing written to the API server but Lease renewals')
    t.equal(node.api.serviceAccountTokens.issued.length, before.tokens, 'no token minted')
    t.equal(node.api.serviceAccountTokens.reviews.length, before.reviews, 'no token reviewed')
  })

  await t.test('a pod requesting an attribute its namespace and ServiceAccount may not have is refused, naming the policy', async (t) => {
    const e = await node.createPod(manifest('greedy', { 'cni.openziti.io/role-attributes': 'billing, payments-admin' })).catch((err: Error) => err)
    t.match(String(e), /cni\.openziti\.io\/role-attributes: entry 2 "payments-admin": attribute "payments-admin" is not allowed for ServiceAccount apps\/billing by the platform's attribute policy \(webhook config controller\.attributePolicy/)
    t.equal(ours().length, 0, 'no identity')
  })

  let identity: FakeIdentity | undefined
  let pod: Awaited<ReturnType<TestNode['createPod']>>
  let rp: Awaited<ReturnType<TestNode['runPod']>>
  await t.test('an allowed pod: the identity controller creates its identity with the non-forgeable attributes', async (t) => {
    pod = await node.createPod(manifest('billing', { 'cni.openziti.io/role-attributes': 'billing' }))
    t.same(restrictedViolations(pod as V1Pod), [], 'the injected pod passes Pod Security "restricted"')
    t.notOk(JSON.stringify(pod).match(/eyJ[A-Za-z0-9_-]{20,}\./), 'no JWT anywhere in the pod')
    identity = await until('the identity', () => ours().find((i) => i.tags['ziti-cni.openziti.io/pod-uid'] === pod.metadata.uid))
    t.same(identity.roleAttributes, ['billing', 'k8s.cluster:e2e', 'k8s.ns:e2e/apps', 'k8s.sa:e2e/apps/billing'])
    t.ok(identity.enrollment, 'not enrolled yet')
  })

  await t.test('in the pod: the init step fetches the JWT with the projected token and enrolls it, the sidecar loads the identity, the app gets replies', async (t) => {
    rp = await node.runPod(pod)
    t.match(node.kubelet.logs(rp, 'ziti-enroll'), /enrolled; wrote \/netfoundry\/ziti-cni\.json/)
    const sidecarLog = node.kubelet.logs(rp, 'ziti-tunnel')
    t.match(sidecarLog, /running "ziti tunnel proxy --identity \/netfoundry\/ziti-cni\.json/)
    t.notMatch(sidecarLog, /enrolling/, 'the sidecar found its identity: it enrolls nothing')
    const enrolled = ctrl.identities.get(identity!.id)!
    t.ok(enrolled.certFingerprint, 'enrolled with a CSR: the key was made in the pod')
    t.notOk(enrolled.enrollment, 'the one-time token is spent')
    const pg = await app(node, rp, ['tcp', 'pg.ziti', '5432'])
    t.match(pg.reply, /^ziti-service=postgres listener=15100 /, `pg.ziti:5432 through #billing (${pg.error ?? 'ok'})`)
    const api = await app(node, rp, ['tcp', 'api.ziti', '443'])
    t.match(api.reply, /^ziti-service=billing-api /, `api.ziti:443 through #k8s.sa:e2e/apps/billing (${api.error ?? 'ok'})`)
    const idFile = await node.exec(rp, 'app', ['cat', '/netfoundry/ziti-cni.json'])
    t.not(idFile.code, 0, 'the app container cannot read the identity file (the emptyDir is the sidecar\'s)')
    const tok = await node.exec(rp, 'app', ['ls', '/var/run/secrets/ziti-cni.openziti.io/enroll'])
    t.not(tok.code, 0, 'nor the enrollment token')
    t.equal(node.api.requests.filter((r) => r.path.includes('/secrets')).length, 0, 'no Secret was read or written for it')
  })

  await t.test('the enrollment dies after the controller signed the CSR (answer lost): the step asks again, the identity is re-issued, the first certificate is dead', async (t) => {
    ctrl.dropEnrollmentAnswers = 1
    const p = await node.createPod(manifest('billing-lost', { 'cni.openziti.io/role-attributes': 'billing' }))
    const r = await node.runPod(p)
    t.equal(ctrl.dropEnrollmentAnswers, 0, 'the first enrollment\'s answer was dropped')
    const dropped = ctrl.droppedEnrollments.at(-1)!
    t.ok(dropped, 'after the controller signed it')
    const log = node.kubelet.logs(r, 'ziti-enroll')
    t.match(log, /attempt 1: .*(socket hang up|ECONNRESET)/, 'the step saw the answer lost')
    t.match(log, /enrolled; wrote \/netfoundry\/ziti-cni\.json/)
    const now = ours().find((i) => i.tags['ziti-cni.openziti.io/pod-uid'] === p.metadata.uid)!
    t.not(now.id, dropped.identityId, 'the spent identity was deleted and recreated')
    t.notOk(ctrl.identities.has(dropped.identityId))
    t.notOk([...ctrl.identities.values()].some((i) => i.certFingerprint === dropped.certFingerprint), 'no identity authenticates with the first certificate')
    t.ok(now.certFingerprint, 'the new identity is enrolled')
    const pg = await app(node, r, ['tcp', 'pg.ziti', '5432'])
    t.match(pg.reply, /^ziti-service=postgres /, `the pod works (${pg.error ?? 'ok'})`)
    await node.removePod(r)
    node.api.delete('pods', 'apps', p.metadata.name)
    await until('its identity to go', () => !ctrl.identities.has(now.id), 10_000)
  })

  await t.test('two replicas: exactly one leads; leadership moves when the leader stops', async (t) => {
    t.same(replicas.filter((r) => r.rt.leader.isLeader()).length, 1, 'exactly one leader')
    const lease = node.api.get('leases', 'ziti-cni-identity', 'ziti-cni-identity-controller') as unknown as { spec: { renewTime: string; holderIdentity: string } }
    t.match(lease.spec.renewTime, /\.\d{6}Z$/, 'renewTime with six fractional digits (MicroTime)')
    const follower = replicas.find((r) => r !== leader)!
    const started = Date.now()
    await leader.close()
    await until('the other replica to lead', () => follower.rt.leader.isLeader(), 15_000)
    t.pass(`the follower leads after ${Date.now() - started} ms (leaseSeconds 3)`)
    t.equal((node.api.get('leases', 'ziti-cni-identity', 'ziti-cni-identity-controller') as unknown as { spec: { holderIdentity: string } }).spec.holderIdentity, follower === replicas[0] ? 'ic-a' : 'ic-b')
  })

  await t.test('pods deleted: identities gone within the documented time, also when the controller was down', async (t) => {
    await node.removePod(rp)
    node.api.delete('pods', 'apps', pod.metadata.name)
    const started = Date.now()
    await until('the deleted pod\'s identity to go', () => !ctrl.identities.has(identity!.id), 10_000)
    t.pass(`gone ${Date.now() - started} ms after the pod (watch)`)
    const second = await node.createPod(manifest('billing-2', { 'cni.openziti.io/role-attributes': 'billing' }))
    const id2 = await until('the second identity', () => ours().find((i) => i.tags['ziti-cni.openziti.io/pod-uid'] === second.metadata.uid))
    ctrl.setDown(true)
    node.api.delete('pods', 'apps', second.metadata.name)
    await new Promise((r) => setTimeout(r, 2500))
    t.ok(ctrl.identities.has(id2.id), 'nothing can be deleted while the controller is down')
    ctrl.setDown(false)
    const back = Date.now()
    await until('the reconcile to delete it', () => !ctrl.identities.has(id2.id), 15_000)
    t.pass(`gone ${Date.now() - back} ms after the controller came back (reconcileSeconds 1, graceSeconds 3)`)
    t.equal(ours().length, 0, 'no identity of a deleted pod is left')
  })
})
