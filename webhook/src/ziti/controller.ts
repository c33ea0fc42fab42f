// The webhook's connection to the OpenZiti controller's Edge management API (facts:
// ../shared/ziti-controller-api.md). One API session for the whole process, not one login per
// admission (ziti-k8s-agent logs in on every request and never logs out): a 401 means the
// session expired (sliding 30 min) or was revoked, so log in again once; a second 401 means
// the credential itself lacks the permission. 429 and 503 are retried with back-off, and
// every call ends by its caller's deadline, so an admission stays inside its timeout.
import { Agent, request } from 'node:https'
import type { Logger } from 'pino'
import type { ControllerMetrics } from './metrics.ts'
import type { ControllerCredential } from './credential.ts'
import { inList } from './zitiql.ts'

export const MANAGEMENT_BASE = '/edge/management/v1'
/** The controller clamps `limit` to 500 (controller/models/base_model.go). */
const PAGE = 500

export type ControllerFailure = 'unreachable' | 'credential-refused' | 'busy' | 'deadline' | 'rejected'

/** A controller call that did not succeed, with what an operator needs to act on it. */
export class ControllerError extends Error {
  override readonly name = 'ControllerError'
  readonly failure: ControllerFailure
  readonly status: number | undefined
  readonly code: string | undefined
  constructor(failure: ControllerFailure, message: string, status?: number, code?: string) {
    super(message)
    this.failure = failure
    this.status = status
    this.code = code
  }
}

export interface IdentitySpec {
  name: string
  roleAttributes: string[]
  tags: Record<string, string>
}

export interface IdentityDetail {
  id: string
  name: string
  roleAttributes: string[]
  tags: Record<string, unknown>
  createdAt: string
  enrollment?: { ott?: { jwt?: string; expiresAt?: string } }
}

/** A service the identity may dial, with the configs interception is derived from. */
export interface DialableService {
  id: string
  name: string
  /** Config type name -> data (intercept.v1, proxy.v1). */
  config: Record<string, unknown>
}

interface Reply { status: number; body: unknown; headers: Record<string, string | string[] | undefined> }

export interface ControllerClientOptions {
  /** Base URL, e.g. https://ziti-controller.ziti.svc:1280 (the management API is under it). */
  url: string
  /** PEM bundle the controller's serving certificate chains to. */
  ca: string
  credential: ControllerCredential
  metrics: ControllerMetrics
  log: Logger
  /** Upper bound of one HTTP attempt; the caller's deadline may cut it shorter. */
  attemptTimeoutMs?: number
  /** Attempts per call for 429/503/connection errors (the deadline still wins). */
  maxAttempts?: number
}

export class ControllerClient {
  private readonly agent: Agent
  private readonly base: URL
  private token: string | undefined
  private login: Promise<string> | undefined
  private readonly attemptTimeoutMs: number
  private readonly maxAttempts: number

  private readonly opts: ControllerClientOptions

  constructor(opts: ControllerClientOptions) {
    this.opts = opts
    this.base = new URL(opts.url)
    this.attemptTimeoutMs = opts.attemptTimeoutMs ?? 4000
    this.maxAttempts = opts.maxAttempts ?? 4
    const cred = opts.credential
    // Cert credential: the client certificate is presented on every connection (the
    // controller authenticates the login by the TLS handshake; later calls by the token).
    this.agent = new Agent({ keepAlive: true, maxSockets: 16, ca: opts.ca, ...(cred.kind === 'cert' ? { cert: cred.cert, key: cred.key } : {}) })
  }

  close(): void {
    this.agent.destroy()
  }

  // ---- identities ----

  async createIdentity(spec: IdentitySpec, deadline: number): Promise<string> {
    // `type` is required and ignored (stored as Default); isAdmin is required.
    const r = await this.call('identity.create', 'POST', '/identities', deadline, { body: { name: spec.name, type: 'Default', isAdmin: false, enrollment: { ott: true }, roleAttributes: spec.roleAttributes, tags: spec.tags } })
    if (r.status !== 201) throw this.rejected('identity.create', r)
    const id = (r.body as { data?: { id?: unknown } }).data?.id
    if (typeof id !== 'string') throw new ControllerError('rejected', 'the controller created an identity but returned no id')
    return id
  }

  async getIdentity(id: string, deadline: number): Promise<IdentityDetail | undefined> {
    const r = await this.call('identity.read', 'GET', `/identities/${encodeURIComponent(id)}`, deadline)
    if (r.status === 404) return undefined
    if (r.status !== 200) throw this.rejected('identity.read', r)
    return (r.body as { data: IdentityDetail }).data
  }

