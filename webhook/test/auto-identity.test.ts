// `cni.openziti.io/identity: auto` at the control plane: the real webhook (HTTPS, pure), the
// identity controller (its own runtime: Lease, pod watch, reconcile, enrollment endpoint), the
// API server stand-in (admission round trips, TokenRequest/TokenReview, Leases) and the fake
// OpenZiti controller with granular permissions. The data plane runs in e2e/node/auto-identity.test.ts.
import t from 'tap'
import { KubeConfig, type V1Pod } from '@kubernetes/client-node'
import type { AddressInfo } from 'node:net'
import { request } from 'node:https'
import { generateKeyPairSync } from 'node:crypto'
import forge from 'node-forge'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { validateConfig } from '../src/config.ts'
import { createWebhookMetrics } from '../src/metrics.ts'
import { buildServer } from '../src/server.ts'
import { startIdentityController, type IdentityRuntime } from '../src/identity-controller/runtime.ts'
import { EnrollLimiter, enrollServer, type EnrollLimits } from '../src/identity-controller/enroll-server.ts'
import { identityJson, parseOtt } from '../src/identity-controller/ott-enroll.ts'
import { FakeZitiController } from '../../e2e/node/standins/ziti-controller.ts'
import { https, startApiStandIn, testCerts, TEST_CONFIG } from './helpers.ts'

const TOKEN = 'platform-token'
const AUDIENCE = 'enroll.ziti-cni.openziti.io'
/** The credential the README prescribes: nothing more. */
const LEAST = ['identity.create', 'identity.read', 'identity.delete', 'service.read', 'config.read']
const POLICY = [
  { namespace: 'apps', serviceAccount: 'billing', attributes: ['billing'], prefixes: ['eu.'] },
  { namespace: 'apps', attributes: ['web'] },
]

async function world(t: Tap, controller: Record<string, unknown> = {}) {
  const fake = new FakeZitiController()
  await fake.listen()
  t.teardown(() => fake.close())
  const admin = fake.addCertIdentity('ziti-cni-identity-controller', LEAST)
  const credential = JSON.stringify({ ztAPI: `${fake.url}/edge/client/v1`, id: { cert: admin.cert, key: admin.key, ca: fake.ca.certPem } })
  // These tests step leader election and reconcile passes by hand and assert what one pass
  // did; a random 429 (and the client's Retry-After wait) reorders those steps. The same code
  // meets 429s in kube-client.test.ts, the watch-start 429 test below and the e2e suites, which
  // run with every chaos fault; here every fault but 429 stays on.
  const chaos = process.env.ZCNI_CHAOS ? 'watch-end,bookmark,410,paging' : undefined
  const { api, url, ca } = await startApiStandIn(t, TOKEN, chaos ? { chaos } : {})
  const kc = new KubeConfig()
  kc.loadFromOptions({ clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }], users: [{ name: 'u', token: TOKEN }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
  const { ca: whCa, serving } = testCerts()
  const config = validateConfig({ ...TEST_CONFIG, controller: { url: fake.url, cluster: 'test', graceSeconds: 2, leaseSeconds: 2, enrollCa: whCa.certPem, enrollImage: 'ghcr.io/ziti-cni/webhook:0.1.0', attributePolicy: POLICY, ...controller } }, {})
  const app = buildServer({ config, metrics: createWebhookMetrics(), log: pino({ level: 'silent' }), tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true })
  await app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(() => app.close())
  const mutateUrl = `https://127.0.0.1:${(app.server.address() as AddressInfo).port}/mutate`
  api.admission = { url: mutateUrl, ca: whCa.certPem }
  api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'apps', labels: { 'cni.openziti.io/inject': 'enabled' } } })
  api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'other', labels: { 'cni.openziti.io/inject': 'enabled' } } })
  api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kube-system' } })
  // The Lease's namespace, as deploy/components/controller-identities/namespace.yaml makes it.
  api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: config.controller.namespace } })
  for (const [ns, sa] of [['apps', 'default'], ['apps', 'billing'], ['other', 'default']]) api.put('serviceaccounts', { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: sa!, namespace: ns! } })
  const start = async (identity: string, cfg = config.controller, autoStart = false) => {
    const rt = await startIdentityController(cfg, kc, new Registry(), pino({ level: process.env.ZCNI_TEST_LOG ?? 'silent' }), { identity, credentialText: credential, autoStart })
    t.teardown(() => rt.stop())
    return rt
  }
  return { fake, api, kc, config, mutateUrl, whCa: whCa.certPem, start, credential, apiUrl: url, apiCa: ca.certPem }
}

type Tap = { teardown: (fn: () => unknown) => void }

function autoPod(name: string, annotations: Record<string, string> = {}, spec: Partial<V1Pod['spec']> = {}): V1Pod & { metadata: { namespace: string } } {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name, namespace: 'apps', annotations: { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'billing, eu.west', 'cni.openziti.io/services': 'pg.ziti:5432=postgres', ...annotations } },
    spec: { serviceAccountName: 'billing', containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }], ...spec },
  }
}

const managed = (fake: FakeZitiController) => [...fake.identities.values()].filter((i) => i.tags['ziti-cni.openziti.io/managed-by'] === 'ziti-cni')
/** What a kubelet does for the pod's projected serviceAccountToken source. */
const projected = (api: Awaited<ReturnType<typeof world>>['api'], pod: V1Pod, audience = AUDIENCE) =>
  api.serviceAccountTokens.request(pod.metadata!.namespace!, pod.spec!.serviceAccountName!, { audiences: [audience], expirationSeconds: 600, pod: { name: pod.metadata!.name!, uid: pod.metadata!.uid! } })
