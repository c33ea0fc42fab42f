// The Kubernetes API stand-in keeps the real API's contract: each behaviour the node suites
// rely on, driven over HTTPS with @kubernetes/client-node and raw requests. Not root-only.
import t from 'tap'
import { request as httpsRequest, createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { CoordinationV1Api, CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node'
import { pino } from 'pino'
import { createCa, createServingCert } from '../../webhook/src/tls/certs.ts'
import { LeaderElector } from '../../webhook/src/leader.ts'
import { KubeApiStandIn, loadShippedConfiguration, type KubeApiOptions } from './lib/kube-api.ts'
import { parseChaos, DEFAULT_FAULTS } from './lib/kube-api/chaos.ts'
import { startWebhook } from './lib/webhook.ts'

const TOKEN = 'test-token'
const ca = createCa({ commonName: 'kube-api-test-ca', validDays: 1 })
const serving = createServingCert(ca, { commonName: 'kube-apiserver', ipAddresses: ['127.0.0.1'], validDays: 1 })

async function standIn(t: { teardown: (fn: () => unknown) => void }, opts: Partial<KubeApiOptions> = {}) {
  const api = new KubeApiStandIn({ cert: serving.certPem, key: serving.keyPem, tokens: [TOKEN], chaos: '0', ...opts })
  const url = await api.listen()
  t.teardown(() => api.close())
  const kc = new KubeConfig()
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }],
    users: [{ name: 'u', token: TOKEN }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x',
  })
  for (const ns of ['apps', 'plain']) await api.create('namespaces', { metadata: { name: ns, labels: ns === 'apps' ? { 'cni.openziti.io/inject': 'enabled' } : {} } })
  // kube-system is the API server's own (lifecycle.ts SYSTEM_NAMESPACES); label it as a user would.
  const system = api.get('namespaces', undefined, 'kube-system')!
  api.put('namespaces', { ...system, metadata: { ...system.metadata, labels: { ...system.metadata.labels, 'cni.openziti.io/inject': 'enabled' } } })
  return { api, url, kc, core: kc.makeApiClient(CoreV1Api) }
}

interface Raw { status: number; headers: Record<string, string | string[] | undefined>; text: string }
function raw(url: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body)
    const req = httpsRequest(url + path, { method, ca: ca.certPem, headers: { authorization: `Bearer ${TOKEN}`, ...(data ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(data)) } : {}), ...headers } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('error', reject)
    req.end(data)
  })
}

/** A watch: the events as they arrive, when the headers came, and when it ended. */
function openWatch(url: string, path: string) {
  const events: Array<{ type: string; object: { metadata?: { name?: string; resourceVersion?: string }; code?: number; reason?: string; message?: string } }> = []
  const started = Date.now()
  let headersAt = -1
  let endedAt = -1
  let buf = ''
  const req = httpsRequest(url + path, { ca: ca.certPem, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
    headersAt = Date.now() - started
    res.on('data', (c: Buffer) => {
      buf += c.toString('utf8')
      let i
      while ((i = buf.indexOf('\n')) >= 0) { events.push(JSON.parse(buf.slice(0, i))); buf = buf.slice(i + 1) }
    })
    res.on('end', () => { endedAt = Date.now() - started })
    res.on('error', () => {})
  })
  req.on('error', () => {})
  req.end()
  return { events, req, headersAt: () => headersAt, endedAt: () => endedAt }
}

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const pod = (name: string, extra: { labels?: Record<string, string>; annotations?: Record<string, string>; spec?: object; namespace?: string; finalizers?: string[] } = {}) => ({
  apiVersion: 'v1', kind: 'Pod',
  metadata: { name, namespace: extra.namespace ?? 'default', ...(extra.labels ? { labels: extra.labels } : {}), ...(extra.annotations ? { annotations: extra.annotations } : {}), ...(extra.finalizers ? { finalizers: extra.finalizers } : {}) },
  spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1.0' }], ...extra.spec },
})

t.test('MicroTime: a Lease time with other than six fractional digits is refused with 400; the leader elector writes valid ones', async (t) => {
  const { api, url, kc } = await standIn(t)
  for (const [value, rest] of [['2026-12-01T13:00:00.123Z', '.123Z'], ['2026-12-01T13:00:00Z', 'Z']] as const) {
    const r = await raw(url, 'POST', '/apis/coordination.k8s.io/v1/namespaces/default/leases', { metadata: { name: 'l' }, spec: { renewTime: value } })
    t.equal(r.status, 400, value)
    t.equal(JSON.parse(r.text).message, `Lease in version "v1" cannot be handled as a Lease: parsing time "${value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "${rest}" as ".000000"`)
  }
  t.equal((await raw(url, 'POST', '/apis/coordination.k8s.io/v1/namespaces/default/leases', { metadata: { name: 'l' }, spec: { renewTime: '2026-12-01T13:00:00.123456Z' } })).status, 201, 'six digits are accepted')
  // webhook/src/leader.ts against the strict stand-in: acquire (create), renew (replace), twice.
  const elector = new LeaderElector(kc, { namespace: 'default', name: 'leader', identity: 'replica-a', leaseSeconds: 15 }, pino({ level: 'silent' }))
  t.equal(await elector.tryAcquireOrRenew(), true, 'acquired')
  t.equal(await elector.tryAcquireOrRenew(), true, 'renewed')
  const lease = api.get('leases', 'default', 'leader') as unknown as { spec: { renewTime: string; acquireTime: string } }
  t.match(lease.spec.renewTime, /\.\d{6}Z$/)
  t.match(lease.spec.acquireTime, /\.\d{6}Z$/)
  // A chaos 429 (APF) is sent again by the client after its Retry-After: count the answered ones.
  const writes = api.requests.filter((r) => r.path.includes('/leases') && r.method !== 'GET' && r.status !== 429).map((r) => `${r.method} ${r.status}`)
  t.same(writes.slice(-2), ['POST 201', 'PUT 200'], 'the create and the replace were both accepted')
  const coord = kc.makeApiClient(CoordinationV1Api)
  t.equal((await coord.readNamespacedLease({ name: 'leader', namespace: 'default' })).spec?.holderIdentity, 'replica-a')
})

