// The agent's pod cache against a focused fake API server that keeps the real API's list and
// watch contract (kubernetes/apiserver, client-go 32ce75a): list at "0" is served whole or in
// pages with `continue` (continue pages carry no resourceVersion; an expired continue token is
// 410 Expired), a list or watch at a compacted version is 410 Expired (the watch as an ERROR
// event, as the watch cache sends it), BOOKMARK events only when asked, server-side watch
// timeouts, and 429 with Retry-After (API Priority and Fairness). What it asserts: the
// reflector behaves like client-go's (reflector.go) and `synced` only follows a good list.
import t from 'tap'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { createServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { V1Pod } from '@kubernetes/client-node'
import { createKubeClient, type KubeClient } from '../src/agent/kube.ts'
import { pino } from 'pino'
import { Backoff, watchTimeoutSeconds } from '../src/agent/reflector.ts'
import { cachedPod, createPodSource } from '../src/agent/pods.ts'
import { needsRepair } from '../src/agent/repair.ts'
import { snapshotEntry } from '../src/agent/snapshot.ts'
import { ANNOTATION_INTERCEPTION, EXIT_NOT_INTERCEPTED, podIngress, VALIDATOR_NAME, type IngressSpec } from '@ziti-cni/shared'
import { createCa, createServingCert } from '../../webhook/src/tls/certs.ts'

const log = pino({ level: 'silent' })
const NODE = 'n1'
const CA = createCa({ commonName: 'test-cluster-ca', validDays: 1 })
const SERVING = createServingCert(CA, { commonName: 'kube-apiserver', ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'], validDays: 1 })

interface Fault { status: number; reason: string; message: string; retryAfter?: number }

class FakeApi {
  readonly requests: URL[] = []
  readonly pods = new Map<string, V1Pod>()
  private history: Array<{ rv: number; type: string; pod: V1Pod }> = []
  rv = 100
  /** Versions below this are compacted: list/watch at them answers 410 Expired. */
  compactedBelow = 0
  /** Items per page when the client sends a limit (the real server pages at RV "" or a specific RV without the watch cache). */
  pageSize = 0
  listFaults: Fault[] = []
  watchFaults: Fault[] = []
  /** Watches to end at once with 200 and no event (a proxy or server that drops them). */
  closeAtOnce = 0
  /** Continue tokens minted at or below this version are expired. */
  expireContinueBelow = 0
  readonly watches = new Set<{ res: ServerResponse; bookmarks: boolean }>()
  private server = createServer({ cert: SERVING.certPem, key: SERVING.keyPem }, (req, res) => this.handle(req, res))
  url = ''

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()))
    this.url = `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`
    return this.url
  }

  async close(): Promise<void> {
    for (const w of this.watches) w.res.destroy()
    this.server.closeAllConnections()
    await new Promise((r) => this.server.close(r))
  }

  upsert(name: string, extra: Partial<V1Pod['metadata']> = {}, node = NODE): V1Pod {
    const type = this.pods.has(`apps/${name}`) ? 'MODIFIED' : 'ADDED'
    const pod: V1Pod = { metadata: { name, namespace: 'apps', uid: `uid-${name}`, resourceVersion: String(++this.rv), ...extra }, spec: { nodeName: node, containers: [] } }
    this.pods.set(`apps/${name}`, pod)
    this.record(type, pod)
    return pod
  }

  remove(name: string): void {
    const pod = this.pods.get(`apps/${name}`)!
    this.pods.delete(`apps/${name}`)
    this.record('DELETED', { ...pod, metadata: { ...pod.metadata, resourceVersion: String(++this.rv) } })
  }

  private record(type: string, pod: V1Pod): void {
    this.history.push({ rv: this.rv, type, pod })
    for (const w of this.watches) if (pod.spec?.nodeName === NODE) w.res.write(JSON.stringify({ type, object: pod }) + '\n')
  }

  /** A BOOKMARK at the current version to every watch that asked for them (and only those). */
  bookmark(): void {
    for (const w of this.watches) if (w.bookmarks) w.res.write(JSON.stringify({ type: 'BOOKMARK', object: { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) } } }) + '\n')
  }

  /** The server-side timeout ends every watch (cleanly, as the apiserver does). */
  endWatches(): void {
    for (const w of this.watches) w.res.end()
    this.watches.clear()
  }

  /** The watch cache's answer to a watch whose version was compacted while it ran. */
  expireWatches(): void {
    for (const w of this.watches) w.res.end(JSON.stringify({ type: 'ERROR', object: status(410, 'Expired', 'too old resource version: 1 (200)') }) + '\n')
    this.watches.clear()
  }

  private send(res: ServerResponse, f: Fault): void {
    res.writeHead(f.status, { 'content-type': 'application/json', ...(f.retryAfter ? { 'retry-after': String(f.retryAfter) } : {}) })
    res.end(JSON.stringify(status(f.status, f.reason, f.message)))
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url!, 'http://x')
    this.requests.push(url)
    if (req.headers.authorization !== 'Bearer tok') return this.send(res, { status: 401, reason: 'Unauthorized', message: 'Unauthorized' })
    const get = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname)
    if (get) {
      const pod = this.pods.get(`${get[1]}/${get[2]}`)
      if (!pod) return this.send(res, { status: 404, reason: 'NotFound', message: `pods "${get[2]}" not found` })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(pod))
      return
    }
    if (url.pathname !== '/api/v1/pods') return this.send(res, { status: 404, reason: 'NotFound', message: 'the server could not find the requested resource' })
    // The only field selector the agent may use (pods support spec.nodeName).
    if (url.searchParams.get('fieldSelector') !== `spec.nodeName=${NODE}`) return this.send(res, { status: 400, reason: 'BadRequest', message: 'unexpected field selector' })
    const q = url.searchParams
    const rvParam = q.get('resourceVersion') ?? ''
    const mine = () => [...this.pods.values()].filter((p) => p.spec?.nodeName === NODE)
    if (q.get('watch') === '1' || q.get('watch') === 'true') {
      const f = this.watchFaults.shift()
      if (f) return this.send(res, f)
      res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' })
      if (this.closeAtOnce > 0) { this.closeAtOnce--; res.end(); return }
      res.flushHeaders()
      const from = Number(rvParam)
      if (from < this.compactedBelow) {
        res.end(JSON.stringify({ type: 'ERROR', object: status(410, 'Expired', `too old resource version: ${from} (${this.compactedBelow})`) }) + '\n')
        return
      }
      for (const h of this.history) if (h.rv > from && h.pod.spec?.nodeName === NODE) res.write(JSON.stringify({ type: h.type, object: h.pod }) + '\n')
      const w = { res, bookmarks: q.get('allowWatchBookmarks') === 'true' }
      this.watches.add(w)
      res.on('close', () => this.watches.delete(w))
      return
    }
    const f = this.listFaults.shift()
    if (f) return this.send(res, f)
    const cont = q.get('continue')
    if (cont && rvParam) return this.send(res, { status: 400, reason: 'BadRequest', message: 'specifying resource version is not allowed when using continue' })
    let items = mine().sort((a, b) => a.metadata!.name!.localeCompare(b.metadata!.name!))
    let listRv = this.rv
    let offset = 0
    if (cont) {
      const token = JSON.parse(Buffer.from(cont, 'base64').toString()) as { rv: number; offset: number }
      if (token.rv <= this.expireContinueBelow) return this.send(res, { status: 410, reason: 'Expired', message: 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results.' })
      listRv = token.rv
      offset = token.offset
    } else if (rvParam && rvParam !== '0' && Number(rvParam) < this.compactedBelow) {
      return this.send(res, { status: 410, reason: 'Expired', message: `too old resource version: ${rvParam} (${this.compactedBelow})` })
    }
    const limit = Number(q.get('limit') ?? '0')
    let next = ''
    if (limit > 0 && this.pageSize > 0) {
      const size = Math.min(limit, this.pageSize)
      if (offset + size < items.length) next = Buffer.from(JSON.stringify({ rv: listRv, offset: offset + size })).toString('base64')
      items = items.slice(offset, offset + size)
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: String(listRv), ...(next ? { continue: next } : {}) }, items }))
  }

  lists(): URLSearchParams[] { return this.requests.filter((u) => u.pathname === '/api/v1/pods' && !u.searchParams.has('watch')).map((u) => u.searchParams) }
  watchesAsked(): URLSearchParams[] { return this.requests.filter((u) => u.searchParams.has('watch')).map((u) => u.searchParams) }
}

