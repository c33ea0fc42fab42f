// A list+watch cache that behaves like client-go's reflector (tools/cache/reflector.go at
// kubernetes/client-go 32ce75a, cited as reflector.go:LINE), because @kubernetes/client-node
// 2.0.1's informer does none of this: it lists with resourceVersion="" (a quorum read), asks
// for no bookmarks and no server timeout, retries every 2 s whatever the server says, and
// reports itself connected before its list has succeeded.
//
// What it does, as client-go does:
// - list at resourceVersion "0" (served from the watch cache) the first time, at the last seen
//   version afterwards, and at "" once that version is gone (reflector.go:1116-1132, 720-729);
//   pages of 500 with `continue` unless a specific version is asked, falling back to one full
//   list when a continue token expires (tools/pager/pager.go:31, 114-121, 156-162;
//   reflector.go:690-714);
// - watch from the list's resourceVersion with allowWatchBookmarks and a timeoutSeconds drawn
//   from [min, 2*min] so watches of many nodes do not end together (reflector.go:55-58,
//   588-597); bookmarks and every event move the resume version (reflector.go:1058-1060);
// - a watch that ends is started again from that version; an ERROR event or 410 with reason
//   Expired/Gone means relist (reflector.go:647-651, 1010-1011, 1154-1160); a watch that ends
//   in under a second with no event is an error (reflector.go:1090-1091);
// - a watch that fails to start (connection refused, 429) is retried after a back-off, never
//   left dead (reflector.go:603-614, 652-657, 1195-1205);
// - every list+watch round is separated by an exponential back-off: 800 ms doubling to 30 s
//   with jitter 1.0 (so [30 s, 60 s) at the cap), reset after 2 minutes without one
//   (reflector.go:59-67, 317-336, 426-432); a 429 or 5xx with Retry-After waits at least
//   that long (rest/with_retry.go:309-318, which client-go's rest client honours per request);
// - `synced` turns true only once a list has succeeded and stays true after (HasSynced).
import type { IncomingMessage } from 'node:http'
import type { Logger } from 'pino'

export interface KubeObject {
  metadata?: { name?: string; namespace?: string; uid?: string; resourceVersion?: string }
}

/** A non-2xx answer or an ERROR watch event, as the API's Status describes it. */
export class ApiError extends Error {
  override readonly name = 'ApiError'
  readonly status: number
  readonly reason: string
  /** From a Retry-After header (seconds), in ms; 0 when none. */
  readonly retryAfterMs: number
  constructor(status: number, reason: string, message: string, retryAfterMs = 0) {
    super(`${status} ${reason}: ${message}`)
    this.status = status
    this.reason = reason
    this.retryAfterMs = retryAfterMs
  }
}

/** reflector.go:1154-1160: 410 with reason Expired, or Gone from servers before 1.18. */
export function isExpired(e: unknown): boolean {
  return e instanceof ApiError && (e.status === 410 || e.reason === 'Expired' || e.reason === 'Gone')
}

/** reflector.go:1195-1205: connection refused or 429 is worth another watch at the same version. */
export function isWatchRetriable(e: unknown): boolean {
  if (e instanceof ApiError) return e.status === 429
  return (e as NodeJS.ErrnoException)?.code === 'ECONNREFUSED'
}

export interface BackoffOptions {
  initialMs?: number
  capMs?: number
  factor?: number
  jitter?: number
  resetMs?: number
  rand?: () => number
  now?: () => number
}

/**
 * apimachinery wait.Backoff as the reflector configures it (reflector.go:59-67, 317-336):
 * each delay is the current step plus up to `jitter` times itself; the step doubles up to the
 * cap; after `resetMs` without a delay the next one starts from the beginning again.
 */
export class Backoff {
  private readonly o: Required<BackoffOptions>
  private step: number
  private last = -Infinity
  constructor(o: BackoffOptions = {}) {
    this.o = { initialMs: 800, capMs: 30_000, factor: 2, jitter: 1, resetMs: 120_000, rand: Math.random, now: Date.now, ...o }
    this.step = this.o.initialMs
  }