t.test('total annotation size: 422 with the real message, also after mutation', async (t) => {
  const { api, url, core } = await standIn(t)
  const big = { a: 'x'.repeat(200_000), b: 'y'.repeat(62_143) } // 1 + 200000 + 1 + 62143 = 262145 bytes
  const r = await raw(url, 'POST', '/api/v1/namespaces/default/secrets', { metadata: { name: 's', annotations: big } })
  t.equal(r.status, 422)
  const st = JSON.parse(r.text)
  t.equal(st.reason, 'Invalid')
  t.equal(st.message, 'Secret "s" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes')
  t.equal((await raw(url, 'POST', '/api/v1/namespaces/default/secrets', { metadata: { name: 's', annotations: { a: 'x'.repeat(200_000), b: 'y'.repeat(62_142) } } })).status, 201, 'exactly 262144 bytes is allowed')
  // An update that grows them is refused too.
  const e = await core.patchNamespacedSecret({ name: 's', namespace: 'default', body: { metadata: { annotations: { c: 'z' } } } }).catch((err: { code: number }) => err)
  t.equal((e as { code: number }).code, 422)
  // After mutation: a webhook adds 100 KB to a pod whose own annotations are 200 KB.
  const hook = await fakeWebhook(t, () => ({ allowed: true, patch: [{ op: 'add', path: '/metadata/annotations/cni.openziti.io~1interception', value: 'i'.repeat(100_000) }] }))
  api.admission = hook.target
  const p = await raw(url, 'POST', '/api/v1/namespaces/apps/pods', pod('grown', { namespace: 'apps', annotations: { user: 'u'.repeat(200_000) } }))
  t.equal(p.status, 422)
  t.equal(JSON.parse(p.text).message, 'Pod "grown" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes')
  t.equal(hook.calls.length, 1, 'the webhook ran first')
  t.notOk(api.get('pods', 'apps', 'grown'))
})

t.test('watch: headers at once, timeoutSeconds, a randomised default timeout, bookmarks when asked', async (t) => {
  const { api, url } = await standIn(t, { minRequestTimeoutSeconds: 1, bookmarkFrequencyMs: 200 })
  const quiet = openWatch(url, `/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dnowhere&resourceVersion=${api.resourceVersion}`)
  await until('the watch headers', () => quiet.headersAt() >= 0, 1000)
  t.ok(quiet.headersAt() < 1000, `headers after ${quiet.headersAt()} ms with no event to send`)
  await until('the default timeout', () => quiet.endedAt() >= 0, 4000)
  t.ok(quiet.endedAt() >= 1000 && quiet.endedAt() < 3000, `ended by the server after ${quiet.endedAt()} ms (minRequestTimeout 1 s x [1, 2))`)
  t.same(quiet.events, [], 'no bookmarks unless asked')

  const asked = openWatch(url, `/api/v1/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=${api.resourceVersion}`)
  await until('the end', () => asked.endedAt() >= 0, 3000)
  t.ok(asked.endedAt() >= 950 && asked.endedAt() < 2500, `timeoutSeconds=1 ended it after ${asked.endedAt()} ms`)
  t.ok(asked.events.length >= 2 && asked.events.every((e) => e.type === 'BOOKMARK' && e.object.metadata?.resourceVersion === String(api.resourceVersion)), `${asked.events.length} bookmarks carrying the current resourceVersion`)
})

t.test('watch: 410 Expired (an ERROR event) for a resourceVersion older than the history', async (t) => {
  const { api, url, core } = await standIn(t, { historySize: 5 })
  const from = api.resourceVersion
  for (let i = 0; i < 8; i++) await core.createNamespacedPod({ namespace: 'default', body: pod(`p${i}`) as V1Pod })
  const w = openWatch(url, `/api/v1/pods?watch=true&resourceVersion=${from}`)
  await until('the end', () => w.endedAt() >= 0)
  t.equal(w.events.length, 1)
  t.equal(w.events[0]!.type, 'ERROR')
  t.match(w.events[0]!.object, { code: 410, reason: 'Expired', message: new RegExp(`^too old resource version: ${from} \\(\\d+\\)$`) })
  const recent = openWatch(url, `/api/v1/pods?watch=true&resourceVersion=${api.resourceVersion - 2}&timeoutSeconds=1`)
  await until('the end', () => recent.endedAt() >= 0, 3000)
  t.same(recent.events.map((e) => e.type), ['ADDED', 'ADDED'], 'a recent one replays what followed it')
  api.compact()
  const compacted = openWatch(url, `/api/v1/pods?watch=true&resourceVersion=${api.resourceVersion - 1}`)
  await until('the end', () => compacted.endedAt() >= 0)
  t.equal(compacted.events[0]?.object.code, 410, 'after compaction')
})