  /** True when it was deleted, false when it was already gone. */
  async deleteIdentity(id: string, deadline: number): Promise<boolean> {
    const r = await this.call('identity.delete', 'DELETE', `/identities/${encodeURIComponent(id)}`, deadline)
    if (r.status === 404) return false
    if (r.status !== 200) throw this.rejected('identity.delete', r)
    return true
  }

  listIdentities(filter: string, deadline: number): Promise<IdentityDetail[]> {
    return this.listAll<IdentityDetail>('identity.list', '/identities', { filter }, deadline)
  }

  /**
   * Services the identity may Dial, by service policy, with their intercept.v1 and proxy.v1
   * configs. Two calls that a non-admin credential with `service.read` and `config.read` may
   * make; `GET /services?asIdentity=` would do it in one but needs an admin
   * (SecurityCtx.MasqueradeAsIdentity), and the client API needs the pod's own certificate.
   * Per-identity service-config overrides are not applied (they are rare; README).
   */
  async dialableServices(identityId: string, deadline: number): Promise<DialableService[]> {
    const services = await this.listAll<{ id: string; name: string; configs?: string[] }>('identity.services', `/identities/${encodeURIComponent(identityId)}/services`, { policyType: 'dial' }, deadline)
    const configIds = [...new Set(services.flatMap((s) => s.configs ?? []))]
    const configs = new Map<string, { type: string; data: unknown }>()
    // ZitiQL `id in [...]`, in chunks that keep the URL short.
    for (let i = 0; i < configIds.length; i += 100) {
      const chunk = configIds.slice(i, i + 100)
      const list = await this.listAll<{ id: string; configType?: { name?: string }; data: unknown }>('config.list', '/configs', { filter: `id in ${inList(chunk)}` }, deadline)
      for (const c of list) if (c.configType?.name) configs.set(c.id, { type: c.configType.name, data: c.data })
    }
    return services.map((s) => {
      const config: Record<string, unknown> = {}
      for (const id of s.configs ?? []) {
        const c = configs.get(id)
        if (c && (c.type === 'intercept.v1' || c.type === 'proxy.v1')) config[c.type] = c.data
      }
      return { id: s.id, name: s.name, config }
    })
  }

  // ---- transport ----

  private async listAll<T>(op: string, path: string, query: Record<string, string>, deadline: number): Promise<T[]> {
    const out: T[] = []
    for (let offset = 0; ; offset += PAGE) {
      const r = await this.call(op, 'GET', path, deadline, { query: { ...query, limit: String(PAGE), offset: String(offset) } })
      if (r.status !== 200) throw this.rejected(op, r)
      const body = r.body as { data?: T[]; meta?: { pagination?: { totalCount?: number } } }
      const page = body.data ?? []
      out.push(...page)
      const total = body.meta?.pagination?.totalCount ?? out.length
      if (page.length === 0 || out.length >= total) return out
    }
  }

  private rejected(op: string, r: Reply): ControllerError {
    const err = (r.body as { error?: { code?: string; message?: string; cause?: { field?: string; reason?: string } } })?.error
    const cause = err?.cause?.field ? ` (${err.cause.field}: ${err.cause.reason ?? 'invalid'})` : ''
    return new ControllerError('rejected', `${op}: HTTP ${r.status} ${err?.code ?? ''} ${err?.message ?? ''}${cause}`.trim(), r.status, err?.code)
  }

  /** One API call with session handling and bounded retries. */
  private async call(op: string, method: string, path: string, deadline: number, extra: { query?: Record<string, string>; body?: unknown } = {}): Promise<Reply> {
    let relogged = false
    for (let attempt = 1; ; attempt++) {
      const token = await this.session(deadline)
      let r: Reply
      try {
        r = await this.send(op, method, MANAGEMENT_BASE + path, deadline, { ...extra, token })
      } catch (e) {
        if (!(e instanceof ControllerError) || e.failure !== 'unreachable' || attempt >= this.maxAttempts) throw e
        await this.backoff(attempt, deadline, e)
        continue
      }
      if (r.status === 401) {
        // Expired or revoked session: log in again, once. A fresh session refused again means
        // the credential lacks the permission (the controller answers 401 for both).
        if (this.token === token) this.token = undefined
        if (relogged) throw new ControllerError('credential-refused', `the controller refused the webhook's credential for ${op} (HTTP 401 after a fresh login): it lacks the permission, or was disabled`, 401, errorCode(r))
        relogged = true
        continue
      }
      if (r.status === 429 || r.status === 503) {
        const e = new ControllerError('busy', `the controller answered ${op} with HTTP ${r.status} ${errorCode(r) ?? ''} ${attempt} time(s)`.trim(), r.status, errorCode(r))
        if (attempt >= this.maxAttempts) throw e
        await this.backoff(attempt, deadline, e)
        continue
      }
      return r
    }
  }