const lead = async (rt: IdentityRuntime) => { await rt.leader.tryAcquireOrRenew(); return rt }

t.test('a forged AdmissionReview (any namespace, attributes, uid) changes nothing anywhere and reveals no service', async (t) => {
  const { fake, api, mutateUrl, whCa, start } = await world(t)
  await lead(await start('ic-0'))
  const victim = await api.create('pods', autoPod('victim') as never) as unknown as V1Pod
  const before = { identities: JSON.stringify([...fake.identities.values()]), calls: fake.calls.length, apiRequests: api.requests.length, tokens: api.serviceAccountTokens.issued.length, rv: api.resourceVersion }
  const forge = (uid: string, namespace: string, attrs: string) => JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid, kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace, name: 'x', object: autoPod('x', { 'cni.openziti.io/role-attributes': attrs }, { serviceAccountName: 'default' }) } })
  const answers: string[] = []
  for (const [uid, ns, attrs] of [[victim.metadata!.uid!, 'apps', 'billing'], ['00000000-0000-0000-0000-000000000000', 'kube-system', 'admin'], ['x', 'other', 'web'], ['y', 'apps', 'web'], ['z', 'apps', 'k8s.ns:test/kube-system']]) {
    const r = await https(mutateUrl, whCa, 'POST', forge(uid!, ns!, attrs!))
    t.equal(r.status, 200)
    answers.push(r.text)
  }
  t.equal(JSON.stringify([...fake.identities.values()]), before.identities, 'the controller\'s identities are unchanged')
  t.equal(fake.calls.length, before.calls, 'the controller was not even called')
  t.equal(api.requests.length, before.apiRequests, 'the API server was not called')
  t.equal(api.serviceAccountTokens.issued.length, before.tokens)
  t.equal(api.resourceVersion, before.rv, 'nothing was written')
  t.notMatch(answers.join('\n'), /postgres|pg\.ziti|warehouse|Dial|Bind/, 'no answer says what an attribute reaches (only the pod\'s own services list is echoed in its patch)')
  t.match(answers[2], /"allowed":false/, 'another namespace: deny by default')
})