t.test('field selectors: only the fields the real API supports; ADDED/DELETED when an object starts or stops matching', async (t) => {
  const { url, core } = await standIn(t)
  for (const bad of ['spec.containers', 'metadata.labels', 'status.hostIP']) {
    const r = await raw(url, 'GET', `/api/v1/pods?fieldSelector=${encodeURIComponent(`${bad}=x`)}`)
    t.equal(r.status, 400, bad)
    t.equal(JSON.parse(r.text).message, `field label not supported: ${bad}`)
  }
  for (const good of ['metadata.name', 'metadata.namespace', 'spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName', 'spec.hostNetwork', 'status.phase', 'status.podIP', 'status.nominatedNodeName']) {
    t.equal((await raw(url, 'GET', `/api/v1/pods?fieldSelector=${encodeURIComponent(`${good}=x`)}`)).status, 200, good)
  }
  t.equal((await raw(url, 'GET', `/api/v1/secrets?fieldSelector=spec.nodeName%3Dx`)).status, 400, 'a Secret has no spec.nodeName')
  t.equal((await raw(url, 'GET', `/api/v1/pods?labelSelector=${encodeURIComponent('a in (b')}`)).status, 400, 'a malformed label selector')

  const w = openWatch(url, '/api/v1/pods?watch=true&fieldSelector=status.phase%3DRunning')
  await until('headers', () => w.headersAt() >= 0)
  const p = await core.createNamespacedPod({ namespace: 'default', body: pod('moves', { spec: { nodeName: 'n1' } }) as V1Pod })
  t.equal(p.status?.phase, 'Pending')
  const running = await core.replaceNamespacedPodStatus({ name: 'moves', namespace: 'default', body: { ...p, status: { phase: 'Running' } } })
  await until('ADDED', () => w.events.length === 1)
  t.match(w.events[0], { type: 'ADDED', object: { metadata: { name: 'moves' } } }, 'starts matching: ADDED')
  const stale = await core.replaceNamespacedPodStatus({ name: 'moves', namespace: 'default', body: { ...p, status: { phase: 'Succeeded' } } }).catch((e: { code: number }) => e)
  t.equal((stale as { code: number }).code, 409, 'a write with a stale resourceVersion: 409')
  await core.replaceNamespacedPodStatus({ name: 'moves', namespace: 'default', body: { ...running, status: { phase: 'Succeeded' } } })
  await until('DELETED', () => w.events.length === 2)
  t.equal(w.events[1]!.type, 'DELETED', 'stops matching: DELETED')
  t.equal((w.events[1]!.object as { status?: { phase?: string } }).status?.phase, 'Running', 'with the object as it last matched')
  w.req.destroy()
})

t.test('a watch whose client went away never crashes the server', async (t) => {
  const { api, url, core } = await standIn(t)
  const w = openWatch(url, '/api/v1/pods?watch=true')
  await until('headers', () => w.headersAt() >= 0)
  w.req.destroy()
  for (let i = 0; i < 20; i++) api.put('pods', pod(`burst-${i}`) as never)
  t.equal((await core.listNamespacedPod({ namespace: 'default' })).items.length, 20, 'still serving')
  t.equal((await raw(url, 'GET', '/api/v1/pods')).status, 200)
})

t.test('lists: limit/continue from one snapshot, 410 on an expired token, resourceVersion=0 from the cache ignores limit', async (t) => {
  const { api, url, core } = await standIn(t, { continueTtlMs: 300 })
  for (let i = 0; i < 5; i++) await core.createNamespacedPod({ namespace: 'default', body: pod(`p${i}`) as V1Pod })
  const first = await core.listNamespacedPod({ namespace: 'default', limit: 2 })
  t.same(first.items.map((p) => p.metadata?.name), ['p0', 'p1'])
  t.ok(first.metadata?._continue, 'a continue token')
  t.equal(first.metadata?.remainingItemCount, 3)
  await core.createNamespacedPod({ namespace: 'default', body: pod('p2a') as V1Pod })
  const second = await core.listNamespacedPod({ namespace: 'default', limit: 2, _continue: first.metadata!._continue })
  t.same(second.items.map((p) => p.metadata?.name), ['p2', 'p3'], 'the snapshot: a pod created since is not in it')
  t.equal(second.metadata?.resourceVersion, first.metadata?.resourceVersion)
  const third = await core.listNamespacedPod({ namespace: 'default', limit: 2, _continue: second.metadata!._continue })
  t.same(third.items.map((p) => p.metadata?.name), ['p4'])
  t.notOk(third.metadata?._continue, 'the last page has no token')
  const again = await core.listNamespacedPod({ namespace: 'default', limit: 2 })
  await new Promise((r) => setTimeout(r, 400))
  const expired = await raw(url, 'GET', `/api/v1/namespaces/default/pods?limit=2&continue=${encodeURIComponent(again.metadata!._continue!)}`)
  t.equal(expired.status, 410)
  t.match(JSON.parse(expired.text), { reason: 'Expired', message: /^The provided continue parameter is too old to display a consistent list result/ })
  const cached = await core.listNamespacedPod({ namespace: 'default', limit: 2, resourceVersion: '0' })
  t.equal(cached.items.length, 6, 'resourceVersion=0: the whole list from the cache')
  t.notOk(cached.metadata?._continue)
  t.equal(cached.metadata?.resourceVersion, String(api.resourceVersion))
})

