// A minimal Kubernetes API server stand-in for the node-level suite (there is no
// kube-apiserver here). It speaks the real wire format to the real clients: HTTPS, bearer
// tokens (401 Status), typed lists with resourceVersion, watch streams of JSON events,
// 404/409/410 Status objects, create/replace/patch/delete, and mutating admission for pods
// through a real AdmissionReview round trip to the webhook.
import { randomUUID } from 'node:crypto'
import { createServer, request, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import jsonpatch from 'fast-json-patch'
import { NODE_RESOURCE, SERVICE_RESOURCE, seedServices } from './kube-services.ts'

type Obj = { apiVersion?: string; kind?: string; metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string; labels?: Record<string, string>; annotations?: Record<string, string>; generateName?: string; creationTimestamp?: string; [k: string]: unknown }; [k: string]: unknown }

interface Resource {
  /** URL plural, e.g. pods. */
  plural: string
  kind: string
  apiVersion: string
  namespaced: boolean
  /** Path prefix of the group version: /api/v1 or /apis/<group>/<version>. */
  base: string
}

const RESOURCES: Resource[] = [
  { plural: 'pods', kind: 'Pod', apiVersion: 'v1', namespaced: true, base: '/api/v1' },
  { plural: 'namespaces', kind: 'Namespace', apiVersion: 'v1', namespaced: false, base: '/api/v1' },
  { plural: 'secrets', kind: 'Secret', apiVersion: 'v1', namespaced: true, base: '/api/v1' },
  SERVICE_RESOURCE, NODE_RESOURCE,
  { plural: 'daemonsets', kind: 'DaemonSet', apiVersion: 'apps/v1', namespaced: true, base: '/apis/apps/v1' },
  { plural: 'leases', kind: 'Lease', apiVersion: 'coordination.k8s.io/v1', namespaced: true, base: '/apis/coordination.k8s.io/v1' },
  { plural: 'mutatingwebhookconfigurations', kind: 'MutatingWebhookConfiguration', apiVersion: 'admissionregistration.k8s.io/v1', namespaced: false, base: '/apis/admissionregistration.k8s.io/v1' },
]

interface WatchEvent { type: 'ADDED' | 'MODIFIED' | 'DELETED'; rv: number; resource: string; object: Obj }

export interface AdmissionTarget {
  url: string
  ca: string
}

export interface KubeApiOptions {
  cert: string
  key: string
  tokens: string[]
  /** Called for pod CREATE like a MutatingWebhookConfiguration would. */
  admission?: AdmissionTarget
}

export interface RequestRecord { method: string; path: string; status: number }

export class KubeApiStandIn {
  private server: Server
  private store = new Map<string, Obj>()
  private events: WatchEvent[] = []
  private watchers = new Set<{ resource: string; filter: (o: Obj) => boolean; res: ServerResponse }>()
  private rv = 100
  tokens: Set<string>
  /** RBAC stand-in: token -> resources it may no longer touch (403 Forbidden, as the real API). */
  readonly denied = new Map<string, Set<string>>()
  admission: AdmissionTarget | undefined
  /** Another admission step after ours that may refuse the object (returns the message). */
  afterAdmission: ((obj: Obj) => string | undefined) | undefined
  readonly requests: RequestRecord[] = []

  constructor(opts: KubeApiOptions) {
    this.tokens = new Set(opts.tokens)
    this.admission = opts.admission
    this.server = createServer({ cert: opts.cert, key: opts.key }, (req, res) => {
      this.handle(req, res).catch((e: unknown) => this.status(res, 500, 'InternalError', (e as Error).message))
    })
    seedServices(this)
  }