t.test('attribute policy at admission: allowed pods get a reference, others are refused naming annotation, attribute and policy', async (t) => {
  const { api, fake } = await world(t)
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  const inits = pod.spec!.initContainers!.map((c) => c.name)
  t.same(inits, ['ziti-cni-validator', 'ziti-enroll', 'ziti-tunnel'], 'the enrollment step runs before the sidecar')
  const enroll = pod.spec!.initContainers!.find((c) => c.name === 'ziti-enroll')!
  t.same(enroll.volumeMounts!.map((m) => m.name).sort(), ['ziti-enroll-token', 'ziti-identity'])
  t.same(pod.spec!.volumes!.find((v) => v.name === 'ziti-enroll-token')!.projected!.sources, [{ serviceAccountToken: { audience: AUDIENCE, expirationSeconds: 600, path: 'token' } }], 'a projected token for the enrollment audience only')
  for (const c of [...pod.spec!.initContainers!, ...pod.spec!.containers]) {
    if (c.name !== 'ziti-enroll') t.notOk(c.volumeMounts?.some((m) => m.name === 'ziti-enroll-token'), `${c.name} cannot see the token`)
  }
  const sidecar = pod.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!
  t.notOk(sidecar.env!.some((e) => e.name === 'ZITI_ENROLL_TOKEN' || e.name === 'ZITI_IDENTITY_JSON'), 'no credential in the pod spec')
  t.equal(pod.metadata!.labels!['cni.openziti.io/auto-identity'], 'true')
  t.equal(managed(fake).length, 0, 'admission created nothing')

  const refused: Array<[Record<string, string>, Partial<V1Pod['spec']>, RegExp]> = [
    [{ 'cni.openziti.io/role-attributes': 'billing, admin' }, {}, /cni\.openziti\.io\/role-attributes: entry 2 "admin": attribute "admin" is not allowed for ServiceAccount apps\/billing by the platform's attribute policy \(webhook config controller\.attributePolicy/],
    [{ 'cni.openziti.io/role-attributes': 'billing' }, { serviceAccountName: 'default' }, /attribute "billing" is not allowed for ServiceAccount apps\/default/],
    [{ 'cni.openziti.io/role-attributes': 'us.east' }, {}, /attribute "us\.east" is not allowed/],
    [{ 'cni.openziti.io/role-attributes': 'k8s.sa:test/apps/billing' }, {}, /attributes starting with "k8s\." are the platform's/],
  ]
  for (const [ann, spec, re] of refused) {
    const e = await api.create('pods', autoPod(`r-${Math.random().toString(36).slice(2, 7)}`, ann, spec) as never).catch((err: Error) => err)
    t.match(String(e), re)
  }
  const elsewhere = await api.create('pods', { ...autoPod('o-1', { 'cni.openziti.io/role-attributes': 'web' }, { serviceAccountName: 'default' }), metadata: { ...autoPod('o-1').metadata, namespace: 'other', annotations: { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'web', 'cni.openziti.io/services': 'a.ziti:1=a' } } } as never).catch((err: Error) => err)
  t.match(String(elsewhere), /attribute "web" is not allowed for ServiceAccount other\/default/, 'a namespace the policy does not name may request nothing')
  const none = await api.create('pods', { ...autoPod('o-2'), metadata: { name: 'o-2', namespace: 'other', annotations: { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/services': 'a.ziti:1=a' } }, spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] } } as never) as unknown as V1Pod
  t.ok(none.spec!.initContainers!.some((c) => c.name === 'ziti-enroll'), 'no requested attribute: only the platform\'s, always allowed')
  const svcAuto = await api.create('pods', autoPod('s-1', { 'cni.openziti.io/services': 'auto' }) as never).catch((err: Error) => err)
  t.match(String(svcAuto), /cni\.openziti\.io\/services: "auto" is no longer offered: admission never asks the OpenZiti controller/)
})

t.test('the identity controller creates the identity of a stored pod, with attributes nobody can forge, once', async (t) => {
  const { api, fake, start } = await world(t)
  const rt = await lead(await start('ic-0'))
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  await rt.controller.onPod(pod)
  await rt.controller.onPod(pod) // a replayed watch event
  await rt.controller.reconcile()
  const ids = managed(fake)
  t.equal(ids.length, 1, 'one identity per pod uid')
  const uid = pod.metadata!.uid!
  t.equal(ids[0]!.name, `k8s-apps-billing-0-${uid.replace(/-/g, '')}`)
  t.same(ids[0]!.roleAttributes, ['billing', 'eu.west', 'k8s.cluster:test', 'k8s.ns:test/apps', 'k8s.sa:test/apps/billing'])
  t.match(ids[0]!.tags, { 'ziti-cni.openziti.io/cluster': 'test', 'ziti-cni.openziti.io/namespace': 'apps', 'ziti-cni.openziti.io/pod': 'billing-0', 'ziti-cni.openziti.io/pod-uid': uid, 'ziti-cni.openziti.io/service-account': 'billing' })
  // A pod written straight to the store (no webhook) with a forged label asks for more.
  api.put('pods', { ...autoPod('forged', { 'cni.openziti.io/role-attributes': 'admin', 'cni.openziti.io/status': '{}' }), metadata: { ...autoPod('forged', { 'cni.openziti.io/role-attributes': 'admin', 'cni.openziti.io/status': '{}' }).metadata, labels: { 'cni.openziti.io/auto-identity': 'true' } } } as never)
  await rt.controller.reconcile()
  t.equal(managed(fake).length, 1, 'the controller applies the policy again: no identity for it')
  t.notOk(fake.calls.some((c) => c.method === 'PATCH' || c.method === 'PUT'), 'never updates an identity')
})

t.test('enrollment: only the pod\'s own audience-bound token gets its JWT, once', async (t) => {
  const { api, fake, start } = await world(t)
  const rt = await start('ic-1') // not the leader: any replica serves enrollments
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  const token = projected(api, pod)
  const ok = await rt.enrollment.answer(`Bearer ${token}`)
  t.equal(ok.status, 200)
  const identity = managed(fake)[0]!
  t.equal(ok.body.jwt, identity.enrollment!.jwt, 'the identity\'s one-time JWT, created on demand for the vouched-for pod')

  t.match((await rt.enrollment.answer(undefined)), { status: 401 })
  t.match((await rt.enrollment.answer(`Bearer ${projected(api, pod, 'https://kubernetes.default.svc.cluster.local')}`)), { status: 401, body: { message: /token audiences are invalid/ } }, 'the pod\'s ordinary API token is not an enrollment token')
  const plain = api.serviceAccountTokens.request('apps', 'billing', { audiences: [AUDIENCE], expirationSeconds: 600 })
  t.match(await rt.enrollment.answer(`Bearer ${plain}`), { status: 403, body: { message: /not a ServiceAccount token bound to a pod/ } })
  // Another pod of the same ServiceAccount that was not injected.
  api.put('pods', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'bystander', namespace: 'apps' }, spec: { serviceAccountName: 'billing', containers: [{ name: 'app', image: 'x' }] } } as never)
  const bystander = api.get('pods', 'apps', 'bystander') as unknown as V1Pod
  t.match(await rt.enrollment.answer(`Bearer ${projected(api, bystander)}`), { status: 403, body: { message: /gets no identity: the pod does not ask for/ } })
  t.equal(managed(fake).length, 1, 'no identity for the bystander')

  delete fake.identities.get(identity.id)!.enrollment // spent, and the pod asks again (the enroller died half-way)
  const again = await rt.enrollment.answer(`Bearer ${token}`)
  t.equal(again.status, 200, 'a pod that proves itself gets a fresh JWT once its own is spent')
  t.not(again.body.jwt, ok.body.jwt, 'never the spent one')
  t.notOk(fake.identities.has(identity.id), 'the spent identity is gone')
  t.same(managed(fake).map((i) => i.name), [identity.name], 'one identity, the same name')

  // The pod goes: its token is invalidated (claims.go), even for a new pod of the same name.
  api.delete('pods', 'apps', 'billing-0')
  t.match(await rt.enrollment.answer(`Bearer ${token}`), { status: 401, body: { message: /service account token has been invalidated/ } })
  api.put('pods', { ...pod, metadata: { ...pod.metadata!, uid: 'another-uid' } } as never)
  t.match(await rt.enrollment.answer(`Bearer ${token}`), { status: 401, body: { message: /pod UID \(another-uid\) does not match/ } })
})

/** `ziti edge enroll` up to the point where the controller has signed the CSR: key, CSR, POST. */
async function enrollCsr(fake: FakeZitiController, jwt: string): Promise<{ status: number; text: string; key: string; cert?: string }> {
  const { jti } = JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as { jti: string }
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } })
  const csr = forge.pki.createCertificationRequest()
  csr.publicKey = forge.pki.publicKeyFromPem(publicKey)
  csr.setSubject([{ name: 'commonName', value: jti }])
  csr.sign(forge.pki.privateKeyFromPem(privateKey) as forge.pki.rsa.PrivateKey, forge.md.sha256.create())
  const r = await zitiCall(fake, 'POST', `/edge/client/v1/enroll?method=ott&token=${encodeURIComponent(jti)}`, forge.pki.certificationRequestToPem(csr), 'application/x-pem-file')
  const cert = r.status === 200 ? (JSON.parse(r.text) as { data: { cert: string } }).data.cert : undefined
  return { ...r, key: privateKey, ...(cert ? { cert } : {}) }
}

function zitiCall(fake: FakeZitiController, method: string, path: string, body: string, type: string, who?: { cert: string; key: string }): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${fake.url}${path}`, { method, ca: fake.ca.certPem, ...(who ?? {}), headers: { 'content-type': type } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

/** Whether a key and certificate log in as an identity (cert authentication, client API). */
const logsIn = async (fake: FakeZitiController, who: { cert: string; key: string }) => (await zitiCall(fake, 'POST', '/edge/client/v1/authenticate?method=cert', '{}', 'application/json', who)).status

t.test('the enroller killed after the controller signed its CSR, before the identity file: the pod asks again, gets a fresh identity, the half-enrolled cert is dead', async (t) => {
  const { api, fake, start } = await world(t)
  const rt = await start('ic-1')
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  const token = projected(api, pod)
  const first = await rt.enrollment.answer(`Bearer ${token}`)
  t.equal(first.status, 200)
  const spentId = managed(fake)[0]!.id
  // The enroller: CSR accepted, certificate issued ... and killed before writing the file.
  const half = await enrollCsr(fake, first.body.jwt!)
  t.equal(half.status, 200, 'the controller accepted the CSR and spent the token')
  t.equal(await logsIn(fake, { cert: half.cert!, key: half.key }), 200, 'the half-enrolled credential worked at that moment')
  t.match(await enrollCsr(fake, first.body.jwt!), { status: 400, text: /INVALID_ENROLLMENT_TOKEN/ }, 'the spent JWT enrolls no more (the wedge, without a re-issue)')

  // The enroller's rerun: no identity file, so it asks again with the pod's bound token.
  const fresh = await rt.enrollment.answer(`Bearer ${token}`)
  t.equal(fresh.status, 200, 'the pod proves itself and gets a fresh JWT')
  t.not(fresh.body.jwt, first.body.jwt)
  const now = managed(fake)
  t.equal(now.length, 1, 'still one identity for the pod')
  t.not(now[0]!.id, spentId, 'the spent identity was deleted and recreated')
  t.equal(now[0]!.tags['ziti-cni.openziti.io/pod-uid'], pod.metadata!.uid, 'for the same pod')
  t.equal(await logsIn(fake, { cert: half.cert!, key: half.key }), 401, 'the half-enrolled certificate no longer logs in')
  const done = await enrollCsr(fake, fresh.body.jwt!)
  t.equal(done.status, 200, 'the fresh JWT enrolls')
  t.equal(await logsIn(fake, { cert: done.cert!, key: done.key }), 200, 'and the pod\'s new credential logs in')
})

t.test('the enrollment step killed after the controller signed its CSR, before the identity file: its rerun recovers the pod, the first certificate is dead', async (t) => {
  const { api, fake, start, whCa } = await world(t)
  const rt = await start('ic-0')
  const { serving } = testCerts()
  const server = enrollServer(rt.enrollment, { cert: serving.certPem, key: serving.keyPem }, new Registry(), pino({ level: 'silent' }))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise((r) => server.close(r)))
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  const dir = mkdtempSync(join(tmpdir(), 'zcni-enroll-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'token'), projected(api, pod))
  const file = join(dir, 'ziti-cni.json')
  const run = (timeoutSeconds: string) => new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const p = spawn(process.execPath, [new URL('../src/identity-controller/enroll-init.ts', import.meta.url).pathname], {
      env: { ...process.env, NODE_OPTIONS: '', ZITI_IDENTITY_DIR: dir, ZITI_IDENTITY_BASENAME: 'ziti-cni', ZITI_CNI_ENROLL_URL: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, ZITI_CNI_ENROLL_CA: whCa, ZITI_CNI_TOKEN_FILE: join(dir, 'token'), ZITI_CNI_ENROLL_TIMEOUT_SECONDS: timeoutSeconds },
    })
    let stderr = ''
    p.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
    p.on('close', (code) => resolve({ code, stderr }))
  })
  // The identity file cannot be written (its temporary name is taken): the step dies exactly
  // between the controller signing the CSR and the file existing.
  mkdirSync(`${file}.tmp`)
  const died = await run('0')
  t.equal(died.code, 1, 'the step failed')
  t.match(died.stderr, /giving up: EISDIR/)
  t.notOk(existsSync(file), 'no identity file')
  const spent = { ...managed(fake)[0]! }
  t.ok(spent.certFingerprint, 'the controller had signed the CSR')
  t.notOk(spent.enrollment, 'and spent the token: a tunneler handed this JWT could never enroll it')

  rmSync(`${file}.tmp`, { recursive: true })
  const rerun = await run('60') // the kubelet reruns a failed init container
  t.equal(rerun.code, 0, rerun.stderr)
  t.match(rerun.stderr, /enrolled; wrote/)
  t.equal(statSync(file).mode & 0o777, 0o600, 'the identity file is the sidecar uid\'s only')
  const now = managed(fake)
  t.equal(now.length, 1, 'one identity for the pod')
  t.not(now[0]!.id, spent.id, 'the spent identity was deleted and recreated')
  t.notOk([...fake.identities.values()].some((i) => i.certFingerprint === spent.certFingerprint), 'no identity authenticates with the first certificate')
  const written = JSON.parse(readFileSync(file, 'utf8')) as { ztAPI: string; id: { cert: string; key: string; ca: string } }
  t.equal(written.ztAPI, `${fake.url}/edge/client/v1`)
  const who = { cert: written.id.cert.replace(/^pem:/, ''), key: written.id.key.replace(/^pem:/, '') }
  t.equal(await logsIn(fake, who), 200, 'the written identity logs in')
  t.equal(fake.identities.get(now[0]!.id)!.certFingerprint !== undefined, true)

  const again = await run('60') // a later rerun (or a sidecar restart) changes nothing
  t.equal(again.code, 0)
  t.match(again.stderr, /enrolled already/)
  t.same(managed(fake).map((i) => i.id), [now[0]!.id], 'no re-issue once the identity file exists')
  t.equal(await logsIn(fake, who), 200)
})

t.test('no re-issue for a pod the caller is not: another pod\'s token, a stale token of a deleted pod, forged tokens', async (t) => {
  const { api, fake, start } = await world(t)
  const rt = await start('ic-1')
  const victim = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  const victimToken = projected(api, victim)
  const enrolled = await enrollCsr(fake, (await rt.enrollment.answer(`Bearer ${victimToken}`)).body.jwt!)
  t.equal(enrolled.status, 200, 'the victim enrolled')
  const victimId = managed(fake)[0]!.id
  const intact = async (why: string) => {
    t.ok(fake.identities.has(victimId), `${why}: the victim's identity is untouched`)
    t.equal(await logsIn(fake, { cert: enrolled.cert!, key: enrolled.key }), 200, `${why}: its credential still logs in`)
  }

  // Another injected pod of the same ServiceAccount: its token speaks for itself only.
  const attacker = await api.create('pods', autoPod('billing-1') as never) as unknown as V1Pod
  const mine = await rt.enrollment.answer(`Bearer ${projected(api, attacker)}`)
  t.equal(mine.status, 200)
  t.equal(fake.identities.get(victimId)?.enrollment, undefined, 'the answer is the attacker\'s own identity')
  t.not(mine.body.jwt, undefined)
  await intact('another pod\'s token')

  // Forged: a token naming the victim the API server did not sign; an unbound token of its SA.
  const [h, , sig] = victimToken.split('.')
  const claims = JSON.parse(Buffer.from(victimToken.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>
  const forgedToken = `${h}.${Buffer.from(JSON.stringify({ ...claims, exp: (claims.exp as number) + 3600 })).toString('base64url')}.${sig}`
  t.match(await rt.enrollment.answer(`Bearer ${forgedToken}`), { status: 401 }, 'a token with altered claims is not authenticated')
  t.match(await rt.enrollment.answer(`Bearer ${api.serviceAccountTokens.request('apps', 'billing', { audiences: [AUDIENCE], expirationSeconds: 600 })}`), { status: 403 })
  await intact('forged tokens')

  // The victim's token after its pod is deleted, and with a new pod of the same name.
  const deleted = await api.create('pods', autoPod('billing-2') as never) as unknown as V1Pod
  const staleToken = projected(api, deleted)
  t.equal((await rt.enrollment.answer(`Bearer ${staleToken}`)).status, 200)
  const deletedId = managed(fake).find((i) => i.tags['ziti-cni.openziti.io/pod-uid'] === deleted.metadata!.uid)!.id
  delete fake.identities.get(deletedId)!.enrollment // it enrolled
  api.delete('pods', 'apps', 'billing-2')
  t.match(await rt.enrollment.answer(`Bearer ${staleToken}`), { status: 401, body: { message: /invalidated/ } }, 'a deleted pod\'s token is invalid')
  api.put('pods', { ...deleted, metadata: { ...deleted.metadata!, uid: 'the-new-pod-uid' } } as never)
  t.match(await rt.enrollment.answer(`Bearer ${staleToken}`), { status: 401, body: { message: /does not match/ } }, 'and does not speak for a new pod of that name')
  t.ok(fake.identities.has(deletedId), 'no re-issue from a stale token: the spent identity is as it was')
  t.equal(managed(fake).length, 3, 'no identity created either')
  await intact('stale tokens')
})