t.test('429 with Retry-After under load (APF), a plain-text body', async (t) => {
  const { api, url, core } = await standIn(t, { retryAfterSeconds: 3 })
  api.overload(500)
  const r = await raw(url, 'GET', '/api/v1/pods')
  t.equal(r.status, 429)
  t.equal(r.headers['retry-after'], '3')
  t.equal(r.text, 'Too many requests, please try again later.\n')
  t.match(r.headers['content-type'], /^text\/plain/)
  const e = await core.listNamespacedPod({ namespace: 'default' }).catch((err: { code: number }) => err)
  t.equal((e as { code: number }).code, 429, 'client-node sees 429')
  await new Promise((r) => setTimeout(r, 600))
  t.equal((await raw(url, 'GET', '/api/v1/pods')).status, 200, 'served again once the load is gone')

  // maxInflight: a request in flight (a slow route) and one more past the limit.
  const busy = await standIn(t, { maxInflight: 1 })
  busy.api.routes.push(async ({ url }) => (url.pathname === '/slow' ? new Promise((r) => setTimeout(() => r({ status: 200, body: {} }), 500)) : undefined))
  const slow = raw(busy.url, 'GET', '/slow')
  await new Promise((r) => setTimeout(r, 100))
  const past = await raw(busy.url, 'GET', '/api/v1/pods')
  t.equal(past.status, 429, 'past maxInflight: 429')
  t.equal((await slow).status, 200, 'the one in flight is served')
  t.equal((await raw(busy.url, 'GET', '/api/v1/pods')).status, 200, 'and the next after it')
})

t.test('pods: defaulting, validation, graceful deletion, finalizers, pods/status', async (t) => {
  const { api, url, core } = await standIn(t, { kubeletStopMs: 300 })
  const created = await core.createNamespacedPod({ namespace: 'default', body: pod('d', { spec: { nodeName: 'n1' } }) as V1Pod })
  t.match(created.spec, { restartPolicy: 'Always', dnsPolicy: 'ClusterFirst', schedulerName: 'default-scheduler', terminationGracePeriodSeconds: 30, enableServiceLinks: true })
  t.match(created.spec?.containers[0], { imagePullPolicy: 'IfNotPresent', terminationMessagePath: '/dev/termination-log', terminationMessagePolicy: 'File' })
  const invalid = await raw(url, 'POST', '/api/v1/namespaces/default/pods', { metadata: { name: 'Bad_Name' }, spec: { containers: [] } })
  t.equal(invalid.status, 422)
  t.match(JSON.parse(invalid.text).message, /^Pod "Bad_Name" is invalid: \[metadata\.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain .*, spec\.containers: Required value\]$/)
  // The main resource keeps the status; pods/status keeps the spec.
  const upd = await core.replaceNamespacedPod({ name: 'd', namespace: 'default', body: { ...created, metadata: { ...created.metadata, labels: { x: 'y' } }, status: { phase: 'Running' } } })
  t.equal(upd.status?.phase, 'Pending', 'status through the main resource is ignored')
  t.equal(upd.metadata?.labels?.x, 'y')
  const st = await core.replaceNamespacedPodStatus({ name: 'd', namespace: 'default', body: { ...upd, spec: { ...upd.spec!, nodeName: 'elsewhere' }, status: { phase: 'Running', podIP: '10.0.0.9' } } })
  t.equal(st.status?.phase, 'Running')
  t.equal(st.spec?.nodeName, 'n1', 'spec through pods/status is ignored')
  const immut = await core.replaceNamespacedPod({ name: 'd', namespace: 'default', body: { ...st, spec: { ...st.spec!, nodeName: 'elsewhere' } } }).catch((e: { code: number; body: string }) => e)
  t.equal((immut as { code: number }).code, 422, 'the spec is immutable')
  t.match(String((immut as { body: string }).body), /pod updates may not change fields other than/)

  // Graceful deletion of a pod on a node: it stays, terminating, until the kubelet confirms.
  const w = openWatch(url, '/api/v1/namespaces/default/pods?watch=true&fieldSelector=metadata.name%3Dd')
  await until('headers', () => w.headersAt() >= 0)
  const deleting = await core.deleteNamespacedPod({ name: 'd', namespace: 'default' })
  t.ok(deleting.metadata?.deletionTimestamp, 'deletionTimestamp set')
  t.equal(deleting.metadata?.deletionGracePeriodSeconds, 30, 'the pod\'s terminationGracePeriodSeconds')
  t.ok(api.get('pods', 'default', 'd'), 'still there while terminating')
  await until('gone', () => !api.get('pods', 'default', 'd'))
  await until('events', () => w.events.length >= 3)
  t.same(w.events.map((e) => e.type), ['ADDED', 'MODIFIED', 'DELETED'], 'watchers see it terminate, then go')
  w.req.destroy()
  // Not on a node: at once. With gracePeriodSeconds=0: at once.
  await core.createNamespacedPod({ namespace: 'default', body: pod('unscheduled') as V1Pod })
  await core.deleteNamespacedPod({ name: 'unscheduled', namespace: 'default' })
  t.notOk(api.get('pods', 'default', 'unscheduled'), 'an unscheduled pod goes at once')
  // A finalizer keeps it after the kubelet is done, until it is removed.
  await core.createNamespacedPod({ namespace: 'default', body: pod('fin', { spec: { nodeName: 'n1' }, finalizers: ['example.com/keep'] }) as V1Pod })
  await core.deleteNamespacedPod({ name: 'fin', namespace: 'default', gracePeriodSeconds: 0 })
  const kept = api.get('pods', 'default', 'fin')
  t.ok(kept?.metadata.deletionTimestamp, 'terminating, held by its finalizer')
  await core.patchNamespacedPod({ name: 'fin', namespace: 'default', body: [{ op: 'remove', path: '/metadata/finalizers' }] })
  t.notOk(api.get('pods', 'default', 'fin'), 'gone once the finalizer is removed')
  // Preconditions.
  const p = await core.createNamespacedPod({ namespace: 'default', body: pod('pre') as V1Pod })
  const conflict = await raw(url, 'DELETE', '/api/v1/namespaces/default/pods/pre', { preconditions: { uid: 'other' } })
  t.equal(conflict.status, 409)
  t.equal(JSON.parse(conflict.text).message, `Operation cannot be fulfilled on Pod "pre": the UID in the precondition (other) does not match the UID in record (${p.metadata?.uid}). The object might have been deleted and then recreated`)
})