  /** The next delay in ms, never shorter than what the server asked for (Retry-After). */
  next(retryAfterMs = 0): number {
    const now = this.o.now()
    if (now - this.last > this.o.resetMs) this.step = this.o.initialMs
    this.last = now
    const base = this.step
    this.step = Math.min(this.step * this.o.factor, this.o.capMs)
    return Math.max(Math.round(base + this.o.rand() * this.o.jitter * base), retryAfterMs)
  }
}

/** reflector.go:588: a whole number of seconds in [min, 2*min]. */
export function watchTimeoutSeconds(minSeconds: number, rand: () => number = Math.random): number {
  return Math.floor(minSeconds + rand() * minSeconds)
}

export interface ListQuery { resourceVersion: string; limit: number; continue?: string }
export interface ListPage<T> { items: T[]; resourceVersion: string; continue: string }
export interface WatchQuery { resourceVersion: string; timeoutSeconds: number }
export interface WatchEvent<T> { type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR'; object: T & { code?: number; reason?: string; message?: string } }

export interface ListerWatcher<T> {
  list(q: ListQuery): Promise<ListPage<T>>
  /** Resolves once the server answered 200; the events then, until the server ends the watch. */
  watch(q: WatchQuery, signal: AbortSignal): Promise<AsyncIterable<WatchEvent<T>>>
}

/** One HTTP GET against the API: the response, or an ApiError for a non-2xx answer. */
export type ApiGet = (pathAndQuery: string, signal?: AbortSignal) => Promise<IncomingMessage>

async function readAll(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of res) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/** Turns a non-2xx response into an ApiError with the Status's reason and Retry-After. */
export async function checkResponse(res: IncomingMessage): Promise<IncomingMessage> {
  const code = res.statusCode ?? 0
  if (code >= 200 && code < 300) return res
  const body = await readAll(res).catch(() => '')
  let status: { reason?: string; message?: string } = {}
  try { status = JSON.parse(body) as typeof status } catch { /* not a Status */ }
  const seconds = Number(res.headers['retry-after'])
  const retryAfterMs = (code === 429 || code >= 500) && Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0
  throw new ApiError(code, status.reason ?? 'Unknown', status.message ?? (body.slice(0, 200) || `HTTP ${code}`), retryAfterMs)
}

/** Newline-delimited JSON watch events (the API's watch encoding for application/json). */
async function* watchEvents<T>(res: IncomingMessage): AsyncIterable<WatchEvent<T>> {
  let buf = ''
  try {
    for await (const chunk of res) {
      buf += (chunk as Buffer).toString('utf8')
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim()
        buf = buf.slice(nl + 1)
        if (line) yield JSON.parse(line) as WatchEvent<T>
      }
    }
  } catch (e) {
    // A connection cut mid-stream ends the watch like EOF does in client-go's StreamWatcher;
    // the reflector then watches again from the last version.
    if ((e as NodeJS.ErrnoException).code !== 'ECONNRESET' && (e as Error).name !== 'AbortError' && (e as Error).message !== 'aborted') throw e
  }
}

/** List+watch of one collection over the API's HTTP interface. */
export function httpListerWatcher<T>(get: ApiGet, path: string, fieldSelector?: string): ListerWatcher<T> {
  const q = (params: Record<string, string | undefined>) => {
    const s = new URLSearchParams()
    if (fieldSelector) s.set('fieldSelector', fieldSelector)
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') s.set(k, v)
    return `${path}?${s}`
  }
  return {
    async list(o) {
      const res = await checkResponse(await get(q({ resourceVersion: o.resourceVersion, limit: o.limit ? String(o.limit) : undefined, continue: o.continue })))
      const body = JSON.parse(await readAll(res)) as { items?: T[]; metadata?: { resourceVersion?: string; continue?: string } }
      return { items: body.items ?? [], resourceVersion: body.metadata?.resourceVersion ?? '', continue: body.metadata?.continue ?? '' }
    },
    async watch(o, signal) {
      const res = await checkResponse(await get(q({ watch: '1', resourceVersion: o.resourceVersion, allowWatchBookmarks: 'true', timeoutSeconds: String(o.timeoutSeconds) }), signal))
      return watchEvents<T>(res)
    },
  }
}