t.test('parseOtt: an enrollment token that is not an OTT JWT is refused naming the claim; identityJson is what the tunnelers load', async (t) => {
  const jwt = (claims: Record<string, unknown>) => `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.c2ln`
  const good = { iss: 'https://ctrl.example:1280', sub: 'id1', jti: 'tok', em: 'ott', exp: 2_000_000_000 }
  t.match(parseOtt(jwt(good), 0), { claims: good })
  t.throws(() => parseOtt('not-a-jwt', 0), /not a JWT/)
  t.throws(() => parseOtt('a.!!!.c', 0), /claims are not JSON/)
  t.throws(() => parseOtt(jwt({ ...good, em: 'ca' }), 0), /em claim is "ca", not "ott"/)
  t.throws(() => parseOtt(jwt({ ...good, jti: undefined }), 0), /no jti claim/)
  t.throws(() => parseOtt(jwt({ ...good, exp: 'soon' }), 0), /no exp claim/)
  t.throws(() => parseOtt(jwt(good), 2_000_000_001_000), /expired \(exp claim\)/)
  t.throws(() => parseOtt(jwt({ ...good, iss: 'http://ctrl.example' }), 0), /iss claim http:\/\/ctrl\.example is not an https URL/)
  t.same(JSON.parse(identityJson('https://c:1', 'CERT', 'KEY', 'CA')), { ztAPI: 'https://c:1/edge/client/v1', ztAPIs: ['https://c:1/edge/client/v1'], configTypes: null, id: { cert: 'pem:CERT', key: 'pem:KEY', ca: 'pem:CA' } })
})