function status(code: number, reason: string, message: string) {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code }
}

function kubeconfig(server: string): KubeClient {
  return createKubeClient({ server, ca: { data: CA.certPem }, token: 'tok' })
}

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

async function world(t: { teardown: (fn: () => unknown) => void }, setup: (api: FakeApi) => void = () => {}) {
  const api = new FakeApi()
  setup(api)
  await api.listen()
  const seen: string[] = []
  const pods = createPodSource(kubeconfig(api.url), NODE, log, { reflector: { backoff: new Backoff({ initialMs: 20, capMs: 80 }), minWatchTimeoutSeconds: 300 } })
  pods.onPod((p) => seen.push(`${p.metadata!.name}@${p.metadata!.resourceVersion}`))
  t.teardown(async () => { await pods.stop(); await api.close() })
  return { api, pods, seen }
}

t.test('back-off: 800 ms doubling to 30 s, jitter up to 1x, Retry-After as a floor, reset after 2 min', async (t) => {
  let now = 0
  const low = new Backoff({ rand: () => 0, now: () => now })
  t.same(Array.from({ length: 8 }, () => low.next()), [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000], 'steps without jitter')
  t.equal(low.next(45_000), 45_000, 'Retry-After longer than the step wins')
  t.equal(low.next(1_000), 30_000, 'a shorter Retry-After does not shorten the back-off')
  now += 120_001
  t.equal(low.next(), 800, 'two minutes without a back-off: from the start again')
  const high = new Backoff({ rand: () => 0.999, now: () => now })
  const d = Array.from({ length: 8 }, () => high.next())
  t.ok(d[0]! >= 1598 && d[0]! < 1600, `jitter 1.0 on the first step: ${d[0]}`)
  t.ok(d[7]! >= 59_900 && d[7]! < 60_000, `at the cap: [30 s, 60 s), as reflector.go:60 says: ${d[7]}`)
  for (const r of [0, 0.5, 0.999]) {
    const s = watchTimeoutSeconds(300, () => r)
    t.ok(s >= 300 && s < 600, `watch timeout ${s} in [5 min, 10 min)`)
  }
})