export interface ReflectorOptions<T> {
  name: string
  log: Logger
  /** reflector.go:57: 5 minutes. */
  minWatchTimeoutSeconds?: number
  backoff?: Backoff
  rand?: () => number
  /**
   * What the store keeps of each listed or watched object (client-go's SetTransform,
   * shared_informer.go: e.g. TransformStripManagedFields); applied before the callbacks too.
   */
  transform?: (obj: T) => T
  onUpsert?: (obj: T) => void
  onDelete?: (obj: T) => void
}

const PAGE_SIZE = 500

const key = (o: KubeObject) => `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`

export class Reflector<T extends KubeObject> {
  private readonly lw: ListerWatcher<T>
  private readonly o: ReflectorOptions<T>
  private readonly log: Logger
  private readonly backoff: Backoff
  private readonly store = new Map<string, T>()
  private lastSyncResourceVersion = ''
  private lastSyncResourceVersionUnavailable = false
  private hasSynced = false
  private readonly abort = new AbortController()
  private running: Promise<void> | undefined
  private wake: (() => void) | undefined
  /** Counters for tests and metrics: lists done (pages), watches started. */
  readonly stats = { lists: 0, watches: 0, relists: 0 }

  constructor(lw: ListerWatcher<T>, o: ReflectorOptions<T>) {
    this.lw = lw
    this.o = o
    this.log = o.log.child({ reflector: o.name })
    this.backoff = o.backoff ?? new Backoff()
  }

  get synced(): boolean { return this.hasSynced }
  get resourceVersion(): string { return this.lastSyncResourceVersion }
  get(namespace: string, name: string): T | undefined { return this.store.get(`${namespace}/${name}`) }
  list(): T[] { return [...this.store.values()] }

  start(): void {
    this.running ??= this.run()
  }