t.test('the enrollment endpoint over HTTPS', async (t) => {
  const { api, start, whCa } = await world(t)
  const rt = await start('ic-0')
  const { serving } = testCerts()
  const server = enrollServer(rt.enrollment, { cert: serving.certPem, key: serving.keyPem }, new Registry(), pino({ level: 'silent' }))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise((r) => server.close(r)))
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  const r = await https(`${url}/enroll`, whCa, 'POST', undefined, { authorization: `Bearer ${projected(api, pod)}` })
  t.equal(r.status, 200)
  t.match(JSON.parse(r.text), { jwt: /^ey/ })
  t.equal((await https(`${url}/enroll`, whCa, 'GET')).status, 404)
})

t.test('EnrollLimiter: per source, global, in flight; Retry-After says when a token is back', async (t) => {
  const limits: EnrollLimits = { perSource: { burst: 2, perSecond: 0.5 }, global: { burst: 3, perSecond: 1 }, maxInFlight: 2, maxSources: 3 }
  const l = new EnrollLimiter(limits, 0)
  const a1 = l.admit('10.0.0.1', 0)
  const a2 = l.admit('10.0.0.1', 0)
  t.ok(a1.ok && a2.ok, 'a source gets its burst')
  t.same(l.admit('10.0.0.2', 0), { ok: false, scope: 'in-flight', retryAfterSeconds: 1 }, 'two in flight: the third waits, whoever it is')
  if (a1.ok) { a1.release(); a1.release() } // released once only
  t.same(l.admit('10.0.0.1', 0), { ok: false, scope: 'source', retryAfterSeconds: 2 }, 'the source\'s bucket is empty: one token in 2 s')
  const b = l.admit('10.0.0.2', 0)
  t.ok(b.ok, 'another source is not held back by the first')
  if (a2.ok) a2.release()
  if (b.ok) b.release()
  t.same(l.admit('10.0.0.3', 0), { ok: false, scope: 'global', retryAfterSeconds: 1 }, 'the global bucket (3) is spent')
  t.ok(l.admit('10.0.0.3', 1000).ok, 'a second later the global bucket has a token again')
  t.same(l.admit('10.0.0.1', 1000), { ok: false, scope: 'source', retryAfterSeconds: 1 }, 'half a token after 1 s: 1 s more')
  for (let i = 0; i < 10; i++) l.admit(`10.1.0.${i}`, 5000)
  t.equal(l.sourcesTracked, 3, 'memory is bounded by maxSources')
})