t.test('first list at resourceVersion 0 in pages, then a watch from its version with bookmarks and a timeout', async (t) => {
  const { api, pods, seen } = await world(t, (api) => {
    api.pageSize = 2
    for (const n of ['a', 'b', 'c', 'd', 'e']) api.upsert(n)
    api.upsert('elsewhere', {}, 'n2')
  })
  await waitFor('synced', () => pods.synced())
  await waitFor('a watch', () => api.watches.size === 1)
  const lists = api.lists()
  t.equal(lists.length, 3, 'five pods in pages of two: three requests')
  t.same([lists[0]!.get('resourceVersion'), lists[0]!.get('limit')], ['0', '500'], 'the first list is at "0" (watch cache), paged at 500 (pager.go:31)')
  t.notOk(lists[1]!.has('resourceVersion'), 'continue pages carry no resourceVersion')
  t.ok(lists[1]!.get('continue'), 'and the continue token')
  t.equal(pods.cachedCount(), 5, 'only this node\'s pods')
  const w = api.watchesAsked()[0]!
  t.equal(w.get('resourceVersion'), '106', 'the watch resumes at the list\'s resourceVersion')
  t.equal(w.get('allowWatchBookmarks'), 'true')
  const timeout = Number(w.get('timeoutSeconds'))
  t.ok(timeout >= 300 && timeout < 600, `timeoutSeconds ${timeout} in [300, 600)`)
  t.same(seen.slice(0, 5), ['a@101', 'b@102', 'c@103', 'd@104', 'e@105'], 'listed pods reach onPod')

  api.upsert('f')
  api.remove('a')
  await waitFor('the watch events', () => pods.cachedCount() === 5 && seen.includes('f@107'))
  const r = await pods.get({ namespace: 'apps', name: 'f', uid: 'uid-f' } as never, 1000)
  t.equal(r.source, 'cache', 'a watched pod is served from the cache')
})

t.test('bookmarks move the resume version; a watch the server ends resumes there without a relist', async (t) => {
  const { api, pods } = await world(t, (api) => { api.upsert('a') })
  await waitFor('a watch', () => api.watches.size === 1)
  api.upsert('b', {}, 'n2') // another node's pod moves the version; this watch sees nothing of it
  api.upsert('c', {}, 'n2')
  api.bookmark()
  await new Promise((r) => setTimeout(r, 100))
  api.endWatches()
  await waitFor('a second watch', () => api.watchesAsked().length === 2 && api.watches.size === 1)
  t.equal(api.watchesAsked()[1]!.get('resourceVersion'), '103', 'the second watch starts at the bookmark\'s version')
  t.equal(api.lists().length, 1, 'no relist for a watch that simply ended')
  t.ok(pods.synced())
})