  async stop(): Promise<void> {
    this.abort.abort()
    this.wake?.()
    await this.running
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms)
      this.wake = () => { clearTimeout(t); resolve() }
    })
  }

  private get stopped(): boolean { return this.abort.signal.aborted }

  /** reflector.go:426-432: list+watch, forever, a back-off between rounds. */
  private async run(): Promise<void> {
    while (!this.stopped) {
      let retryAfterMs = 0
      try {
        await this.listAndWatch()
      } catch (e) {
        if (this.stopped) break
        retryAfterMs = (e as ApiError).retryAfterMs ?? 0
        this.log.warn({ err: (e as Error).message }, 'list/watch failed; backing off (lookups fall back to GET)')
      }
      if (this.stopped) break
      await this.sleep(this.backoff.next(retryAfterMs))
    }
  }

  /** reflector.go:1116-1132 */
  private relistResourceVersion(): string {
    if (this.lastSyncResourceVersionUnavailable) return ''
    return this.lastSyncResourceVersion || '0'
  }

  private async listAndWatch(): Promise<void> {
    await this.listAll()
    await this.watchLoop()
  }

  private async listAll(): Promise<void> {
    let page: { items: T[]; resourceVersion: string }
    try {
      page = await this.pagedList(this.relistResourceVersion())
    } catch (e) {
      if (!isExpired(e)) throw e
      // reflector.go:720-729: the version is gone; list at the newest ("") at once.
      this.lastSyncResourceVersionUnavailable = true
      page = await this.pagedList(this.relistResourceVersion())
    }
    this.lastSyncResourceVersionUnavailable = false
    this.replace(page.items)
    this.lastSyncResourceVersion = page.resourceVersion
    if (!this.hasSynced) this.log.info({ count: this.store.size, resourceVersion: page.resourceVersion }, 'cache synced')
    this.hasSynced = true
  }

  /** tools/pager/pager.go ListWithAlloc as the reflector drives it. */
  private async pagedList(resourceVersion: string): Promise<{ items: T[]; resourceVersion: string }> {
    // reflector.go:690-714: a list at a specific version is not paged (served from the watch cache).
    const limit = resourceVersion !== '' && resourceVersion !== '0' ? 0 : PAGE_SIZE
    const items: T[] = []
    let listRv: string | undefined
    let query: ListQuery = { resourceVersion, limit }
    for (;;) {
      let page: ListPage<T>
      try {
        this.stats.lists++
        page = await this.lw.list(query)
      } catch (e) {
        // pager.go:114-121: an expired continue token: one full list at the asked version.
        if (!isExpired(e) || !query.continue) throw e
        this.stats.lists++
        const full = await this.lw.list({ resourceVersion, limit: 0 })
        return { items: full.items, resourceVersion: full.resourceVersion }
      }
      listRv ??= page.resourceVersion
      items.push(...page.items)
      if (!page.continue) return { items, resourceVersion: listRv }
      // pager.go:156-162: continue pages carry no resourceVersion (the API refuses both).
      query = { resourceVersion: '', limit, continue: page.continue }
    }
  }

  /** The store becomes exactly the list: new and changed objects upserted, missing ones deleted. */
  private replace(items: T[]): void {
    const seen = new Set<string>()
    for (const listed of items) {
      const item = this.o.transform ? this.o.transform(listed) : listed
      const k = key(item)
      seen.add(k)
      const old = this.store.get(k)
      this.store.set(k, item)
      if (old?.metadata?.resourceVersion !== item.metadata?.resourceVersion) this.o.onUpsert?.(item)
    }
    for (const [k, old] of this.store) {
      if (!seen.has(k)) { this.store.delete(k); this.o.onDelete?.(old) }
    }
  }

  /** reflector.go:560-665 */
  private async watchLoop(): Promise<void> {
    const minWatch = this.o.minWatchTimeoutSeconds ?? 300
    for (;;) {
      if (this.stopped) return
      const started = Date.now()
      let events: AsyncIterable<WatchEvent<T>>
      try {
        this.stats.watches++
        events = await this.lw.watch({ resourceVersion: this.lastSyncResourceVersion, timeoutSeconds: watchTimeoutSeconds(minWatch, this.o.rand) }, this.abort.signal)
      } catch (e) {
        if (this.stopped) return
        if (isWatchRetriable(e)) {
          this.log.debug({ err: (e as Error).message }, 'watch failed to start; backing off')
          await this.sleep(this.backoff.next((e as ApiError).retryAfterMs ?? 0))
          continue
        }
        if (isExpired(e)) { this.stats.relists++; return }
        throw e
      }
      let count = 0
      try {
        for await (const ev of events) {
          count++
          this.handle(ev)
        }
      } catch (e) {
        if (this.stopped) return
        if (isExpired(e)) {
          // reflector.go:647-651: relist at the last version we saw (at least as fresh).
          this.log.debug({ err: (e as Error).message }, 'watch expired; relisting')
          this.stats.relists++
          return
        }
        if (e instanceof ApiError && e.status === 429) {
          await this.sleep(this.backoff.next(e.retryAfterMs))
          continue
        }
        throw e
      }
      if (this.stopped) return
      if (Date.now() - started < 1000 && count === 0) throw new Error('very short watch: the server closed it at once with no event')
    }
  }

  private handle(ev: WatchEvent<T>): void {
    if (ev.type === 'ERROR') {
      const s = ev.object
      throw new ApiError(s.code ?? 500, s.reason ?? 'Unknown', s.message ?? 'watch error')
    }
    const rv = ev.object.metadata?.resourceVersion
    if (ev.type === 'BOOKMARK') {
      if (rv) this.lastSyncResourceVersion = rv
      return
    }
    const k = key(ev.object)
    if (ev.type === 'DELETED') {
      const old = this.store.get(k)
      this.store.delete(k)
      if (old) this.o.onDelete?.(ev.object)
    } else if (ev.type === 'ADDED' || ev.type === 'MODIFIED') {
      const obj = this.o.transform ? this.o.transform(ev.object) : ev.object
      this.store.set(k, obj)
      this.o.onUpsert?.(obj)
    }
    if (rv) this.lastSyncResourceVersion = rv
  }
}