t.test('an /enroll flood gets 429 before any TokenReview; the API server sees a bounded number; a real pod still enrolls', async (t) => {
  const { api, start, whCa } = await world(t)
  const rt = await start('ic-0')
  const { serving } = testCerts()
  const limits: EnrollLimits = { perSource: { burst: 3, perSecond: 1 }, global: { burst: 10, perSecond: 5 }, maxInFlight: 4, maxSources: 1000 }
  const registry = new Registry()
  const server = enrollServer(rt.enrollment, { cert: serving.certPem, key: serving.keyPem }, registry, pino({ level: 'silent' }), limits)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise((r) => { server.closeAllConnections(); server.close(r) }))
  const port = (server.address() as AddressInfo).port
  // Each request on its own connection from a chosen loopback address (any pod IP would do).
  const post = (from: string, token: string) => new Promise<{ status: number; retryAfter?: string; body: string }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/enroll', method: 'POST', ca: whCa, servername: 'localhost', localAddress: from, agent: false, headers: { authorization: `Bearer ${token}`, 'content-length': 0 } }, (res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'], body }))
    })
    req.on('error', reject)
    req.end()
  })
  // Answered ones: a 429 the API server's APF sent back (chaos) cost it nothing and is sent again.
  const reviews = () => api.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/tokenreviews') && r.status !== 429).length
  const started = Date.now()
  // One source, 60 forged requests at once; then 60 more from 60 other sources.
  const oneSource = await Promise.all(Array.from({ length: 60 }, () => post('127.0.0.2', 'forged')))
  const manySources = await Promise.all(Array.from({ length: 60 }, (_, i) => post(`127.0.1.${i + 1}`, 'forged')))
  const elapsed = (Date.now() - started) / 1000
  const throttled = [...oneSource, ...manySources].filter((r) => r.status === 429)
  t.ok(oneSource.filter((r) => r.status !== 429).length <= limits.perSource.burst + Math.ceil(elapsed * limits.perSource.perSecond), 'one source gets its burst and no more')
  t.ok(throttled.length >= 100, `the flood is mostly throttled (${throttled.length} of 120)`)
  t.ok(throttled.every((r) => Number(r.retryAfter) >= 1 && /too many enrollment requests \((source|global|in-flight) limit\)/.test(r.body)), 'every 429 carries Retry-After and names the limit')
  const bound = limits.global.burst + Math.ceil(elapsed * limits.global.perSecond)
  t.ok(reviews() <= bound, `TokenReviews stay bounded: ${reviews()} <= ${bound} (burst + rate x ${elapsed.toFixed(1)} s)`)
  t.equal(reviews(), 120 - throttled.length, 'a throttled request made no TokenReview')
  t.match(await registry.metrics(), /ziti_cni_enroll_throttled_total\{scope="(source|global|in-flight)"\} \d+/)

  // After the flood: a legitimate pod enrolls, honouring Retry-After while the buckets refill.
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  let r = await post('127.0.2.1', projected(api, pod))
  for (let i = 0; r.status === 429 && i < 10; i++) {
    await new Promise((res) => setTimeout(res, Number(r.retryAfter) * 1000))
    r = await post('127.0.2.1', projected(api, pod))
  }
  t.equal(r.status, 200, 'the pod got its JWT')
  t.match(JSON.parse(r.body), { jwt: /^ey/ })
})