  async listen(host = '127.0.0.1'): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, host, r))
    return `https://${host}:${(this.server.address() as AddressInfo).port}`
  }

  async close(): Promise<void> {
    for (const w of this.watchers) w.res.end()
    this.server.closeAllConnections()
    await new Promise<void>((r) => this.server.close(() => r()))
  }

  get resourceVersion(): number { return this.rv }

  // ---- direct access for the harness (what kubectl would do) ----

  key(r: Resource, ns: string | undefined, name: string): string {
    return `${r.plural}/${r.namespaced ? ns : ''}/${name}`
  }

  get(plural: string, ns: string | undefined, name: string): Obj | undefined {
    return this.store.get(this.key(this.resource(plural), ns, name))
  }

  /** Creates an object; pods go through mutating admission first, as in a cluster. */
  async create(plural: string, obj: Obj): Promise<Obj> {
    const r = this.resource(plural)
    const res = await this.createObject(r, obj.metadata.namespace, obj, false)
    if ('error' in res) throw new Error(`create ${plural}: ${res.error.message}`)
    return res.obj
  }

  delete(plural: string, ns: string | undefined, name: string): void {
    const r = this.resource(plural)
    const k = this.key(r, ns, name)
    const obj = this.store.get(k)
    if (!obj) return
    this.store.delete(k)
    this.emit('DELETED', r, { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++this.rv) } })
  }

  /** Writes an object as-is (no admission): how a test crafts a hostile annotation. */
  put(plural: string, obj: Obj): Obj {
    const r = this.resource(plural)
    const k = this.key(r, obj.metadata.namespace, obj.metadata.name)
    const prev = this.store.get(k)
    const stored = this.stamp(r, obj, prev)
    this.store.set(k, stored)
    this.emit(prev ? 'MODIFIED' : 'ADDED', r, stored)
    return stored
  }

  // ---- HTTP ----

  private resource(plural: string): Resource {
    const r = RESOURCES.find((x) => x.plural === plural)
    if (!r) throw new Error(`unknown resource ${plural}`)
    return r
  }

  private stamp(r: Resource, obj: Obj, prev: Obj | undefined): Obj {
    // A Secret's stringData is write-only: the API server merges it into data (base64) and
    // never returns it.
    if (r.plural === 'secrets' && obj.stringData) {
      const { stringData, ...rest } = obj as Obj & { stringData: Record<string, string>; data?: Record<string, string> }
      obj = { ...rest, data: { ...(rest.data ?? {}), ...Object.fromEntries(Object.entries(stringData).map(([k, v]) => [k, Buffer.from(v).toString('base64')])) } }
    }
    return {
      ...obj,
      apiVersion: r.apiVersion,
      kind: r.kind,
      metadata: {
        ...obj.metadata,
        uid: prev?.metadata.uid ?? obj.metadata.uid ?? randomUUID(),
        creationTimestamp: prev?.metadata.creationTimestamp ?? new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
        resourceVersion: String(++this.rv),
      },
    }
  }

  private emit(type: WatchEvent['type'], r: Resource, object: Obj): void {
    const ev = { type, rv: Number(object.metadata.resourceVersion), resource: r.plural, object }
    this.events.push(ev)
    if (this.events.length > 5000) this.events.shift()
    for (const w of this.watchers) if (w.resource === r.plural && w.filter(object)) w.res.write(JSON.stringify({ type, object }) + '\n')
  }

  private status(res: ServerResponse, code: number, reason: string, message: string, details?: object): void {
    if (res.headersSent) { res.end(); return }
    res.writeHead(code, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code }))
  }

  private async body(req: IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null')
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://x')
    res.on('finish', () => this.requests.push({ method: req.method ?? '', path: url.pathname + url.search, status: res.statusCode }))
    const auth = req.headers.authorization ?? ''
    if (!auth.startsWith('Bearer ') || !this.tokens.has(auth.slice(7))) return this.status(res, 401, 'Unauthorized', 'Unauthorized')

    const route = this.route(url.pathname)
    if (!route) return this.status(res, 404, 'NotFound', 'the server could not find the requested resource')
    const { r, ns, name } = route
    const method = req.method ?? 'GET'
    if (this.denied.get(auth.slice(7))?.has(r.plural)) {
      const group = r.apiVersion.includes('/') ? r.apiVersion.split('/')[0]! : ''
      const verb = method === 'GET' ? (name ? 'get' : 'list') : method === 'POST' ? 'create' : method === 'DELETE' ? 'delete' : method === 'PUT' ? 'update' : 'patch'
      return this.status(res, 403, 'Forbidden', `${r.plural}${group ? `.${group}` : ''}${name ? ` "${name}"` : ''} is forbidden: User "system:serviceaccount:ziti-cni-system:ziti-cni-agent" cannot ${verb} resource "${r.plural}" in API group "${group}"${ns ? ` in the namespace "${ns}"` : ''}`)
    }

    if (method === 'GET' && !name) {
      const filter = selectorFilter(url.searchParams)
      if (url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1') return this.watch(r, ns, filter, url, res)
      const items = [...this.store.values()].filter((o) => o.kind === r.kind && (!ns || o.metadata.namespace === ns) && filter(o))
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ kind: `${r.kind}List`, apiVersion: r.apiVersion, metadata: { resourceVersion: String(this.rv) }, items: items.map(({ apiVersion: _a, kind: _k, ...rest }) => rest) }))
      return
    }
    if (method === 'POST' && !name) {
      const obj = (await this.body(req)) as Obj
      const out = await this.createObject(r, ns, obj, url.searchParams.get('dryRun') === 'All')
      if ('error' in out) return this.status(res, out.error.code, out.error.reason, out.error.message)
      res.writeHead(201, { 'content-type': 'application/json' })
      res.end(JSON.stringify(out.obj))
      return
    }
    if (!name) return this.status(res, 405, 'MethodNotAllowed', `${method} is not supported on a collection`)
    const k = this.key(r, ns, name)
    const existing = this.store.get(k)
    const notFound = () => this.status(res, 404, 'NotFound', `${r.plural} "${name}" not found`, { name, kind: r.plural })
    if (method === 'GET') {
      if (!existing) return notFound()
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(existing))
      return
    }
    if (method === 'DELETE') {
      if (!existing) return notFound()
      const opts = (await this.body(req).catch(() => null)) as { preconditions?: { uid?: string } } | null
      const uid = opts?.preconditions?.uid
      if (uid && uid !== existing.metadata.uid) {
        return this.status(res, 409, 'Conflict', `Precondition failed: UID in precondition: ${uid}, UID in object meta: ${existing.metadata.uid}`)
      }
      this.delete(r.plural, ns, name)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(existing))
      return
    }
    if (method === 'PUT' || method === 'PATCH') {
      if (!existing) return notFound()
      const body = await this.body(req)
      let next: Obj
      if (method === 'PUT') {
        next = body as Obj
        const want = next.metadata?.resourceVersion
        if (want && want !== existing.metadata.resourceVersion) {
          return this.status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${r.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`)
        }
      } else {
        const type = String(req.headers['content-type'] ?? '')
        try {
          next = type.includes('json-patch') ? jsonpatch.applyPatch(structuredClone(existing), body as jsonpatch.Operation[], true).newDocument : mergePatch(existing, body) as Obj
        } catch (e) {
          return this.status(res, 422, 'Invalid', `patch failed: ${(e as Error).message}`)
        }
      }
      const stored = this.stamp(r, { ...next, metadata: { ...next.metadata, name, ...(r.namespaced ? { namespace: ns } : {}) } }, existing)
      this.store.set(k, stored)
      this.emit('MODIFIED', r, stored)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify(stored))
      return
    }
    this.status(res, 405, 'MethodNotAllowed', `${method} is not supported`)
  }

  private route(path: string): { r: Resource; ns: string | undefined; name: string | undefined } | undefined {
    for (const r of RESOURCES) {
      if (!path.startsWith(`${r.base}/`)) continue
      const parts = path.slice(r.base.length + 1).split('/').map(decodeURIComponent)
      if (r.namespaced) {
        if (parts[0] === r.plural && parts.length === 1) return { r, ns: undefined, name: undefined }
        if (parts[0] === 'namespaces' && parts[2] === r.plural && parts.length <= 4) return { r, ns: parts[1], name: parts[3] }
      } else if (parts[0] === r.plural && parts.length <= 2) return { r, ns: undefined, name: parts[1] }
    }
    return undefined
  }

  private async createObject(r: Resource, ns: string | undefined, obj: Obj, dryRun: boolean): Promise<{ obj: Obj } | { error: { code: number; reason: string; message: string } }> {
    const namespace = r.namespaced ? (ns ?? obj.metadata?.namespace ?? 'default') : undefined
    let candidate: Obj = structuredClone(obj)
    candidate.metadata = { ...candidate.metadata, ...(namespace ? { namespace } : {}) }
    if (!candidate.metadata.name && !candidate.metadata.generateName) return { error: { code: 422, reason: 'Invalid', message: 'metadata.name: Required value' } }
    // Mutating admission runs before the name is generated (the apiserver's BeforeCreate
    // fills generateName, and the uid, after admission): a webhook sees name "" for them.
    if (r.plural === 'pods' && this.admission) {
      const verdict = await admit(this.admission, candidate, this.get('namespaces', undefined, namespace!), dryRun)
      if ('denied' in verdict) return { error: { code: 400, reason: 'BadRequest', message: `admission webhook "ziti-cni.openziti.io" denied the request: ${verdict.denied}` } }
      candidate = verdict.obj
    }
    // Rejected after our webhook (another webhook, validation, quota): the test's hook.
    const veto = r.plural === 'pods' ? this.afterAdmission?.(candidate) : undefined
    if (veto) return { error: { code: 403, reason: 'Forbidden', message: veto } }
    if (!candidate.metadata.name) candidate.metadata.name = `${candidate.metadata.generateName}${randomUUID().slice(0, 5)}`
    const k = this.key(r, namespace, candidate.metadata.name)
    if (this.store.has(k)) return { error: { code: 409, reason: 'AlreadyExists', message: `${r.plural} "${candidate.metadata.name}" already exists` } }
    if (dryRun) return { obj: candidate }
    const stored = this.stamp(r, candidate, undefined)
    this.store.set(k, stored)
    this.emit('ADDED', r, stored)
    return { obj: stored }
  }

  private watch(r: Resource, ns: string | undefined, filter: (o: Obj) => boolean, url: URL, res: ServerResponse): void {
    const from = Number(url.searchParams.get('resourceVersion') ?? '0')
    const f = (o: Obj) => (!ns || o.metadata.namespace === ns) && filter(o)
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' })
    if (from > 0 && this.events.length > 0 && from < this.events[0]!.rv - 1) {
      res.end(JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from}`, reason: 'Expired', code: 410 } }) + '\n')
      return
    }
    if (from > 0) {
      for (const ev of this.events) if (ev.resource === r.plural && ev.rv > from && f(ev.object)) res.write(JSON.stringify({ type: ev.type, object: ev.object }) + '\n')
    } else {
      for (const o of this.store.values()) if (o.kind === r.kind && f(o)) res.write(JSON.stringify({ type: 'ADDED', object: o }) + '\n')
    }
    const w = { resource: r.plural, filter: f, res }
    this.watchers.add(w)
    const timeout = Number(url.searchParams.get('timeoutSeconds') ?? '0')
    const timer = timeout > 0 ? setTimeout(() => res.end(), timeout * 1000) : undefined
    res.on('close', () => { this.watchers.delete(w); if (timer) clearTimeout(timer) })
  }
}