/** A webhook served over HTTPS that answers with `answer(request)`. */
async function fakeWebhook(t: { teardown: (fn: () => unknown) => void }, answer: (req: { object: V1Pod; name: string }) => { allowed: boolean; patch?: object[]; warnings?: string[]; status?: object; delayMs?: number }) {
  const wca = createCa({ commonName: 'fake-webhook-ca', validDays: 1 })
  const cert = createServingCert(wca, { commonName: 'ziti-cni-webhook.ziti-cni-system.svc', ipAddresses: ['127.0.0.1'], validDays: 1 })
  const calls: Array<{ object: V1Pod; url: string }> = []
  const server = createHttpsServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const review = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { request: { uid: string; object: V1Pod; name: string } }
      calls.push({ object: review.request.object, url: req.url ?? '' })
      const a = answer(review.request)
      const body = JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid: review.request.uid, allowed: a.allowed, ...(a.patch ? { patchType: 'JSONPatch', patch: Buffer.from(JSON.stringify(a.patch)).toString('base64') } : {}), ...(a.warnings ? { warnings: a.warnings } : {}), ...(a.status ? { status: a.status } : {}) } })
      setTimeout(() => { if (!res.destroyed) { res.writeHead(200, { 'content-type': 'application/json' }); res.end(body) } }, a.delayMs ?? 0)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { calls, target: { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/mutate`, ca: wca.certPem } }
}

t.test('admission: the shipped MutatingWebhookConfiguration decides who is called', async (t) => {
  const shipped = loadShippedConfiguration()
  t.same(shipped.webhooks.map((w) => w.name), ['namespace.inject.cni.openziti.io', 'pod.inject.cni.openziti.io'], 'parsed from deploy/base/webhook/mutatingwebhookconfiguration.yaml')
  const { api, core } = await standIn(t)
  const hook = await fakeWebhook(t, () => ({ allowed: true }))
  api.admission = hook.target
  const called = async (body: object, ns: string) => {
    const before = hook.calls.length
    await core.createNamespacedPod({ namespace: ns, body: body as V1Pod })
    return hook.calls.length > before
  }
  t.ok(await called(pod('a', { namespace: 'apps' }), 'apps'), 'namespace opted in')
  t.match(hook.calls.at(-1)!.url, /^\/mutate\?timeout=5s$/, 'the path and the shipped timeoutSeconds')
  t.notOk(await called(pod('b', { namespace: 'apps', labels: { 'cni.openziti.io/inject': 'disabled' } }), 'apps'), 'pod opted out (objectSelector)')
  t.ok(await called(pod('c', { namespace: 'plain', labels: { 'cni.openziti.io/inject': 'enabled' } }), 'plain'), 'pod opted in, namespace unlabelled')
  t.equal(api.admissionCalls.at(-1)?.webhook, 'pod.inject.cni.openziti.io', 'through the pod-label webhook')
  t.notOk(await called(pod('d', { namespace: 'plain' }), 'plain'), 'neither opted in')
  t.notOk(await called(pod('e', { namespace: 'apps', spec: { hostNetwork: true } }), 'apps'), 'hostNetwork pods: the CEL matchCondition skips them')
  t.ok(await called(pod('f', { namespace: 'apps', spec: { hostNetwork: false } }), 'apps'), 'hostNetwork: false is called')
  t.notOk(await called(pod('g', { namespace: 'kube-system' }), 'kube-system'), 'kube-system never, even labelled')
  t.match(hook.calls[0]!.object.spec, { restartPolicy: 'Always', dnsPolicy: 'ClusterFirst' }, 'the webhook sees the defaulted pod')
})

t.test('admission: denials keep their code, failures follow failurePolicy and timeoutSeconds, warnings reach the client', async (t) => {
  const { api, url } = await standIn(t)
  let answer: Parameters<typeof fakeWebhook>[1] = () => ({ allowed: false, status: { code: 403, reason: 'Forbidden', message: 'not this one' } })
  const hook = await fakeWebhook(t, (r) => answer(r))
  api.admission = hook.target
  const create = (name: string) => raw(url, 'POST', '/api/v1/namespaces/apps/pods', pod(name, { namespace: 'apps' }))
  let r = await create('denied')
  t.equal(r.status, 403, 'the webhook\'s own code')
  t.equal(JSON.parse(r.text).message, 'admission webhook "namespace.inject.cni.openziti.io" denied the request: not this one')
  answer = () => ({ allowed: false, status: { code: 200, message: 'no' } })
  r = await create('denied2')
  t.equal(r.status, 400, 'a code below 400 becomes 400')
  answer = () => ({ allowed: false })
  t.equal(JSON.parse((await create('denied3')).text).message, 'admission webhook "namespace.inject.cni.openziti.io" denied the request without explanation')
  answer = () => ({ allowed: true, warnings: ['ziti-cni: first', 'ziti-cni: "quoted"', 'ziti-cni: first'] })
  r = await create('warned')
  t.equal(r.status, 201)
  t.equal(r.headers.warning, '299 - "ziti-cni: first", 299 - "ziti-cni: \\"quoted\\""', 'deduplicated Warning headers')
  answer = () => ({ allowed: true, delayMs: 8000 })
  const started = Date.now()
  r = await create('slow')
  t.equal(r.status, 500, 'failurePolicy Fail: a webhook past its timeoutSeconds fails the request')
  t.ok(Date.now() - started >= 4900 && Date.now() - started < 7500, `after the shipped 5 s (${Date.now() - started} ms)`)
  t.match(JSON.parse(r.text), { reason: 'InternalError', message: /^Internal error occurred: failed calling webhook "namespace\.inject\.cni\.openziti\.io": failed to call webhook: Post ".*\/mutate\?timeout=5s": context deadline exceeded$/ })
  t.notOk(api.get('pods', 'apps', 'slow'))
  // failurePolicy Ignore (another configuration): the pod is admitted unmutated.
  api.admission = undefined
  const ignoring = loadShippedConfiguration()
  ignoring.metadata.name = 'ignoring'
  for (const w of ignoring.webhooks) { w.failurePolicy = 'Ignore'; w.timeoutSeconds = 1 }
  api.registerWebhookConfiguration(ignoring, () => hook.target)
  answer = () => ({ allowed: true, delayMs: 2000, patch: [{ op: 'add', path: '/metadata/labels', value: { patched: 'yes' } }] })
  r = await create('ignored')
  t.equal(r.status, 201, 'failurePolicy Ignore fails open')
  t.notOk(JSON.parse(r.text).metadata.labels?.patched)
  t.equal(api.admissionCalls.at(-1)?.outcome, 'failed-open')
})

t.test('admission: reinvocationPolicy IfNeeded calls our webhook again after a later webhook changed the pod', async (t) => {
  const { api, core } = await standIn(t)
  const ours = await fakeWebhook(t, (r) => (r.object.metadata?.annotations?.['ours'] ? { allowed: true } : { allowed: true, patch: [{ op: 'add', path: '/metadata/annotations', value: { ours: 'injected' } }] }))
  const other = await fakeWebhook(t, (r) => (r.object.metadata?.labels?.['other'] ? { allowed: true } : { allowed: true, patch: [{ op: 'add', path: '/metadata/labels/other', value: 'yes' }] }))
  api.admission = ours.target
  const later = { metadata: { name: 'zz-other' }, webhooks: [{ name: 'other.example.com', clientConfig: { url: other.target.url }, rules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'] }], sideEffects: 'None', reinvocationPolicy: 'Never' as const }] }
  api.registerWebhookConfiguration(later, () => other.target)
  const p = await core.createNamespacedPod({ namespace: 'apps', body: pod('twice', { namespace: 'apps', labels: {} }) as V1Pod })
  t.equal(p.metadata?.annotations?.ours, 'injected')
  t.equal(p.metadata?.labels?.other, 'yes')
  t.same(api.admissionCalls.map((c) => `${c.webhook}#${c.round}:${c.outcome}`), ['namespace.inject.cni.openziti.io#0:patched', 'other.example.com#0:patched', 'namespace.inject.cni.openziti.io#1:allowed'], 'ours again in round 1, the other (Never) not')
  t.equal(ours.calls[1]!.object.metadata?.labels?.other, 'yes', 'the reinvocation sees the other webhook\'s change')
})