  private async backoff(attempt: number, deadline: number, cause: ControllerError): Promise<void> {
    // 100 ms, 200 ms, 400 ms ... with jitter; never past the deadline.
    const wait = Math.min(100 * 2 ** (attempt - 1) * (0.75 + Math.random() / 2), 2000)
    if (Date.now() + wait >= deadline) throw new ControllerError(cause.failure === 'busy' ? 'busy' : cause.failure, `${cause.message}; no time left to retry`, cause.status, cause.code)
    await new Promise((r) => setTimeout(r, wait))
  }

  /** The current session token; concurrent callers share one login. */
  private session(deadline: number): Promise<string> {
    if (this.token) return Promise.resolve(this.token)
    this.login ??= this.authenticate(deadline).then(
      (t) => { this.token = t; this.login = undefined; return t },
      (e: unknown) => { this.login = undefined; throw e },
    )
    return this.login
  }

  private async authenticate(deadline: number): Promise<string> {
    const cred = this.opts.credential
    const method = cred.kind === 'cert' ? 'cert' : 'password'
    const body = cred.kind === 'updb' ? { username: cred.username, password: cred.password } : {}
    for (let attempt = 1; ; attempt++) {
      let r: Reply
      try {
        r = await this.send('authenticate', 'POST', `${MANAGEMENT_BASE}/authenticate`, deadline, { query: { method }, body })
      } catch (e) {
        this.opts.metrics.logins.inc({ result: 'error' })
        if (!(e instanceof ControllerError) || e.failure !== 'unreachable' || attempt >= this.maxAttempts) throw e
        await this.backoff(attempt, deadline, e)
        continue
      }
      if ((r.status === 429 || r.status === 503) && attempt < this.maxAttempts) {
        await this.backoff(attempt, deadline, new ControllerError('busy', `the controller answered authenticate with HTTP ${r.status}`, r.status))
        continue
      }
      const token = (r.body as { data?: { token?: unknown } })?.data?.token ?? r.headers['zt-session']
      if (r.status !== 200 || typeof token !== 'string') {
        this.opts.metrics.logins.inc({ result: 'refused' })
        throw new ControllerError(r.status === 429 || r.status === 503 ? 'busy' : 'credential-refused', `the controller refused the webhook's ${method} login: HTTP ${r.status} ${errorCode(r) ?? ''}`.trim(), r.status, errorCode(r))
      }
      this.opts.metrics.logins.inc({ result: 'ok' })
      this.opts.log.info({ controller: this.base.origin, method }, 'logged in to the OpenZiti controller')
      return token
    }
  }

  private send(op: string, method: string, path: string, deadline: number, opts: { query?: Record<string, string>; body?: unknown; token?: string }): Promise<Reply> {
    const url = new URL(path, this.base)
    for (const [k, v] of Object.entries(opts.query ?? {})) url.searchParams.set(k, v)
    const budget = Math.min(this.attemptTimeoutMs, deadline - Date.now())
    if (budget <= 0) return Promise.reject(new ControllerError('deadline', `no time left for ${op} (the admission deadline passed)`))
    const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body)
    const started = process.hrtime.bigint()
    const done = (status: string) => {
      this.opts.metrics.requests.inc({ op, status })
      this.opts.metrics.duration.observe({ op }, Number(process.hrtime.bigint() - started) / 1e9)
    }
    return new Promise<Reply>((resolve, reject) => {
      const req = request(url, {
        method, agent: this.agent, timeout: budget,
        headers: { accept: 'application/json', ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}), ...(opts.token ? { 'zt-session': opts.token } : {}) },
      }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let body: unknown = undefined
          try { body = text ? JSON.parse(text) : undefined } catch { body = { error: { message: text.slice(0, 200) } } }
          done(String(res.statusCode))
          resolve({ status: res.statusCode ?? 0, body, headers: res.headers })
        })
        res.on('error', (e) => { done('error'); reject(new ControllerError('unreachable', `${op}: ${e.message}`)) })
      })
      req.on('timeout', () => req.destroy(new Error(`no answer within ${budget} ms`)))
      req.on('error', (e: NodeJS.ErrnoException) => {
        done('error')
        reject(new ControllerError('unreachable', `cannot reach the OpenZiti controller at ${this.base.origin} (${op}): ${e.code ?? ''} ${e.message}`.replace(/\s+/g, ' ').trim()))
      })
      req.end(payload)
    })
  }
}

function errorCode(r: Reply): string | undefined {
  return (r.body as { error?: { code?: string } } | undefined)?.error?.code
}