function selectorFilter(q: URLSearchParams): (o: Obj) => boolean {
  const checks: Array<(o: Obj) => boolean> = []
  for (const term of (q.get('fieldSelector') ?? '').split(',').filter(Boolean)) {
    const [k, v] = term.split('=') as [string, string]
    const path = k.split('.')
    checks.push((o) => String(path.reduce<unknown>((acc, p) => (acc as Record<string, unknown> | undefined)?.[p], o) ?? '') === v)
  }
  for (const term of (q.get('labelSelector') ?? '').split(',').filter(Boolean)) {
    const [k, v] = term.split('=') as [string, string | undefined]
    checks.push((o) => (v === undefined ? k in (o.metadata.labels ?? {}) : o.metadata.labels?.[k] === v))
  }
  return (o) => checks.every((c) => c(o))
}

function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch
  const out: Record<string, unknown> = typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {}
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = mergePatch(out[k], v)
  }
  return out
}

/** One AdmissionReview v1 round trip over HTTPS, as the API server does for a mutating webhook. */
async function admit(target: AdmissionTarget, pod: Obj, namespace: Obj | undefined, dryRun: boolean): Promise<{ obj: Obj } | { denied: string }> {
  const uid = randomUUID()
  const review = {
    apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview',
    request: {
      uid, kind: { group: '', version: 'v1', kind: 'Pod' }, resource: { group: '', version: 'v1', resource: 'pods' },
      requestKind: { group: '', version: 'v1', kind: 'Pod' }, requestResource: { group: '', version: 'v1', resource: 'pods' },
      name: pod.metadata.name ?? '', namespace: pod.metadata.namespace, operation: 'CREATE',
      userInfo: { username: 'system:serviceaccount:kube-system:replicaset-controller' },
      object: pod, oldObject: null, dryRun, options: { kind: 'CreateOptions', apiVersion: 'meta.k8s.io/v1' },
    },
  }
  // Namespace labels reach a real webhook through namespaceSelector; the stand-in mirrors
  // that by skipping the call when the namespace is not opted in.
  const labels = namespace?.metadata.labels ?? {}
  if (labels['cni.openziti.io/inject'] !== 'enabled') return { obj: pod }
  const body = JSON.stringify(review)
  const text = await new Promise<string>((resolve, reject) => {
    const req = request(target.url, { method: 'POST', ca: target.ca, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks).toString('utf8')) : reject(new Error(`webhook answered HTTP ${res.statusCode}`))))
    })
    req.on('error', reject)
    req.end(body)
  })
  const answer = JSON.parse(text) as { response: { uid: string; allowed: boolean; status?: { message?: string }; patch?: string; patchType?: string } }
  if (answer.response.uid !== uid) throw new Error('webhook answered with another uid')
  if (!answer.response.allowed) return { denied: answer.response.status?.message ?? 'denied' }
  if (!answer.response.patch) return { obj: pod }
  const ops = JSON.parse(Buffer.from(answer.response.patch, 'base64').toString('utf8')) as jsonpatch.Operation[]
  return { obj: jsonpatch.applyPatch(structuredClone(pod), ops, true).newDocument }
}