t.test('deleted pods lose their identity: by the watch, and by the reconcile when the controller was down', async (t) => {
  const { api, fake, start } = await world(t)
  const rt = await start('ic-0', undefined, true)
  for (let i = 0; i < 50 && !rt.leader.isLeader(); i++) await new Promise((r) => setTimeout(r, 100))
  const a = await api.create('pods', autoPod('a') as never) as unknown as V1Pod
  const b = await api.create('pods', autoPod('b') as never) as unknown as V1Pod
  const until = async (what: string, ok: () => boolean) => {
    for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 100))
    t.ok(ok(), what)
  }
  await until('the watch created both identities', () => managed(fake).length === 2)
  api.delete('pods', 'apps', a.metadata!.name!)
  await until('the watch deleted a\'s identity', () => managed(fake).length === 1)
  fake.setDown(true)
  api.delete('pods', 'apps', b.metadata!.name!)
  await new Promise((r) => setTimeout(r, 500))
  t.equal(managed(fake).length, 1, 'nothing can be deleted while the controller is down')
  t.equal(await rt.controller.reconcile(), undefined, 'a reconcile pass fails and deletes nothing')
  fake.setDown(false)
  await new Promise((r) => setTimeout(r, 2100)) // graceSeconds
  await rt.leader.tryAcquireOrRenew()
  // Asked for now, it may queue behind the periodic pass, which then is the one that deletes.
  t.ok(await rt.controller.reconcile(), 'the next pass runs')
  t.equal(managed(fake).length, 0, 'and the identity of the pod deleted while the controller was down is gone')
})

t.test('two clusters on one controller never delete each other\'s identities; the default tag is the kube-system uid', async (t) => {
  const { api, fake, start, config } = await world(t, { cluster: '' })
  const ks = api.get('namespaces', undefined, 'kube-system')!
  const mine = await lead(await start('ic-0'))
  t.equal(mine.cluster, `uid-${ks.metadata.uid}`, 'derived from the kube-system namespace uid')
  const theirs = await lead(await start('ic-x', { ...config.controller, cluster: 'elsewhere', leaseName: 'other-lease' }))
  const pod = await api.create('pods', autoPod('a') as never) as unknown as V1Pod
  await mine.controller.onPod(pod)
  // The other cluster's identity for a pod this cluster has never seen.
  await theirs.controller.onPod({ ...pod, metadata: { ...pod.metadata!, uid: 'their-pod-uid', name: 'theirs' } })
  api.delete('pods', 'apps', 'a')
  await new Promise((r) => setTimeout(r, 2100))
  await theirs.leader.tryAcquireOrRenew()
  t.same((await theirs.controller.reconcile())?.delete.map((d) => d.podUid), ['their-pod-uid'], 'the other cluster deletes only its own (its pod is not in its list)')
  await mine.leader.tryAcquireOrRenew()
  t.same((await mine.controller.reconcile())?.delete.map((d) => d.podUid), [pod.metadata!.uid], 'this cluster deletes only its own')
  t.equal(managed(fake).length, 0)
})

t.test('two replicas: one leads with a Lease the API server accepts; the other takes over when it stops', async (t) => {
  const { api, start } = await world(t)
  const a = await start('ic-0')
  const b = await start('ic-1')
  t.same([await a.leader.tryAcquireOrRenew(), await b.leader.tryAcquireOrRenew()], [true, false], 'exactly one leader')
  const lease = api.get('leases', 'ziti-cni-identity', 'ziti-cni-identity-controller') as unknown as { spec: { renewTime: string; acquireTime: string; holderIdentity: string } }
  t.match(lease.spec.renewTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, 'renewTime is a MicroTime: six fractional digits (apimachinery micro_time.go)')
  t.match(lease.spec.acquireTime, /\.\d{6}Z$/)
  t.not(await a.controller.reconcile(), undefined, 'the leader reconciles')
  t.equal(await b.controller.reconcile(), undefined, 'the other does not')
  await new Promise((r) => setTimeout(r, 2300)) // ic-0 stops renewing
  t.equal(a.leader.isLeader(), false, 'the old leader steps down on its own clock')
  t.equal(await b.leader.tryAcquireOrRenew(), true, 'ic-1 takes the expired lease')
  t.equal(await a.leader.tryAcquireOrRenew(), false, 'ic-0 cannot take it back while it is renewed')
})