t.test('410 Expired: an ERROR event relists at the last version, then at "" when that is gone too', async (t) => {
  const { api, pods } = await world(t, (api) => { api.upsert('a') })
  await waitFor('a watch', () => api.watches.size === 1)
  api.upsert('b')
  await waitFor('b cached', () => pods.cachedCount() === 2)
  // In one tick: the watch ends with 410, a pod is deleted that we never see, and the
  // history up to now is compacted (so even our last version is too old).
  api.expireWatches()
  api.remove('a')
  api.compactedBelow = api.rv
  await waitFor('a relist and a new watch', () => api.lists().length >= 3 && api.watches.size === 1)
  const lists = api.lists()
  t.equal(lists[1]!.get('resourceVersion'), '102', 'first relist at the last seen version (reflector.go:647-651)')
  t.notOk(lists[1]!.has('limit'), 'not paged at a specific version')
  t.notOk(lists[2]!.get('resourceVersion'), 'that version is gone too (410): list at "" (reflector.go:720-729)')
  t.equal(pods.cachedCount(), 1, 'the relist dropped the pod deleted while we were not watching')
  t.ok(pods.synced())
})

t.test('an expired continue token: one full list at the same version (pager FullListIfExpired)', async (t) => {
  const { api, pods } = await world(t, (api) => {
    api.pageSize = 1
    for (const n of ['a', 'b', 'c']) api.upsert(n)
    api.expireContinueBelow = 10_000
  })
  await waitFor('synced', () => pods.synced())
  const lists = api.lists()
  t.equal(lists.length, 3, 'first page, the expired continue, the full list')
  t.same([lists[2]!.get('resourceVersion'), lists[2]!.has('limit'), lists[2]!.has('continue')], ['0', false, false])
  t.equal(pods.cachedCount(), 3)
})

t.test('429 with Retry-After: not synced until a list succeeds, and not before Retry-After', async (t) => {
  const started = Date.now()
  const { api, pods } = await world(t, (api) => {
    api.upsert('a')
    api.listFaults.push({ status: 429, reason: 'TooManyRequests', message: 'Too many requests, please try again later.', retryAfter: 1 })
  })
  await waitFor('the refused list', () => api.lists().length === 1)
  t.notOk(pods.synced(), 'a refused list does not make the cache ready')
  await waitFor('synced', () => pods.synced(), 5000)
  const second = api.lists().length
  t.equal(second, 2, 'listed again once')
  t.ok(Date.now() - started >= 1000, `waited Retry-After (1 s) though the back-off was 20 ms: ${Date.now() - started} ms`)
})

t.test('a watch that fails to start (429, then 500) is retried, never left dead', async (t) => {
  const { api, pods } = await world(t, (api) => {
    api.upsert('a')
    api.watchFaults.push({ status: 429, reason: 'TooManyRequests', message: 'Too many requests', retryAfter: 1 })
    api.watchFaults.push({ status: 500, reason: 'InternalError', message: 'etcd unavailable' })
  })
  const t0 = Date.now()
  await waitFor('a running watch', () => api.watches.size === 1, 8000)
  const w = api.watchesAsked()
  t.equal(w.length, 3, 'the 429, the 500, then the running one')
  t.equal(w[1]!.get('resourceVersion'), '101', 'after a 429 the same version is watched again (no relist)')
  t.equal(api.lists().length, 2, 'after a 500 the reflector relists (client-go: the round ends, back-off, list)')
  t.ok(Date.now() - t0 >= 1000, 'the 429\'s Retry-After was honoured')
  api.upsert('b')
  await waitFor('the watch delivers', () => pods.cachedCount() === 2)
})

t.test('the API unreachable at start: never synced, lookups fail with the deadline error', async (t) => {
  const api = new FakeApi()
  await api.listen()
  const url = api.url
  await api.close()
  const pods = createPodSource(kubeconfig(url), NODE, log, { reflector: { backoff: new Backoff({ initialMs: 20, capMs: 50 }) } })
  t.teardown(() => pods.stop())
  await new Promise((r) => setTimeout(r, 200))
  t.notOk(pods.synced(), 'connection refused: never synced')
  await t.rejects(pods.get({ namespace: 'apps', name: 'a', uid: 'uid-a' } as never, 300), /lookup failed before the deadline/)
})

t.test('GET fallback: a pod the cache misses, another incarnation, a 404', async (t) => {
  const { api, pods } = await world(t, (api) => { api.upsert('a') })
  await waitFor('synced', () => pods.synced())
  api.pods.set('apps/late', { metadata: { name: 'late', namespace: 'apps', uid: 'uid-late', resourceVersion: '999' }, spec: { nodeName: NODE, containers: [] } })
  const late = await pods.get({ namespace: 'apps', name: 'late', uid: 'uid-late' } as never, 1000)
  t.same([late.source, late.pod?.metadata?.uid], ['api', 'uid-late'], 'not in the cache: read directly')
  const gone = await pods.get({ namespace: 'apps', name: 'nope', uid: 'u' } as never, 1000)
  t.same([gone.source, gone.pod], ['api', undefined], '404: no such pod')
  await t.rejects(pods.get({ namespace: 'apps', name: 'a', uid: 'uid-other' } as never, 300), /has uid uid-a, expected uid-other/, 'another incarnation is never taken for this one')
})