t.test('admission with the real webhook: pod-label opt-in in a namespace that did not opt in', async (t) => {
  const { api, core } = await standIn(t)
  // The validator image as main.ts resolves it from the DaemonSet (an empty image is refused: 422).
  const webhook = await startWebhook({ validator: { image: 'registry.example.com/ziti-cni/agent:1.0' } })
  t.teardown(() => webhook.close())
  api.admission = webhook.admission
  await api.create('secrets', { metadata: { name: 'id', namespace: 'plain' } })
  // An app the preconditions admit: no capability it could use against the sidecar.
  const spec = { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] }
  const p = await core.createNamespacedPod({ namespace: 'plain', body: pod('opted', { namespace: 'plain', spec, labels: { 'cni.openziti.io/inject': 'enabled' }, annotations: { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } }) as V1Pod })
  t.ok(p.metadata?.annotations?.['cni.openziti.io/interception'], 'injected: the intent annotation')
  t.ok([...(p.spec?.initContainers ?? []), ...(p.spec?.containers ?? [])].some((c) => c.name === 'ziti-tunnel'), 'and the sidecar')
  const plain = await core.createNamespacedPod({ namespace: 'plain', body: pod('not-opted', { namespace: 'plain', spec, annotations: { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } }) as V1Pod })
  t.notOk(plain.metadata?.annotations?.['cni.openziti.io/interception'], 'without the label: not called, not injected')
})

