// A Kubernetes API server stand-in for the node-level suite (there is no kube-apiserver
// here). It keeps the real server's contract for what this project uses, each behaviour
// citing the kubernetes/apiserver, apimachinery or kubernetes source it follows (README,
// "The Kubernetes API stand-in"): HTTPS and bearer tokens (401), typed lists with
// resourceVersion, `limit`/`continue` paging, `resourceVersion=0` from the watch cache, watch
// streams with bookmarks, server-side timeouts and 410 for an aged-out resourceVersion,
// field-selector validation and selector transitions, 429 under load (APF), graceful pod
// deletion and pods/status, defaulting and validation (MicroTime, total annotation size),
// and the mutating admission chain of the shipped MutatingWebhookConfiguration.
// ZCNI_CHAOS turns some of these faults on at random (kube-api/chaos.ts).
import { randomUUID } from 'node:crypto'
import { createServer, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import jsonpatch from 'fast-json-patch'
import { parse as parseYaml } from 'yaml'
import { KubeEvents } from './kube-events.ts'
import { KubeTokens } from './kube-tokens.ts'
import { loadShippedConfiguration, MutatingAdmission, warningHeaders, type MutatingWebhookConfiguration, type Resolver, type WebhookCall } from './kube-api/admission.ts'
import { parseChaos, type Chaos } from './kube-api/chaos.ts'
import { listOptionErrors, namespaceLifecycle, newNamespace, patchOptionErrors, patchType, serviceAccountAdmission, SYSTEM_NAMESPACES } from './kube-api/lifecycle.ts'
import { decodeError, defaultPod, invalid, metaErrors, podUpdateErrors, RESOURCES, StatusError, validatePod, type Obj, type Resource } from './kube-api/objects.ts'
import { parseFieldSelector, parseLabelSelector, labelsMatch, SelectorError, type Matcher } from './kube-api/selectors.ts'
import { seedServices } from './kube-services.ts'

export type { Obj } from './kube-api/objects.ts'
export { loadShippedConfiguration } from './kube-api/admission.ts'

interface WatchEvent { type: 'ADDED' | 'MODIFIED' | 'DELETED'; rv: number; resource: string; object: Obj; prev: Obj | undefined }

export interface AdmissionTarget {
  url: string
  ca: string
}

export interface UserInfo { username: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> }

/**
 * Authentication hook: called per request with the bearer token (undefined without one).
 * Return the user to authenticate, undefined to let the next authenticator try. The
 * authenticators run in order, the first user wins, none means 401 (the apiserver's union
 * authenticator, apiserver pkg/authentication/request/union/union.go).
 */
export type Authenticator = (token: string | undefined, req: IncomingMessage) => UserInfo | undefined | Promise<UserInfo | undefined>

/**
 * Extra routes (e.g. TokenRequest, TokenReview): called before the resource routes with the
 * authenticated user; return undefined to pass.
 */
export type Route = (req: { method: string; url: URL; user: UserInfo; body: () => Promise<unknown> }) => Promise<{ status: number; body: unknown } | undefined> | { status: number; body: unknown } | undefined

export interface KubeApiOptions {
  cert: string
  key: string
  tokens: string[]
  /** The webhook that the shipped MutatingWebhookConfiguration's service resolves to. */
  admission?: AdmissionTarget
  /** --min-request-timeout in seconds (default 1800, apiserver pkg/server/config.go:454). */
  minRequestTimeoutSeconds?: number
  /** Events the watch cache keeps; a watch from an older resourceVersion gets 410. */
  historySize?: number
  /** APF stand-in: concurrent non-watch requests beyond this answer 429 (0: no limit). */
  maxInflight?: number
  /** Retry-After of a 429, in seconds. */
  retryAfterSeconds?: number
  /** Watch bookmark period (cacher.go:78 defaultBookmarkFrequency, 1 minute). */
  bookmarkFrequencyMs?: number
  /** How long a continue token stays valid (etcd compaction, every 5 minutes by default). */
  continueTtlMs?: number
  /** The node's kubelet: how long it takes to stop a terminating pod's containers. */
  kubeletStopMs?: number
  /** The namespace controller: how long emptying a terminating namespace takes. */
  namespaceCleanupMs?: number
  /** Chaos spec (default: env ZCNI_CHAOS) and seed (default: env ZCNI_CHAOS_SEED). */
  chaos?: string
  chaosSeed?: string
}

export interface RequestRecord { method: string; path: string; status: number; user?: string }

interface Watcher { resource: string; filter: Matcher; res: ServerResponse; bookmarks: boolean; kind: string; apiVersion: string }
interface Snapshot { rv: number; items: Array<{ key: string; obj: Obj }>; created: number }

const LIST_KIND_SUFFIX = 'List'

export class KubeApiStandIn {
  private server: Server
  private store = new Map<string, Obj>()
  private events: WatchEvent[] = []
  private watchers = new Set<Watcher>()
  private snapshots = new Map<number, Snapshot>()
  private rv = 100
  private inflight = 0
  private overloadedUntil = 0
  private overloadRetryAfter = 1
  private timers = new Set<NodeJS.Timeout>()
  private readonly o: Required<Omit<KubeApiOptions, 'admission' | 'chaos' | 'chaosSeed' | 'cert' | 'key' | 'tokens'>>
  tokens: Set<string>
  /** RBAC stand-in: token -> resources it may no longer touch (403 Forbidden, as the real API). */
  readonly denied = new Map<string, Set<string>>()
  /** Runs after the static tokens; kube-tokens.ts adds the ServiceAccount token authenticator here. */
  readonly authenticators: Authenticator[] = []
  readonly routes: Route[] = []
  /** core/v1 Events (create, list): kube-events.ts. */
  readonly eventsApi = new KubeEvents()
  /** TokenRequest / TokenReview (kube-tokens.ts). */
  readonly serviceAccountTokens = new KubeTokens((plural, ns, name) => this.get(plural, ns, name))
  /** Another admission step after ours that may refuse the object (returns the message). */
  afterAdmission: ((obj: Obj) => string | undefined) | undefined
  readonly requests: RequestRecord[] = []
  readonly chaos: Chaos | undefined
  private readonly mutating = new MutatingAdmission((o) => defaultPod(o))
  private target: AdmissionTarget | undefined

  constructor(opts: KubeApiOptions) {
    this.tokens = new Set(opts.tokens)
    this.o = {
      minRequestTimeoutSeconds: opts.minRequestTimeoutSeconds ?? 1800,
      historySize: opts.historySize ?? 1000,
      maxInflight: opts.maxInflight ?? 0,
      retryAfterSeconds: opts.retryAfterSeconds ?? 1,
      bookmarkFrequencyMs: opts.bookmarkFrequencyMs ?? 60_000,
      continueTtlMs: opts.continueTtlMs ?? 5 * 60_000,
      kubeletStopMs: opts.kubeletStopMs ?? 500,
      namespaceCleanupMs: opts.namespaceCleanupMs ?? 500,
    }
    this.chaos = parseChaos(opts.chaos ?? process.env.ZCNI_CHAOS, opts.chaosSeed ?? process.env.ZCNI_CHAOS_SEED)
    if (this.chaos) process.stderr.write(`# kube-api stand-in: chaos ${[...this.chaos.faults].join(',')} seed ${this.chaos.seed} (replay with ZCNI_CHAOS_SEED=${this.chaos.seed})\n`)
    this.admission = opts.admission
    this.server = createServer({ cert: opts.cert, key: opts.key }, (req, res) => {
      this.handle(req, res).catch((e: unknown) => {
        if (e instanceof StatusError) return this.fail(res, e)
        this.fail(res, new StatusError(500, 'InternalError', `Internal error occurred: ${(e as Error).message}`))
      })
    })
    // The system namespaces, and the one deploy/base/namespace.yaml makes for ziti-cni.
    for (const name of [...SYSTEM_NAMESPACES, 'ziti-cni-system']) this.put('namespaces', newNamespace({ metadata: { name } }))
    seedServices(this)
  }

  async listen(host = '127.0.0.1'): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, host, r))
    return `https://${host}:${(this.server.address() as AddressInfo).port}`
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t)
    for (const w of this.watchers) w.res.end()
    this.server.closeAllConnections()
    await new Promise<void>((r) => this.server.close(() => r()))
  }

  get resourceVersion(): number { return this.rv }

  /**
   * The webhook the shipped configuration's service (ziti-cni-system/ziti-cni-webhook)
   * resolves to; setting it registers deploy/base/webhook/mutatingwebhookconfiguration.yaml.
   */
  get admission(): AdmissionTarget | undefined { return this.target }
  set admission(t: AdmissionTarget | undefined) {
    this.target = t
    const shipped = loadShippedConfiguration()
    if (!t) { this.mutating.unregister(shipped.metadata.name); return }
    this.mutating.register(shipped, (cc) => (cc.service?.namespace === 'ziti-cni-system' && cc.service.name === 'ziti-cni-webhook' ? t : undefined))
  }

  /** Another MutatingWebhookConfiguration (e.g. a second webhook, to exercise reinvocation). */
  registerWebhookConfiguration(config: MutatingWebhookConfiguration, resolve: Resolver): void {
    this.mutating.register(config, resolve)
  }

  /** Every webhook call the admission chain made. */
  get admissionCalls(): readonly WebhookCall[] { return this.mutating.calls }

  /** APF stand-in: every request in the next `ms` answers 429 with Retry-After (seconds; default the option's). */
  overload(ms: number, retryAfterSeconds = this.o.retryAfterSeconds): void {
    this.overloadedUntil = Date.now() + ms
    this.overloadRetryAfter = retryAfterSeconds
  }

  /**
   * etcd compaction: the watch history and every continue token up to now are gone; a watch
   * or continue from before answers 410.
   */
  compact(): void {
    this.events = []
    this.snapshots.clear()
  }

  // ---- direct access for the harness (what kubectl would do) ----

  key(r: Resource, ns: string | undefined, name: string): string {
    return `${r.plural}/${r.namespaced ? ns : ''}/${name}`
  }

  get(plural: string, ns: string | undefined, name: string): Obj | undefined {
    return this.store.get(this.key(this.resource(plural), ns, name))
  }

  /** Creates an object through the API's create path (admission, defaulting, validation). */
  async create(plural: string, obj: Obj): Promise<Obj> {
    const r = this.resource(plural)
    try {
      return (await this.createObject(r, obj.metadata.namespace, obj, false)).obj
    } catch (e) {
      if (e instanceof StatusError) throw new Error(`create ${plural}: ${e.message}`)
      throw e
    }
  }

  /** Removes an object at once: `kubectl delete --grace-period=0 --force`. */
  delete(plural: string, ns: string | undefined, name: string): void {
    const r = this.resource(plural)
    const k = this.key(r, ns, name)
    const obj = this.store.get(k)
    if (!obj) return
    this.remove(r, k, obj)
  }

  /** Writes an object as-is (no admission, no validation): how a test crafts a hostile object. */
  put(plural: string, obj: Obj): Obj {
    const r = this.resource(plural)
    const k = this.key(r, obj.metadata.namespace, obj.metadata.name)
    const prev = this.store.get(k)
    const stored = this.stamp(r, obj, prev)
    this.store.set(k, stored)
    this.emit(prev ? 'MODIFIED' : 'ADDED', r, stored, prev)
    return stored
  }

  // ---- storage ----

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

  private remove(r: Resource, k: string, obj: Obj): void {
    this.store.delete(k)
    this.emit('DELETED', r, { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++this.rv) } }, obj)
  }

  private emit(type: WatchEvent['type'], r: Resource, object: Obj, prev: Obj | undefined): void {
    const ev: WatchEvent = { type, rv: Number(object.metadata.resourceVersion), resource: r.plural, object, prev }
    this.events.push(ev)
    if (this.events.length > this.o.historySize) this.events.shift()
    for (const w of this.watchers) if (w.resource === r.plural) this.deliver(w, ev)
    // The ServiceAccounts controller: every namespace gets a "default" ServiceAccount
    // (kubernetes pkg/controller/serviceaccount/serviceaccounts_controller.go).
    const ns = object.metadata.name
    if (r.plural === 'namespaces' && type === 'ADDED' && !this.get('serviceaccounts', ns, 'default')) {
      this.put('serviceaccounts', { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: ns } })
    }
  }

  /**
   * cacheWatcher.convertToWatchEvent (apiserver pkg/storage/cacher/cache_watcher.go:373-410):
   * an object that starts matching the selector arrives as ADDED, one that stops matching as
   * DELETED (the previous object at the event's resourceVersion).
   */
  private deliver(w: Watcher, ev: WatchEvent): void {
    const cur = ev.type !== 'DELETED' && w.filter(ev.object)
    const old = ev.prev !== undefined && w.filter(ev.prev)
    if (!cur && !old) return
    if (cur && !old) return this.write(w.res, { type: 'ADDED', object: ev.object })
    if (cur && old) return this.write(w.res, { type: ev.type === 'ADDED' ? 'ADDED' : 'MODIFIED', object: ev.object })
    this.write(w.res, { type: 'DELETED', object: { ...ev.prev!, metadata: { ...ev.prev!.metadata, resourceVersion: String(ev.rv) } } })
  }

  /** Never writes to an ended or destroyed stream (a client that went away mid-event). */
  private write(res: ServerResponse, event: object): void {
    if (res.writableEnded || res.destroyed) return
    try { res.write(JSON.stringify(event) + '\n') } catch { /* the socket closed under us */ }
  }

  private later(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => { this.timers.delete(t); fn() }, ms)
    t.unref()
    this.timers.add(t)
    return t
  }

  // ---- HTTP ----

  private fail(res: ServerResponse, e: StatusError): void {
    if (res.headersSent) { res.end(); return }
    res.writeHead(e.code, { 'content-type': 'application/json', ...e.headers })
    res.end(JSON.stringify(e.status()))
  }

  private json(res: ServerResponse, code: number, body: unknown, headers: Record<string, string | string[]> = {}): void {
    res.writeHead(code, { 'content-type': 'application/json', ...headers })
    res.end(JSON.stringify(body))
  }

  private async body(req: IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const text = Buffer.concat(chunks).toString('utf8')
    try {
      return JSON.parse(text || 'null')
    } catch (e) {
      throw new StatusError(400, 'BadRequest', `the object provided is unrecognized: ${(e as Error).message}`)
    }
  }

  private async authenticate(req: IncomingMessage): Promise<UserInfo | undefined> {
    const auth = req.headers.authorization ?? ''
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : undefined
    if (token && this.tokens.has(token)) return { username: 'system:serviceaccount:ziti-cni-system:ziti-cni-agent', groups: ['system:serviceaccounts', 'system:authenticated'] }
    for (const a of this.authenticators) {
      const user = await a(token, req)
      if (user) return user
    }
    return undefined
  }

  /**
   * APF (apiserver pkg/server/filters/priority-and-fairness.go:377-381): a rejected request
   * gets 429 with Retry-After and a plain-text body, not a Status.
   */
  private tooManyRequests(res: ServerResponse, retryAfter: number): void {
    res.writeHead(429, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff', 'retry-after': String(retryAfter) })
    res.end('Too many requests, please try again later.\n')
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://x')
    const record: RequestRecord = { method: req.method ?? '', path: url.pathname + url.search, status: 0 }
    res.on('finish', () => { record.status = res.statusCode; this.requests.push(record) })
    const user = await this.authenticate(req)
    if (!user) return this.fail(res, new StatusError(401, 'Unauthorized', 'Unauthorized'))
    record.user = user.username
    const isWatch = ['true', '1'].includes(url.searchParams.get('watch') ?? '')
    if (Date.now() < this.overloadedUntil) return this.tooManyRequests(res, this.overloadRetryAfter)
    if (this.chaos?.faults.has('429') && this.chaos.chance(0.05)) return this.tooManyRequests(res, this.chaos.between(1, 2))
    if (isWatch) return this.serve(req, res, url, user)
    if (this.o.maxInflight > 0 && this.inflight >= this.o.maxInflight) return this.tooManyRequests(res, this.o.retryAfterSeconds)
    this.inflight++
    try {
      await this.serve(req, res, url, user)
    } finally {
      this.inflight--
    }
  }

  private async serve(req: IncomingMessage, res: ServerResponse, url: URL, user: UserInfo): Promise<void> {
    const method = req.method ?? 'GET'
    let bodyRead: Promise<unknown> | undefined
    const body = () => (bodyRead ??= this.body(req))
    if (await this.eventsApi.handle(req, res, url)) return
    const tokens = await this.serviceAccountTokens.route(req, url.pathname)
    if (tokens) return this.json(res, tokens.status, tokens.body)
    for (const route of this.routes) {
      const out = await route({ method, url, user, body })
      if (out) return this.json(res, out.status, out.body)
    }
    const route = this.route(url.pathname)
    if (!route) return this.fail(res, new StatusError(404, 'NotFound', 'the server could not find the requested resource'))
    const { r, ns, name, sub } = route
    const token = (req.headers.authorization ?? '').slice(7)
    if (this.denied.get(token)?.has(r.plural)) {
      const group = r.apiVersion.includes('/') ? r.apiVersion.split('/')[0]! : ''
      const verb = method === 'GET' ? (name ? 'get' : url.searchParams.get('watch') ? 'watch' : 'list') : method === 'POST' ? 'create' : method === 'DELETE' ? 'delete' : method === 'PUT' ? 'update' : 'patch'
      return this.fail(res, new StatusError(403, 'Forbidden', `${r.plural}${group ? `.${group}` : ''}${name ? ` "${name}"` : ''} is forbidden: User "${user.username}" cannot ${verb} resource "${r.plural}" in API group "${group}"${ns ? ` in the namespace "${ns}"` : ''}`))
    }

    if (method === 'GET' && !name) {
      const filter = this.selectors(r, ns, url.searchParams)
      const watching = ['true', '1'].includes(url.searchParams.get('watch') ?? '')
      const badOptions = listOptionErrors(url.searchParams, watching)
      if (badOptions.length) throw invalid('ListOptions', 'meta.k8s.io', '', badOptions)
      if (watching) return this.watch(r, filter, url, res)
      return this.json(res, 200, this.list(r, filter, url.searchParams))
    }
    if (method === 'POST' && !name) {
      const out = await this.createObject(r, ns, (await body()) as Obj, url.searchParams.get('dryRun') === 'All')
      return this.json(res, 201, out.obj, warningHeaders(out.warnings))
    }
    if (!name) return this.fail(res, new StatusError(405, 'MethodNotAllowed', `${method} is not supported on a collection`))
    const k = this.key(r, ns, name)
    const existing = this.store.get(k)
    const notFound = () => new StatusError(404, 'NotFound', `${r.plural} "${name}" not found`, { name, kind: r.plural })
    if (method === 'GET') {
      if (!existing) throw notFound()
      return this.json(res, 200, existing)
    }
    if (method === 'DELETE') {
      if (!existing) throw notFound()
      const immortal = namespaceLifecycle('DELETE', r, ns, existing, name, () => undefined)
      if (immortal) throw immortal
      if (r.plural === 'namespaces') return this.json(res, 200, this.terminateNamespace(k, existing))
      const opts = ((await body()) ?? {}) as DeleteOptions
      const q = url.searchParams.get('gracePeriodSeconds')
      if (q !== null) opts.gracePeriodSeconds = Number(q)
      return this.json(res, 200, this.deleteObject(r, k, existing, opts))
    }
    if (method === 'PATCH') {
      const type = patchType(req.headers['content-type'])
      if (type instanceof StatusError) throw type
      const badOptions = patchOptionErrors(type, url.searchParams)
      if (badOptions.length) throw invalid('PatchOptions', 'meta.k8s.io', '', badOptions)
      const text = await rawBody(req)
      if (type === 'application/apply-patch+yaml') {
        const applied = parseApply(text, r, name, ns)
        if (!existing) {
          const out = await this.createObject(r, ns, applied, url.searchParams.get('dryRun') === 'All')
          return this.json(res, 201, out.obj, warningHeaders(out.warnings))
        }
        return this.json(res, 200, this.update(r, k, existing, { ...(mergePatch(existing, applied) as Obj), metadata: { ...(mergePatch(existing.metadata, applied.metadata) as Obj['metadata']), name, ...(r.namespaced ? { namespace: ns } : {}) } }, sub))
      }
      if (!existing) throw notFound()
      let b: unknown
      try { b = JSON.parse(text) } catch (e) { throw new StatusError(400, 'BadRequest', `error decoding patch: ${(e as Error).message}`) }
      let next: Obj
      try {
        next = type === 'application/json-patch+json' ? jsonpatch.applyPatch(structuredClone(existing), b as jsonpatch.Operation[], true).newDocument
          : type === 'application/strategic-merge-patch+json' ? strategicMergePatch(existing, b) as Obj
          : mergePatch(existing, b) as Obj
      } catch (e) {
        throw new StatusError(422, 'Invalid', `patch failed: ${(e as Error).message}`)
      }
      return this.json(res, 200, this.update(r, k, existing, { ...next, metadata: { ...next.metadata, name, ...(r.namespaced ? { namespace: ns } : {}) } }, sub))
    }
    if (method === 'PUT') {
      if (!existing) throw notFound()
      const b = await body()
      let next: Obj
      {
        next = b as Obj
        const want = next.metadata?.resourceVersion
        if (want && want !== existing.metadata.resourceVersion) {
          throw new StatusError(409, 'Conflict', `Operation cannot be fulfilled on ${r.plural}${r.apiVersion.includes('/') ? `.${r.apiVersion.split('/')[0]}` : ''} "${name}": the object has been modified; please apply your changes to the latest version and try again`, { name, kind: r.plural })
        }
      }
      return this.json(res, 200, this.update(r, k, existing, { ...next, metadata: { ...next.metadata, name, ...(r.namespaced ? { namespace: ns } : {}) } }, sub))
    }
    throw new StatusError(405, 'MethodNotAllowed', `${method} is not supported`)
  }

  private route(path: string): { r: Resource; ns: string | undefined; name: string | undefined; sub: string | undefined } | undefined {
    for (const r of RESOURCES) {
      if (!path.startsWith(`${r.base}/`)) continue
      const parts = path.slice(r.base.length + 1).split('/').map(decodeURIComponent)
      const at = (i: number) => ({ name: parts[i], sub: parts[i + 1] })
      if (r.namespaced) {
        if (parts[0] === r.plural && parts.length === 1) return { r, ns: undefined, name: undefined, sub: undefined }
        if (parts[0] === 'namespaces' && parts[2] === r.plural && parts.length <= 5) {
          const { name, sub } = at(3)
          if (sub !== undefined && !r.subresources?.includes(sub)) return undefined
          return { r, ns: parts[1], name, sub }
        }
      } else if (parts[0] === r.plural && parts.length <= 2) return { r, ns: undefined, name: parts[1], sub: undefined }
    }
    return undefined
  }

  /** Field and label selectors, refused with 400 when they name what the kind cannot select on. */
  private selectors(r: Resource, ns: string | undefined, q: URLSearchParams): Matcher {
    try {
      const fields = parseFieldSelector(r.kind, q.get('fieldSelector') ?? '')
      const labels = parseLabelSelector(q.get('labelSelector') ?? '')
      return (o) => o.kind === r.kind && (!ns || o.metadata.namespace === ns) && fields(o) && labelsMatch(labels, o.metadata.labels)
    } catch (e) {
      if (e instanceof SelectorError) throw new StatusError(400, 'BadRequest', e.message)
      throw e
    }
  }

  /**
   * A list. `resourceVersion=0` is served from the watch cache, which ignores `limit`
   * (apiserver pkg/storage/cacher/cacher.go:740-744); "" is a consistent read from storage
   * (cacher/delegator/interface.go:38-58) and pages with `limit`/`continue` from one snapshot,
   * like etcd. A continue token whose revision was compacted answers 410 with etcd3's message
   * (apiserver pkg/storage/etcd3/errors.go:54-56).
   */
  private list(r: Resource, filter: Matcher, q: URLSearchParams): object {
    const limit = Math.max(0, Number(q.get('limit') ?? '0') || 0)
    const rvParam = q.get('resourceVersion') ?? ''
    const cont = q.get('continue')
    let snap: Snapshot
    let start = 0
    if (cont) {
      const token = decodeContinue(cont)
      const found = token ? this.snapshots.get(token.rv) : undefined
      const expired = !found || Date.now() - found.created > this.o.continueTtlMs || (this.chaos?.faults.has('410') && this.chaos.chance(0.1))
      if (!token) throw new StatusError(400, 'BadRequest', 'continue key is not valid: illegal base64 data')
      if (expired) {
        throw new StatusError(410, 'Expired', 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.')
      }
      snap = found
      start = snap.items.findIndex((i) => i.key > token.start)
      if (start < 0) start = snap.items.length
    } else {
      const items = [...this.store.entries()].filter(([, o]) => filter(o)).map(([key, obj]) => ({ key, obj })).sort((a, b) => (a.key < b.key ? -1 : 1))
      snap = { rv: this.rv, items, created: Date.now() }
    }
    const paged = limit > 0 && rvParam !== '0'
    let size = paged ? limit : snap.items.length
    // A server may return fewer items than the limit (api-concepts "Retrieving large results
    // sets in chunks"); chaos does, with a continue token for the rest.
    if (paged && this.chaos?.faults.has('paging')) size = this.chaos.between(1, limit)
    const page = snap.items.slice(start, start + size)
    const remaining = snap.items.length - start - page.length
    const metadata: Record<string, unknown> = { resourceVersion: String(snap.rv) }
    if (paged && remaining > 0) {
      this.snapshots.set(snap.rv, snap)
      metadata.continue = encodeContinue(snap.rv, page.at(-1)!.key)
      metadata.remainingItemCount = remaining
    }
    return { kind: `${r.kind}${LIST_KIND_SUFFIX}`, apiVersion: r.apiVersion, metadata, items: page.map(({ obj: { apiVersion: _a, kind: _k, ...rest } }) => rest) }
  }

  private async createObject(r: Resource, ns: string | undefined, obj: Obj, dryRun: boolean): Promise<{ obj: Obj; warnings: string[] }> {
    if (!obj || typeof obj !== 'object' || typeof obj.metadata !== 'object') throw new StatusError(400, 'BadRequest', 'the object provided is unrecognized')
    const bad = decodeError(r, obj)
    if (bad) throw bad
    const namespace = r.namespaced ? (ns ?? obj.metadata?.namespace ?? 'default') : undefined
    let candidate: Obj = structuredClone(obj)
    candidate.metadata = { ...candidate.metadata, ...(namespace ? { namespace } : {}) }
    if (!candidate.metadata.name && !candidate.metadata.generateName) throw invalid(r.kind, group(r), '', [{ type: 'Required value', field: 'metadata.name', detail: 'name or generateName is required' }])
    if (r.plural === 'namespaces') candidate = newNamespace(candidate)
    // The built-in admission plugins run first, in the apiserver's order: NamespaceLifecycle,
    // then ServiceAccount, then the webhooks (kubernetes pkg/kubeapiserver/options/plugins.go AllOrderedPlugins).
    const refused = namespaceLifecycle('CREATE', r, namespace, candidate, undefined, (n) => this.get('namespaces', undefined, n))
    if (refused) throw refused
    let warnings: string[] = []
    if (r.plural === 'pods') {
      // Defaulting at decode, before admission (kubernetes pkg/apis/core/v1/defaults.go);
      // the user's status is dropped and the pod starts Pending (pod strategy PrepareForCreate).
      candidate = { ...defaultPod(candidate), status: { phase: 'Pending' } }
      const sa = serviceAccountAdmission(r, candidate, (n, name) => this.get('serviceaccounts', n, name))
      if ('error' in sa) throw sa.error
      candidate = sa.pod
      // Mutating admission runs before the name is generated (the apiserver's BeforeCreate
      // fills generateName, and the uid, after admission): a webhook sees name "" for them.
      if (!this.mutating.empty) {
        const out = await this.mutating.admit({
          object: candidate, namespace: this.get('namespaces', undefined, namespace!), operation: 'CREATE',
          resource: { group: '', version: 'v1', resource: 'pods', kind: 'Pod' }, dryRun,
          userInfo: { username: 'system:serviceaccount:kube-system:replicaset-controller', groups: ['system:serviceaccounts', 'system:serviceaccounts:kube-system', 'system:authenticated'] },
        })
        candidate = out.object
        warnings = out.warnings
      }
    }
    // BeforeCreate (apiserver pkg/registry/rest/create.go): generate the name, then validate
    // the object as admission left it (the annotation total is checked here, after mutation).
    if (!candidate.metadata.name) candidate.metadata.name = `${candidate.metadata.generateName}${randomUUID().slice(0, 5)}`
    const errs = r.plural === 'pods' ? validatePod(candidate) : metaErrors(candidate)
    if (errs.length) throw withWarnings(invalid(r.kind, group(r), candidate.metadata.name, errs), warnings)
    // Rejected after our webhook (a validating webhook, quota): the test's hook.
    const veto = r.plural === 'pods' ? this.afterAdmission?.(candidate) : undefined
    if (veto) throw withWarnings(new StatusError(403, 'Forbidden', veto), warnings)
    const k = this.key(r, namespace, candidate.metadata.name)
    if (this.store.has(k)) throw new StatusError(409, 'AlreadyExists', `${r.plural} "${candidate.metadata.name}" already exists`, { name: candidate.metadata.name, kind: r.plural })
    if (dryRun) return { obj: { ...candidate, apiVersion: r.apiVersion, kind: r.kind }, warnings }
    const stored = this.stamp(r, candidate, undefined)
    this.store.set(k, stored)
    this.emit('ADDED', r, stored, undefined)
    return { obj: stored, warnings }
  }

  /**
   * Updates. Pods: the main resource keeps the old status and refuses spec changes beyond
   * the mutable fields; pods/status takes only the status (kubernetes
   * pkg/registry/core/pod/strategy.go PrepareForUpdate, podStatusStrategy). A terminating
   * object whose last finalizer is removed is deleted (apiserver
   * pkg/registry/generic/registry/store.go Update, shouldDeleteDuringUpdate).
   */
  private update(r: Resource, k: string, existing: Obj, next: Obj, sub: string | undefined): Obj {
    const bad = decodeError(r, next)
    if (bad) throw bad
    if (r.plural === 'pods') {
      if (sub === 'status') next = { ...existing, status: next.status }
      else {
        next = { ...defaultPod(next), status: existing.status }
        const errs = [...podUpdateErrors(existing, next), ...metaErrors(next)]
        if (errs.length) throw invalid(r.kind, group(r), existing.metadata.name, errs)
      }
    } else {
      const errs = metaErrors(next)
      if (errs.length) throw invalid(r.kind, group(r), existing.metadata.name, errs)
    }
    // deletionTimestamp and its grace period are the server's (ObjectMeta update validation).
    next = { ...next, metadata: { ...next.metadata, deletionTimestamp: existing.metadata.deletionTimestamp, deletionGracePeriodSeconds: existing.metadata.deletionGracePeriodSeconds } }
    if (next.metadata.deletionTimestamp === undefined) delete next.metadata.deletionTimestamp
    if (next.metadata.deletionGracePeriodSeconds === undefined) delete next.metadata.deletionGracePeriodSeconds
    const stored = this.stamp(r, next, existing)
    if (stored.metadata.deletionTimestamp && !stored.metadata.finalizers?.length && (stored.metadata.deletionGracePeriodSeconds ?? 0) === 0) {
      this.store.set(k, stored)
      this.remove(r, k, stored)
      return stored
    }
    this.store.set(k, stored)
    this.emit('MODIFIED', r, stored, existing)
    return stored
  }

  /**
   * DELETE of a namespace (kubernetes pkg/registry/core/namespace/storage/storage.go Delete):
   * deletionTimestamp and phase Terminating while the `kubernetes` finalizer is on; the
   * namespace controller then deletes everything in it and the namespace
   * (pkg/controller/namespace/deletion/namespaced_resources_deleter.go). Meanwhile creates in
   * it are refused (NamespaceLifecycle).
   */
  private terminateNamespace(k: string, existing: Obj): Obj {
    if ((existing.status as { phase?: string } | undefined)?.phase === 'Terminating') return existing
    const r = this.resource('namespaces')
    const marked: Obj = { ...existing, metadata: { ...existing.metadata, deletionTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') }, status: { ...(existing.status as object), phase: 'Terminating' } }
    const stored = this.stamp(r, marked, existing)
    this.store.set(k, stored)
    this.emit('MODIFIED', r, stored, existing)
    const name = existing.metadata.name
    this.later(this.o.namespaceCleanupMs, () => {
      for (const [key, obj] of [...this.store]) {
        if (obj.metadata.namespace === name) this.remove(this.resource(key.split('/')[0]!), key, obj)
      }
      const now = this.store.get(k)
      if (now) this.remove(r, k, now)
    })
    return stored
  }

  /**
   * DELETE (apiserver pkg/registry/rest/delete.go:75-175 BeforeDelete, store.go Delete):
   * preconditions (409), then for pods graceful deletion: `deletionTimestamp` now + grace,
   * `deletionGracePeriodSeconds`, the object stays until the kubelet confirms (grace 0). The
   * grace period comes from the options, else the pod's terminationGracePeriodSeconds; a pod
   * not on a node or already finished goes at once (kubernetes pkg/registry/core/pod/strategy.go
   * CheckGracefulDelete). Finalizers keep any object until they are removed.
   */
  private deleteObject(r: Resource, k: string, existing: Obj, opts: DeleteOptions): object {
    const pre = opts.preconditions ?? {}
    const what = `${r.kind}${r.apiVersion.includes('/') ? `.${r.apiVersion.split('/')[0]}` : ''} "${existing.metadata.name}"`
    if (pre.uid && pre.uid !== existing.metadata.uid) {
      throw new StatusError(409, 'Conflict', `Operation cannot be fulfilled on ${what}: the UID in the precondition (${pre.uid}) does not match the UID in record (${existing.metadata.uid}). The object might have been deleted and then recreated`, { name: existing.metadata.name, kind: r.kind })
    }
    if (pre.resourceVersion && pre.resourceVersion !== existing.metadata.resourceVersion) {
      throw new StatusError(409, 'Conflict', `Operation cannot be fulfilled on ${what}: the ResourceVersion in the precondition (${pre.resourceVersion}) does not match the ResourceVersion in record (${existing.metadata.resourceVersion}). The object might have been modified`, { name: existing.metadata.name, kind: r.kind })
    }
    let grace = 0
    if (r.plural === 'pods') {
      const spec = (existing.spec ?? {}) as { nodeName?: string; terminationGracePeriodSeconds?: number }
      const phase = (existing.status as { phase?: string } | undefined)?.phase
      grace = opts.gracePeriodSeconds ?? spec.terminationGracePeriodSeconds ?? 30
      if (grace < 0) grace = 1
      if (!spec.nodeName || phase === 'Succeeded' || phase === 'Failed') grace = 0
      const current = existing.metadata.deletionGracePeriodSeconds
      // Already terminating: only a shorter grace period changes anything (delete.go:123-151).
      if (existing.metadata.deletionTimestamp && current !== undefined && grace >= current) return existing
    }
    const finalizers = existing.metadata.finalizers ?? []
    if (grace === 0 && !finalizers.length) {
      this.remove(r, k, existing)
      return r.plural === 'pods' ? existing : { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name: existing.metadata.name, ...(group(r) ? { group: group(r) } : {}), kind: r.plural, uid: existing.metadata.uid } }
    }
    const marked: Obj = { ...existing, metadata: { ...existing.metadata, deletionTimestamp: new Date(Date.now() + grace * 1000).toISOString().replace(/\.\d+Z$/, 'Z'), deletionGracePeriodSeconds: grace } }
    const stored = this.stamp(r, marked, existing)
    this.store.set(k, stored)
    this.emit('MODIFIED', r, stored, existing)
    if (r.plural === 'pods' && grace > 0) {
      // The kubelet sees the deletionTimestamp, stops the containers and deletes with grace 0.
      const uid = stored.metadata.uid
      this.later(Math.min(this.o.kubeletStopMs, grace * 1000), () => {
        const now = this.store.get(k)
        if (now && now.metadata.uid === uid) this.deleteObject(r, k, now, { gracePeriodSeconds: 0 })
      })
    }
    return stored
  }

  /**
   * A watch (apiserver pkg/endpoints/handlers/get.go:262-300 handleWatch, watch.go:334-346):
   * headers flushed at once; ends after `timeoutSeconds`, or without one after
   * minRequestTimeout × [1, 2) (get.go:277); a resourceVersion older than the history gets one
   * ERROR event with a 410 Expired Status (watch_cache_history.go:237, delivered by the
   * cacher's error watcher, cacher.go:583); bookmarks when `allowWatchBookmarks=true`,
   * every minute and 2 s before the deadline (cache_watcher.go:233-260).
   */
  private watch(r: Resource, filter: Matcher, url: URL, res: ServerResponse): void {
    const q = url.searchParams
    const rvParam = q.get('resourceVersion') ?? ''
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' })
    res.flushHeaders()
    const from = Number(rvParam || '0')
    if (rvParam !== '' && rvParam !== '0') {
      const oldest = this.events.length ? this.events[0]!.rv : this.rv + 1
      const tooOld = this.events.length ? from < oldest - 1 : from < this.rv
      if (tooOld || (this.chaos?.faults.has('410') && this.chaos.chance(0.1))) {
        this.write(res, { type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from} (${oldest - 1})`, reason: 'Expired', code: 410 } })
        res.end()
        return
      }
    }
    const w: Watcher = { resource: r.plural, filter, res, bookmarks: q.get('allowWatchBookmarks') === 'true', kind: r.kind, apiVersion: r.apiVersion }
    if (rvParam !== '' && rvParam !== '0') {
      for (const ev of this.events) if (ev.resource === r.plural && ev.rv > from) this.deliver(w, ev)
    } else {
      // "Start at most recent" / "start at any": synthetic ADDED for what exists now.
      for (const o of this.store.values()) if (filter(o)) this.write(res, { type: 'ADDED', object: o })
    }
    this.watchers.add(w)
    const asked = Number(q.get('timeoutSeconds') ?? '0')
    let timeoutMs = asked > 0 ? asked * 1000 : this.o.minRequestTimeoutSeconds * 1000 * (Math.random() + 1)
    // Chaos: a short --min-request-timeout, so watches end early and are resumed.
    if (this.chaos?.faults.has('watch-end')) timeoutMs = Math.min(timeoutMs, this.chaos.between(2_000, 20_000))
    const end = this.later(timeoutMs, () => res.end())
    const bookmark = () => this.write(res, { type: 'BOOKMARK', object: { kind: w.kind, apiVersion: w.apiVersion, metadata: { resourceVersion: String(this.rv) } } })
    const period = this.chaos?.faults.has('bookmark') ? this.chaos.between(500, 3_000) : this.o.bookmarkFrequencyMs
    const ticker = w.bookmarks ? setInterval(bookmark, period) : undefined
    ticker?.unref()
    const last = w.bookmarks && timeoutMs > 2_000 ? this.later(timeoutMs - 2_000, bookmark) : undefined
    res.on('close', () => {
      this.watchers.delete(w)
      clearTimeout(end)
      this.timers.delete(end)
      if (ticker) clearInterval(ticker)
      if (last) { clearTimeout(last); this.timers.delete(last) }
    })
  }
}

interface DeleteOptions { gracePeriodSeconds?: number; preconditions?: { uid?: string; resourceVersion?: string }; propagationPolicy?: string }

function group(r: Resource): string {
  return r.apiVersion.includes('/') ? r.apiVersion.split('/')[0]! : ''
}

function withWarnings(e: StatusError, warnings: string[]): StatusError {
  return new StatusError(e.code, e.reason, e.message, e.details, { ...e.headers, ...warningHeaders(warnings) })
}

/** The continue token (apiserver pkg/storage/continue.go:83-93 EncodeContinue): unpadded base64url JSON of the next key. */
function encodeContinue(rv: number, key: string): string {
  return Buffer.from(JSON.stringify({ v: 'meta.k8s.io/v1', rv, start: `${key}\u0000` })).toString('base64url')
}
function decodeContinue(token: string): { rv: number; start: string } | undefined {
  try {
    const t = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as { v?: string; rv?: number; start?: string }
    return t.v === 'meta.k8s.io/v1' && typeof t.rv === 'number' && typeof t.start === 'string' ? { rv: t.rv, start: t.start.replace(/\u0000$/, '') } : undefined
  } catch {
    return undefined
  }
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

async function rawBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of req) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * Server-side apply, as far as this stand-in goes: the YAML (or JSON) object, of the URL's
 * kind and name (handlers/patch.go applyPatcher), merged into the live object or created.
 * Field ownership (managedFields, conflicts between managers, 409) is not kept: nothing in
 * this project applies (README, "The Kubernetes API stand-in").
 */
function parseApply(text: string, r: Resource, name: string, ns: string | undefined): Obj {
  let obj: Obj
  try { obj = parseYaml(text) as Obj } catch (e) { throw new StatusError(400, 'BadRequest', `error decoding YAML: ${(e as Error).message}`) }
  if (!obj || typeof obj !== 'object' || typeof obj.metadata !== 'object') throw new StatusError(400, 'BadRequest', 'the object provided is unrecognized')
  if (obj.kind !== r.kind || obj.apiVersion !== r.apiVersion) throw new StatusError(400, 'BadRequest', `the kind or apiVersion of the applied object (${obj.apiVersion}, Kind=${obj.kind}) does not match the resource (${r.apiVersion}, Kind=${r.kind})`)
  if (obj.metadata.name && obj.metadata.name !== name) throw new StatusError(400, 'BadRequest', `the name of the object (${obj.metadata.name}) does not match the name on the URL (${name})`)
  return { ...obj, metadata: { ...obj.metadata, name, ...(r.namespaced ? { namespace: ns } : {}) } }
}

/**
 * A strategic merge patch (apimachinery pkg/util/strategicpatch): a merge patch whose lists
 * of named items (containers, volumes, env: patchMergeKey "name") merge by name and accept
 * `$patch: delete`; other lists are replaced.
 */
function strategicMergePatch(target: unknown, patch: unknown): unknown {
  const named = (xs: unknown[]) => xs.every((x) => typeof x === 'object' && x !== null && typeof (x as { name?: unknown }).name === 'string')
  if (Array.isArray(patch) && Array.isArray(target) && named(patch) && named(target)) {
    const out = [...target] as Array<Record<string, unknown>>
    for (const item of patch as Array<Record<string, unknown>>) {
      const at = out.findIndex((x) => x.name === item.name)
      if (item.$patch === 'delete') { if (at >= 0) out.splice(at, 1); continue }
      if (at >= 0) out[at] = strategicMergePatch(out[at], item) as Record<string, unknown>
      else out.push(item)
    }
    return out
  }
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch
  const out: Record<string, unknown> = typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {}
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = strategicMergePatch(out[k], v)
  }
  return out
}