t.test('least privilege: the prescribed credential does its job and cannot re-attribute identities', async (t) => {
  const { fake, credential } = await world(t)
  const { ControllerClient } = await import('../src/ziti/controller.ts')
  const { parseCredential } = await import('../src/ziti/credential.ts')
  const { createControllerMetrics } = await import('../src/ziti/metrics.ts')
  const client = new ControllerClient({ url: fake.url, ca: fake.ca.certPem, credential: parseCredential(credential), metrics: createControllerMetrics(new Registry()), log: pino({ level: 'silent' }) })
  t.teardown(() => client.close())
  const id = await client.createIdentity({ name: 'probe', roleAttributes: ['x'], tags: {} }, Date.now() + 5000)
  t.ok(await client.getIdentity(id, Date.now() + 5000))
  // What identity.update would allow: re-attributing any identity (README blast radius). The
  // same credential, by hand: log in with its certificate, then PATCH.
  const cred = JSON.parse(credential) as { id: { cert: string; key: string } }
  const call = (method: string, path: string, body: string, session?: string) => new Promise<{ status: number; text: string; session?: string }>((resolve, reject) => {
    const req = request(`${fake.url}/edge/management/v1${path}`, { method, ca: fake.ca.certPem, cert: cred.id.cert, key: cred.id.key, headers: { 'content-type': 'application/json', ...(session ? { 'zt-session': session } : {}) } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), session: res.headers['zt-session'] as string | undefined }))
    })
    req.on('error', reject)
    req.end(body)
  })
  const login = await call('POST', '/authenticate?method=cert', '{}')
  const session = (JSON.parse(login.text) as { data: { token: string } }).data.token
  const other = fake.addCertIdentity('other', [])
  other.identity.roleAttributes = ['payments-admin']
  const patch = await call('PATCH', `/identities/${other.identity.id}`, JSON.stringify({ roleAttributes: ['billing'] }), session)
  t.equal(patch.status, 401, 'identity.update is not granted: 401, as the controller answers (appenv.go:1010)')
  t.same(fake.identities.get(other.identity.id)!.roleAttributes, ['payments-admin'], 'unchanged')
  const who = fake.identityByName('ziti-cni-identity-controller')!
  t.same(who.permissions, LEAST)
  t.throws(() => fake.addCertIdentity('typo', ['identity.everything']), /not one the controller knows/)
  t.ok(await client.deleteIdentity(id, Date.now() + 5000))
  t.ok(fake.identities.has(other.identity.id))
})

t.test('auto-drift: what a running pod intercepts against what its identity may dial now', async (t) => {
  const { fake, api, start, config, whCa, apiUrl, apiCa } = await world(t)
  const rt = await lead(await start('ic-0'))
  fake.addService('postgres', ['db'], [fake.addConfig('pg-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })])
  const policy = fake.addPolicy('billing-dials-db', 'Dial', ['#billing'], ['#db'])
  const pod = await api.create('pods', autoPod('billing-0') as never) as unknown as V1Pod
  await rt.controller.onPod(pod)
  const dir = mkdtempSync(join(tmpdir(), 'zcni-drift-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const reader = fake.addCertIdentity('drift-reader', ['identity.read', 'service.read', 'config.read'])
  writeFileSync(join(dir, 'config.yaml'), JSON.stringify({ controller: { url: config.controller.url, credentialFile: join(dir, 'credential.json'), enrollCa: whCa, enrollImage: 'ghcr.io/ziti-cni/webhook:0.1.0' } }))
  writeFileSync(join(dir, 'credential.json'), JSON.stringify({ ztAPI: fake.url, id: { cert: reader.cert, key: reader.key, ca: fake.ca.certPem } }))
  const kcFile = join(dir, 'kubeconfig')
  writeFileSync(kcFile, JSON.stringify({ apiVersion: 'v1', kind: 'Config', 'current-context': 'x', clusters: [{ name: 'c', cluster: { server: apiUrl, 'certificate-authority-data': Buffer.from(apiCa).toString('base64') } }], users: [{ name: 'u', user: { token: TOKEN } }], contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }] }))
  const drift = () => new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    const p = spawn(process.execPath, [new URL('../src/cli/auto-drift.ts', import.meta.url).pathname, '-n', 'apps', 'billing-0', '--config', join(dir, 'config.yaml'), '--kubeconfig', kcFile], { env: { ...process.env, NODE_OPTIONS: '' } })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d: Buffer) => { stdout += d })
    p.stderr.on('data', (d: Buffer) => { stderr += d })
    p.on('close', (status) => resolve({ status, stdout, stderr }))
  })
  const same = await drift()
  t.equal(same.status, 0, same.stderr)
  t.match(same.stdout, /intercepted and still granted: \n  pg\.ziti:5432\/tcp=postgres\n/)
  policy.serviceRoles = []
  const changed = await drift()
  t.equal(changed.status, 3, 'exit 3: drift')
  t.match(changed.stdout, /intercepted, no longer granted \(dials fail at the controller\): \n  pg\.ziti:5432\/tcp=postgres\n/)
})

t.test('a busy API server (429, Retry-After 3 s): the pod watch waits as asked, then creates identities', async (t) => {
  const { api, fake, start } = await world(t)
  const rt = await lead(await start('ic-0'))
  api.overload(4_000, 3)
  const began = Date.now()
  const stopWatch = rt.controller.start()
  t.teardown(stopWatch)
  const podCalls = () => api.requests.filter((r) => r.path.startsWith('/api/v1/pods'))
  await new Promise((r) => setTimeout(r, 2_900 - (Date.now() - began)))
  t.same(podCalls().map((r) => r.status), [429], 'one list, then nothing before the Retry-After')
  await new Promise((r) => setTimeout(r, 4_200 - (Date.now() - began)))
  await rt.leader.tryAcquireOrRenew()
  await api.create('pods', autoPod('late') as never)
  for (let i = 0; i < 150 && managed(fake).length < 1; i++) await new Promise((r) => setTimeout(r, 100))
  t.equal(managed(fake).length, 1, 'the restarted watch created the identity')
  t.ok(podCalls().filter((r) => r.status === 429).length <= 3, 'few requests while refused, not a 2 s loop')
})