t.test('a watch that ends at once with no event is an error: back-off and relist, not a hot loop', async (t) => {
  const { api, pods } = await world(t, (api) => { api.upsert('a'); api.closeAtOnce = 3 })
  await waitFor('a running watch', () => api.watches.size === 1, 8000)
  t.equal(api.watchesAsked().length, 4, 'three dropped watches, then the running one')
  t.equal(api.lists().length, 4, 'each very short watch (reflector.go:1090) ends the round: a relist after the back-off')
  t.ok(pods.synced())
})

t.test('the cache keeps what the agent reads of a pod, and nothing else', async (t) => {
  const intent = '{"v":1,"mode":"proxy","uid":2171,"dnat":[],"fence":[]}'
  const pod = {
    metadata: {
      name: 'web', namespace: 'apps', uid: 'uid-web', resourceVersion: '7', deletionTimestamp: undefined,
      labels: { app: 'web' }, ownerReferences: [{ kind: 'ReplicaSet', name: 'web-1' }],
      annotations: { [ANNOTATION_INTERCEPTION]: intent, 'kubectl.kubernetes.io/last-applied-configuration': 'x'.repeat(4000) },
      managedFields: [{ manager: 'kubelet', operation: 'Update', fieldsV1: { 'f:status': {} } }],
    },
    spec: {
      nodeName: NODE,
      initContainers: [{ name: VALIDATOR_NAME, image: 'v', env: [{ name: 'A', value: 'b' }] }],
      containers: [{ name: 'app', image: 'app:1', env: [{ name: 'E', value: 'v' }], ports: [{ containerPort: 8080 }, { containerPort: 53, protocol: 'UDP' }], readinessProbe: { httpGet: { port: 9090, path: '/ready' } }, volumeMounts: [{ name: 'v', mountPath: '/v' }] }],
      volumes: [{ name: 'v', emptyDir: {} }],
    },
    status: { phase: 'Running', podIP: '10.0.0.5', initContainerStatuses: [{ name: VALIDATOR_NAME, state: { terminated: { exitCode: EXIT_NOT_INTERCEPTED } } }], conditions: [{ type: 'Ready', status: 'True' }] },
  } as unknown as V1Pod
  const kept = cachedPod(pod)
  t.same(podIngress(kept.spec as IngressSpec), podIngress(pod.spec as IngressSpec), 'the ingress the fence lets in is the same')
  t.same(podIngress(kept.spec as IngressSpec).map((p) => p.port), [8080, 9090, 53], 'ports and probe ports are kept')
  t.equal(needsRepair(kept), needsRepair(pod), 'repair decides the same')
  t.ok(needsRepair(kept), 'the validator status is kept')
  t.same(snapshotEntry(kept), snapshotEntry(pod), 'the snapshot entry is the same')
  t.same(kept.metadata, { name: 'web', namespace: 'apps', uid: 'uid-web', resourceVersion: '7', annotations: { [ANNOTATION_INTERCEPTION]: intent } }, 'only the agent\'s own annotations')
  t.notOk(JSON.stringify(kept).includes('managedFields') || JSON.stringify(kept).includes('env') || JSON.stringify(kept).includes('volumes'), 'managedFields, env and volumes are dropped')
  t.ok(JSON.stringify(kept).length < JSON.stringify(pod).length / 4, `${JSON.stringify(kept).length} of ${JSON.stringify(pod).length} bytes kept`)
  t.ok(needsRepair(cachedPod({ ...pod, metadata: { ...pod.metadata, deletionTimestamp: new Date() } })) === false, 'a deletion is kept (repair leaves a deleted pod alone)')
})

t.test('the cache stores the compact pod', async (t) => {
  const { api, pods } = await world(t, (api) => { api.upsert('a', { managedFields: [{ manager: 'kubelet' }], labels: { x: 'y' } }) })
  await waitFor('synced', () => pods.synced())
  const r = await pods.get({ namespace: 'apps', name: 'a', uid: 'uid-a' } as never, 1000)
  t.equal(r.source, 'cache')
  t.same(r.pod, cachedPod(api.pods.get('apps/a')!), 'what the cache holds is cachedPod of what was listed')
  t.notOk(r.pod?.metadata?.managedFields, 'without managedFields')
})