t.test('authenticators: the hook a token authenticator plugs into', async (t) => {
  const { api, url } = await standIn(t)
  t.equal((await raw(url, 'GET', '/api/v1/pods', undefined, { authorization: 'Bearer other' })).status, 401)
  api.authenticators.push((token) => (token === 'other' ? { username: 'system:serviceaccount:apps:web' } : undefined))
  t.equal((await raw(url, 'GET', '/api/v1/pods', undefined, { authorization: 'Bearer other' })).status, 200)
  t.equal(api.requests.at(-1)?.user, 'system:serviceaccount:apps:web')
  t.equal((await raw(url, 'GET', '/api/v1/pods', undefined, { authorization: '' })).status, 401, 'no token, no user')
})

t.test('chaos: seeded, per-fault switches, and the faults it injects', async (t) => {
  t.equal(parseChaos(undefined), undefined)
  t.equal(parseChaos('0'), undefined)
  t.same([...parseChaos('1')!.faults], DEFAULT_FAULTS)
  t.ok(parseChaos('1')!.faults.has('429'), 'ZCNI_CHAOS=1 includes 429: the product backs off everywhere it talks to the API')
  t.same([...parseChaos('all')!.faults].sort(), ['410', '429', 'bookmark', 'paging', 'watch-end'])
  t.throws(() => parseChaos('watch-end,nope'), /ZCNI_CHAOS: unknown fault "nope"/)
  const a = parseChaos('1', '42')!
  const b = parseChaos('1', '42')!
  t.same(Array.from({ length: 20 }, () => a.between(0, 1000)), Array.from({ length: 20 }, () => b.between(0, 1000)), 'a seed replays')

  const { api, core, url } = await standIn(t, { chaos: 'paging,watch-end,429', chaosSeed: '7' })
  t.equal(api.chaos?.seed, 7)
  for (let i = 0; i < 30; i++) api.put('pods', pod(`c${i}`) as never)
  const names: string[] = []
  let cont: string | undefined
  let pages = 0
  for (;;) {
    const l = await core.listNamespacedPod({ namespace: 'default', limit: 10, _continue: cont }).catch((e: { code: number }) => e)
    if ((l as { code?: number }).code === 429) continue
    const list = l as Awaited<ReturnType<CoreV1Api['listNamespacedPod']>>
    pages++
    names.push(...list.items.map((p) => p.metadata!.name!))
    cont = list.metadata?._continue
    if (!cont) break
  }
  t.equal(new Set(names).size, 30, `every pod once across ${pages} short pages`)
  t.ok(pages > 3, 'pages shorter than the limit')
  const w = openWatch(url, '/api/v1/pods?watch=true&timeoutSeconds=60')
  await until('an early end', () => w.endedAt() >= 0, 25_000)
  t.ok(w.endedAt() < 21_000, `chaos ended a 60 s watch after ${w.endedAt()} ms`)
})

t.test('NamespaceLifecycle: 404 for a namespace that does not exist, 403 while one terminates, immortal ones stay', async (t) => {
  const { api, url } = await standIn(t, { namespaceCleanupMs: 300 })
  for (const ns of ['default', 'kube-system', 'kube-public', 'kube-node-lease', 'ziti-cni-system']) t.match(api.get('namespaces', undefined, ns), { status: { phase: 'Active' }, spec: { finalizers: ['kubernetes'] } }, `${ns} exists from the start`)
  const missing = await raw(url, 'POST', '/api/v1/namespaces/nowhere/pods', pod('p', { namespace: 'nowhere' }))
  t.equal(missing.status, 404)
  t.match(JSON.parse(missing.text), { reason: 'NotFound', message: 'namespaces "nowhere" not found', details: { name: 'nowhere', kind: 'namespaces' } })
  await raw(url, 'POST', '/api/v1/namespaces', { metadata: { name: 'doomed' } })
  t.ok(api.get('serviceaccounts', 'doomed', 'default'), 'a new namespace gets its default ServiceAccount')
  t.equal((await raw(url, 'POST', '/api/v1/namespaces/doomed/pods', pod('early', { namespace: 'doomed' }))).status, 201)
  const del = await raw(url, 'DELETE', '/api/v1/namespaces/doomed')
  t.equal(del.status, 200)
  t.match(JSON.parse(del.text), { status: { phase: 'Terminating' }, metadata: { deletionTimestamp: /Z$/ } })
  const late = await raw(url, 'POST', '/api/v1/namespaces/doomed/pods', { ...pod('late', { namespace: 'doomed' }), metadata: { generateName: 'late-', namespace: 'doomed' } })
  t.equal(late.status, 403)
  t.match(JSON.parse(late.text), { reason: 'Forbidden', message: 'pods "late-" is forbidden: unable to create new content in namespace doomed because it is being terminated', details: { causes: [{ reason: 'NamespaceTerminating', message: 'namespace doomed is being terminated', field: 'metadata.namespace' }] } })
  await until('the namespace controller emptied and removed it', () => !api.get('namespaces', undefined, 'doomed'), 5_000)
  t.notOk(api.get('pods', 'doomed', 'early'), 'its pods went with it')
  const immortal = await raw(url, 'DELETE', '/api/v1/namespaces/kube-system')
  t.equal(immortal.status, 403)
  t.equal(JSON.parse(immortal.text).message, 'namespaces "kube-system" is forbidden: this namespace may not be deleted')
})

t.test('ServiceAccount admission: "default" when empty, 403 naming a missing one, before the webhooks', async (t) => {
  const { url } = await standIn(t)
  const made = await raw(url, 'POST', '/api/v1/namespaces/plain/pods', pod('sa-default', { namespace: 'plain' }))
  t.equal(JSON.parse(made.text).spec.serviceAccountName, 'default')
  const bad = await raw(url, 'POST', '/api/v1/namespaces/plain/pods', pod('sa-missing', { namespace: 'plain', spec: { serviceAccountName: 'billing' } }))
  t.equal(bad.status, 403)
  t.equal(JSON.parse(bad.text).message, 'pods "sa-missing" is forbidden: error looking up service account plain/billing: serviceaccount "billing" not found')
})

t.test('list options: resourceVersionMatch validated as the API does (422 ListOptions)', async (t) => {
  const { url } = await standIn(t)
  const cases: Array<[string, string]> = [
    ['resourceVersionMatch=NotOlderThan', 'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided'],
    ['resourceVersionMatch=Exact&resourceVersion=0', 'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"'],
    ['resourceVersionMatch=Newest&resourceVersion=5', 'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Unsupported value: "Newest": supported values: "Exact", "NotOlderThan", ""'],
    ['watch=true&resourceVersionMatch=NotOlderThan', 'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided'],
  ]
  for (const [q, message] of cases) {
    const r = await raw(url, 'GET', `/api/v1/pods?${q}`)
    t.equal(r.status, 422, q)
    t.equal(JSON.parse(r.text).message, message)
  }
  t.equal((await raw(url, 'GET', '/api/v1/pods?resourceVersionMatch=NotOlderThan&resourceVersion=0')).status, 200, 'NotOlderThan with a version is fine')
})

t.test('PATCH: the four content types the API takes, 415 with its message for others, apply needs a fieldManager', async (t) => {
  const { api, url } = await standIn(t)
  await raw(url, 'POST', '/api/v1/namespaces/plain/pods', pod('p', { namespace: 'plain', labels: { a: '1' } }))
  // raw() sends JSON only: these bodies are written as given.
  const send = (type: string, body: string, q = '') => new Promise<Raw>((resolve, reject) => {
    const req = httpsRequest(`${url}/api/v1/namespaces/plain/pods/p${q}`, { method: 'PATCH', ca: ca.certPem, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': type } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('error', reject)
    req.end(body)
  })
  t.equal((await send('application/json-patch+json', JSON.stringify([{ op: 'add', path: '/metadata/labels/b', value: '2' }]))).status, 200)
  t.equal((await send('application/merge-patch+json; charset=utf-8', JSON.stringify({ metadata: { labels: { a: null } } }))).status, 200)
  t.same(api.get('pods', 'plain', 'p')!.metadata.labels, { b: '2' })
  const smp = await send('application/strategic-merge-patch+json', JSON.stringify({ spec: { containers: [{ name: 'app', image: 'registry.example.com/app:2.0' }] } }))
  t.equal(smp.status, 200)
  t.match(JSON.parse(smp.text).spec.containers, [{ name: 'app', image: 'registry.example.com/app:2.0', terminationMessagePath: '/dev/termination-log' }], 'strategic: the container merged by name, its other fields kept')
  const wrong = await send('application/json', '{}')
  t.equal(wrong.status, 415)
  t.match(JSON.parse(wrong.text), { reason: 'UnsupportedMediaType', code: 415, message: 'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml' })
  const noManager = await send('application/apply-patch+yaml', 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n')
  t.equal(noManager.status, 422)
  t.equal(JSON.parse(noManager.text).message, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
  t.equal((await send('application/merge-patch+json', '{}', '?force=true')).status, 422, 'force only with apply')
  const applied = await send('application/apply-patch+yaml', 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    c: "3"\n', '?fieldManager=test')
  t.equal(applied.status, 200)
  t.same(api.get('pods', 'plain', 'p')!.metadata.labels, { b: '2', c: '3' }, 'apply merged into the live object')
})
