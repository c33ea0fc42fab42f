// Stand-in for the OpenZiti controller's Edge management and client APIs, as far as ziti-cni
// and the tunneler use them. Every behaviour follows ../shared/ziti-controller-api.md, which was
// read from openziti/ziti @804f55a (ZT), openziti/edge-api @87257de (EA) and
// openziti/foundation (FND); the section of that sheet is cited as [§n], the source file as
// [ZT path]. What a real controller would refuse, this one refuses the same way:
//   - envelopes {data, meta} and {error:{code,message,requestId,cause?}} [§2, ZT routes/base_router.go]
//   - paging: limit default 10, clamped to 500, 0 -> 10; offset <= 100000; totalCount [§2, ZT models/base_model.go]
//   - ZitiQL strings in double quotes only, with \" \\ escapes; bad filters are 400 INVALID_FILTER [§4, ZitiQl.g4]
//   - zt-session tokens with a sliding expiry (30 m default), 401 UNAUTHORIZED after it, and
//     401 for a caller lacking the entity permission (IsAllowed -> errorz.NewUnauthorized,
//     ZT controller/env/appenv.go:1010) [§3]
//   - 429 / 503 on demand (a test's failure injection) [§2]
//   - configs validated against the intercept.v1 / proxy.v1 schemas, no extra properties [§6]
//   - identities: name, type, isAdmin required; duplicate name 400 COULD_NOT_VALIDATE
//     cause.field "name"; enrollment.ott {id, token, jwt, expiresAt} until enrolled [§4]
//   - the enrollment JWT is RS256-signed with this server's TLS key, iss = its own URL [§4,
//     ZT controller/model/enrollment_model.go; the SDK verifies with the key served at iss]
//   - enrollment with a CSR, single use, then cert (mTLS) authentication of the identity [§4]
//   - GET /identities/{id}/services?policyType=dial lists services by policy with their config
//     ids, `config`/`permissions` not computed (ZT routes/identity_router.go:326-340)
//   - client GET /services takes configTypes as a *repeated* parameter; a comma list is one
//     unknown name and is silently dropped [§5, §9]
import { createHash, createPrivateKey, randomUUID, sign, X509Certificate } from 'node:crypto'
import { createServer, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import forge from 'node-forge'
import { createCa, createServingCert, serial, type KeyPair } from '../../../webhook/src/tls/certs.ts'
import { certFromCsr, ZitiClientApi } from './ziti-controller-client-api.ts'

const M = '/edge/management/v1'
const C = '/edge/client/v1'
const SHORTID = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-'

/** ZT common/eid/id.go: short ids over an alphabet that includes '.' and '-'. */
function shortId(): string {
  let s = ''
  for (let i = 0; i < 9; i++) s += SHORTID[Math.floor(Math.random() * SHORTID.length)]
  return s
}

export interface FakeIdentity {
  id: string
  name: string
  type: string
  isAdmin: boolean
  roleAttributes: string[]
  tags: Record<string, unknown>
  permissions: string[]
  createdAt: string
  updatedAt: string
  enrollment?: { id: string; token: string; jwt: string; expiresAt: string }
  certFingerprint?: string
  updb?: { username: string; password: string }
}
export interface FakeConfig { id: string; name: string; configTypeId: string; data: Record<string, unknown> }
export interface FakeService { id: string; name: string; roleAttributes: string[]; configs: string[]; encryptionRequired: boolean }
export interface FakePolicy { id: string; name: string; type: 'Dial' | 'Bind'; semantic: 'AnyOf' | 'AllOf'; identityRoles: string[]; serviceRoles: string[] }

/** [§6] ZT controller/db/migration_initialize.go: the built-in config type ids. */
export const CONFIG_TYPES: Record<string, string> = { 'intercept.v1': 'g7cIWbcGg', 'host.v1': 'NH5p4FpGR', 'proxy.v1': 'proxy.v1' }

interface Session { token: string; id: string; identityId: string; lastActivity: number; configTypes: string[] }

export interface FakeControllerOptions {
  /** Address to listen on and to put into `iss` (pods must reach it). */
  host?: string
  /** edge.api.sessionTimeout (sliding). */
  sessionTimeoutMs?: number
  /** edge.enrollment.edgeIdentity.duration. */
  enrollmentMinutes?: number
}

export interface FakeCall { method: string; path: string; status: number; identity?: string }

class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly detail: unknown
  constructor(status: number, code: string, message: string, detail?: unknown) {
    super(message)
    this.status = status
    this.code = code
    this.detail = detail
  }
}

export class FakeZitiController {
  readonly ca: KeyPair
  readonly serving: KeyPair
  private server: Server
  private readonly sockets = new Set<Socket>()
  readonly identities = new Map<string, FakeIdentity>()
  readonly configs = new Map<string, FakeConfig>()
  readonly services = new Map<string, FakeService>()
  readonly policies = new Map<string, FakePolicy>()
  private readonly sessions = new Map<string, Session>()
  readonly calls: FakeCall[] = []
  /** This controller run's id (response header ziti-instance-id). */
  readonly instanceId = randomUUID()
  /** The client-API routes the C SDK calls, and the edge routers it is told about. */
  readonly clientApi = new ZitiClientApi(this)
  /** Failure injection: the next n requests get this status (429, 503). */
  private failures: Array<{ status: number; code: string }> = []
  /** Failure injection: refuse every connection (a controller that is down). */
  down = false
  /** Added latency per request, ms. */
  latencyMs = 0
  /** Failure injection: the next n enrollments are carried out (token spent, CSR signed) but
   *  the connection is dropped before the answer, as when the enroller dies right then. */
  dropEnrollmentAnswers = 0
  /** The identities (and certificate fingerprints) of the enrollments whose answer was dropped. */
  readonly droppedEnrollments: Array<{ identityId: string; certFingerprint: string }> = []
  private lastEnrolled: { identityId: string; certFingerprint: string } | undefined
  sessionTimeoutMs: number
  private readonly enrollmentMinutes: number
  private readonly host: string
  url = ''

  constructor(opts: FakeControllerOptions = {}) {
    this.host = opts.host ?? '127.0.0.1'
    this.sessionTimeoutMs = opts.sessionTimeoutMs ?? 30 * 60_000
    this.enrollmentMinutes = opts.enrollmentMinutes ?? 180
    this.ca = createCa({ commonName: 'fake-ziti-controller-ca', validDays: 2 })
    this.serving = createServingCert(this.ca, { commonName: 'fake-ziti-controller', ipAddresses: [this.host], dnsNames: ['localhost'], validDays: 2 })
    // mTLS is optional at the TLS layer (password logins and enrollment have no client cert);
    // cert authentication checks it per request, like the controller.
    this.server = createServer({ cert: this.serving.certPem, key: this.serving.keyPem, ca: [this.ca.certPem], requestCert: true, rejectUnauthorized: false }, (req, res) => {
      void this.handle(req, res)
    })
    this.server.on('connection', (s: Socket) => {
      if (this.down) { s.destroy(); return }
      this.sockets.add(s)
      s.on('close', () => this.sockets.delete(s))
    })
  }

  async listen(port = 0): Promise<string> {
    await new Promise<void>((r) => this.server.listen(port, this.host, r))
    this.url = `https://${this.host}:${(this.server.address() as AddressInfo).port}`
    return this.url
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((r) => this.server.close(() => r()))
  }

  /** Takes the controller down (existing connections are cut) or brings it back. */
  setDown(down: boolean): void {
    this.down = down
    if (down) for (const s of this.sockets) s.destroy()
  }

  failNext(n: number, status: 429 | 503): void {
    for (let i = 0; i < n; i++) this.failures.push(status === 429 ? { status, code: 'RATE_LIMITED' } : { status, code: 'CLUSTER_HAS_NO_LEADER' })
  }

  /** Ends every API session at once (as if they had been idle past edge.api.sessionTimeout). */
  expireSessions(): void {
    this.sessions.clear()
  }

  // ---- seeding (what an operator does with the ziti CLI) ----

  addAdmin(username: string, password: string, permissions: string[] = [], isAdmin = true): FakeIdentity {
    checkPermissions(permissions)
    const now = new Date().toISOString()
    const id: FakeIdentity = { id: shortId(), name: username, type: 'Default', isAdmin, roleAttributes: [], tags: {}, permissions, createdAt: now, updatedAt: now, updb: { username, password } }
    this.identities.set(id.id, id)
    return id
  }

  /** An identity with a client certificate signed by this controller (for cert logins). */
  addCertIdentity(name: string, permissions: string[], isAdmin = false): { identity: FakeIdentity; cert: string; key: string } {
    checkPermissions(permissions)
    const now = new Date().toISOString()
    const identity: FakeIdentity = { id: shortId(), name, type: 'Default', isAdmin, roleAttributes: [], tags: {}, permissions, createdAt: now, updatedAt: now }
    const keys = forge.pki.rsa.generateKeyPair(2048)
    const cert = this.issue(keys.publicKey, identity.id)
    identity.certFingerprint = fingerprint(cert)
    this.identities.set(identity.id, identity)
    return { identity, cert, key: forge.pki.privateKeyToPem(keys.privateKey) }
  }

  addConfig(name: string, type: keyof typeof CONFIG_TYPES, data: Record<string, unknown>): FakeConfig {
    const problem = validateConfigData(type, data)
    if (problem) throw new Error(`config ${name}: ${problem}`)
    const c: FakeConfig = { id: shortId(), name, configTypeId: CONFIG_TYPES[type]!, data }
    this.configs.set(c.id, c)
    return c
  }

  addService(name: string, roleAttributes: string[], configs: FakeConfig[]): FakeService {
    const s: FakeService = { id: shortId(), name, roleAttributes, configs: configs.map((c) => c.id), encryptionRequired: true }
    this.services.set(s.id, s)
    return s
  }

  addPolicy(name: string, type: 'Dial' | 'Bind', identityRoles: string[], serviceRoles: string[], semantic: 'AnyOf' | 'AllOf' = 'AnyOf'): FakePolicy {
    const p: FakePolicy = { id: shortId(), name, type, semantic, identityRoles, serviceRoles }
    this.policies.set(p.id, p)
    return p
  }

  identityByName(name: string): FakeIdentity | undefined {
    return [...this.identities.values()].find((i) => i.name === name)
  }

  /** For the edge-router stand-in: who holds this live API session token (the router's hello). */
  apiSessionIdentity(token: string): { id: string; name: string } | undefined {
    const s = this.sessions.get(token)
    if (!s || Date.now() - s.lastActivity > this.sessionTimeoutMs) return undefined
    const who = this.identities.get(s.identityId)
    return who ? { id: who.id, name: who.name } : undefined
  }

  // ---- policy evaluation [§4 Roles, ZT controller/db/util.go] ----

  private matches(roles: string[], semantic: 'AnyOf' | 'AllOf', id: string, attrs: string[]): boolean {
    if (roles.includes('#all')) return true
    if (roles.includes(`@${id}`)) return true
    const attrRoles = roles.filter((r) => r.startsWith('#')).map((r) => r.slice(1))
    if (attrRoles.length === 0) return false
    return semantic === 'AllOf' ? attrRoles.every((a) => attrs.includes(a)) : attrRoles.some((a) => attrs.includes(a))
  }

  permissionsFor(identity: FakeIdentity, service: FakeService): string[] {
    const out = new Set<string>()
    for (const p of this.policies.values()) {
      if (this.matches(p.identityRoles, p.semantic, identity.id, identity.roleAttributes) && this.matches(p.serviceRoles, p.semantic, service.id, service.roleAttributes)) out.add(p.type)
    }
    return ['Bind', 'Dial'].filter((t) => out.has(t))
  }

  // ---- HTTP ----

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://x')
    const call: FakeCall = { method: req.method ?? 'GET', path: url.pathname + url.search, status: 0 }
    res.on('finish', () => { call.status = res.statusCode; this.calls.push(call) })
    const requestId = randomUUID()
    try {
      if (this.latencyMs) await new Promise((r) => setTimeout(r, this.latencyMs))
      const failure = this.failures.shift()
      if (failure) throw new ApiError(failure.status, failure.code, failure.status === 429 ? 'The resource is rate limited' : 'The cluster has no leader')
      const body = await readBody(req)
      const out = await this.route(req, url, body, call)
      if (this.dropEnrollmentAnswers > 0 && out.status === 200 && req.method === 'POST' && /\/enroll(\/ott)?$/.test(url.pathname)) {
        this.dropEnrollmentAnswers--
        if (this.lastEnrolled) this.droppedEnrollments.push(this.lastEnrolled)
        this.calls.push(call)
        req.socket.destroy()
        return
      }
      // The controller names its run in every reply; ziti-sdk-c reads it (library/ziti_ctrl.c:224-230)
      // and 1.18.1 crashes without it at its first dial (posture.c:201 strcmp of two NULLs).
      const headers: Record<string, string> = { 'content-type': out.raw ?? 'application/json', 'ziti-instance-id': this.instanceId }
      if (out.session) {
        // [§2] authenticated replies carry the session's expiry.
        headers['expiration-seconds'] = String(Math.floor(this.sessionTimeoutMs / 1000))
        headers['expires-at'] = new Date(out.session.lastActivity + this.sessionTimeoutMs).toISOString()
        if (out.newToken) headers['zt-session'] = out.session.token
      }
      res.writeHead(out.status, headers)
      res.end(out.raw ? String(out.body) : JSON.stringify(out.body))
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(500, 'UNHANDLED', (e as Error).message)
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (err.status === 401) headers['www-authenticate'] = 'zt-session' // 2.0+ [§2]
      res.writeHead(err.status, headers)
      res.end(JSON.stringify({ error: { code: err.code, message: err.message, requestId, args: { urlVars: {} }, ...(err.detail ? { cause: err.detail } : {}) }, meta: { apiVersion: '0.0.1', apiEnrollmentVersion: '0.0.1' } }))
    }
  }

  private session(req: IncomingMessage, call: FakeCall): Session {
    const token = req.headers['zt-session']
    const s = typeof token === 'string' ? this.sessions.get(token) : undefined
    const now = Date.now()
    if (!s || now - s.lastActivity > this.sessionTimeoutMs) {
      if (s) this.sessions.delete(s.token)
      throw new ApiError(401, 'UNAUTHORIZED', 'The request could not be completed. The session is not authorized or the credentials are invalid')
    }
    s.lastActivity = now // the expiry slides with each call
    call.identity = s.identityId
    return s
  }

  /**
   * HasOneOf(IsAdmin, entity permission, entity.action permission), else 401 (appenv.go:1010):
   * the entity.action permission is "<entity>.<action>" (openziti/ziti @804f55a
   * controller/response/context.go:100-105, checked by permissions/has_entity_action_access.go:27-30),
   * and the bare entity permission grants every action of it.
   */
  private allow(s: Session, entity: string, action: 'read' | 'create' | 'update' | 'delete'): FakeIdentity {
    const who = this.identities.get(s.identityId)
    if (!who) throw new ApiError(401, 'UNAUTHORIZED', 'The request could not be completed. The session is not authorized or the credentials are invalid')
    if (who.isAdmin || who.permissions.includes(entity) || who.permissions.includes(`${entity}.${action}`) || (action === 'read' && who.permissions.includes('admin_readonly'))) return who
    throw new ApiError(401, 'UNAUTHORIZED', 'The request could not be completed. The session is not authorized or the credentials are invalid')
  }

  private async route(req: IncomingMessage, url: URL, body: Buffer, call: FakeCall): Promise<{ status: number; body: unknown; session?: Session; newToken?: boolean; raw?: string }> {
    const method = req.method ?? 'GET'
    // The client API's handler takes every path that is neither /edge nor /fabric, prefixing
    // it with /edge/client/v1, and /edge/v1 is the client API too (openziti/edge
    // controller/server/client_api.go, newHandler): an identity enrolled from a JWT whose iss has
    // no path (the C SDK's ztAPI is that iss, ziti_enroll.c:279) logs in at /authenticate.
    const raw = url.pathname.replace(/\/+$/, '')
    const path = raw === '' || raw.startsWith('/edge/') || raw.startsWith('/fabric') ? raw.replace(/^\/edge\/v1(?=\/|$)/, C) : `${C}${raw}`
    const ok = (data: unknown, s?: Session, extraMeta: Record<string, unknown> = {}) => ({ status: 200, body: { data, meta: extraMeta }, ...(s ? { session: s } : {}) })
    if (method === 'GET' && (path === '' || path === '/version' || path === `${M}/version` || path === `${C}/version`)) {
      // The C SDK takes its path prefix from apiVersions.edge.v1.path (ziti-sdk-c
      // includes/ziti/ziti_model.h:89, library/ziti_ctrl.c:349-356): the real controller lists
      // the `edge` binding beside edge-client [§1]. Capabilities: this fake serves no OIDC and
      // is not a cluster, so it advertises neither OIDC_AUTH nor HA_CONTROLLER; the SDK then
      // logs in the legacy way, zt-session (library/ziti.c:2172-2199).
      const client = { v1: { path: C, apiBaseUrls: [`${this.url}${C}`] } }
      return ok({ version: 'v2.1.0-fake', revision: 'fake', buildDate: '', runtimeVersion: process.version, apiVersions: { 'edge-management': { v1: { path: M, apiBaseUrls: [`${this.url}${M}`] } }, 'edge-client': client, edge: client }, capabilities: [] })
    }
    if (method === 'GET' && path === `${C}/.well-known/est/cacerts`) {
      // [§1] base64 (64-char lines) of a certs-only PKCS#7, application/pkcs7-mime (routes/enroll_router.go).
      // No session: the C SDK fetches it before enrolling (ziti-sdk-c library/ziti_enroll.c:391).
      const p7 = forge.pkcs7.createSignedData()
      p7.addCertificate(forge.pki.certificateFromPem(this.ca.certPem))
      const b64 = forge.util.encode64(forge.asn1.toDer(p7.toAsn1()).getBytes(), 64)
      return { status: 200, body: b64, raw: 'application/pkcs7-mime' }
    }
    if (method === 'POST' && (path === `${M}/authenticate` || path === `${C}/authenticate`)) {
      const s = this.authenticate(req, url, body)
      const who = this.identities.get(s.identityId)!
      return { status: 200, body: { data: { token: s.token, id: s.id, identity: { id: who.id, name: who.name }, identityId: who.id, expiresAt: new Date(Date.now() + this.sessionTimeoutMs).toISOString(), expirationSeconds: Math.floor(this.sessionTimeoutMs / 1000), configTypes: s.configTypes, isMfaRequired: false, isMfaComplete: false, authQueries: [] }, meta: {} }, session: s, newToken: true }
    }
    if (path === `${C}/enroll/ott` && method === 'POST') {
      const { token, clientCsr } = parseJson(body) as { token?: string; clientCsr?: string }
      return ok({ cert: await this.enroll(token, clientCsr) })
    }
    if (path === `${C}/enroll` && method === 'POST' && url.searchParams.get('method') === 'ott') {
      return ok({ cert: await this.enroll(url.searchParams.get('token') ?? undefined, body.toString('utf8')) })
    }

    const open = this.clientApi.public(method, path, url)
    if (open) return open
    const s = this.session(req, call)
    const client = this.clientApi.authed(method, path, url, body, s, req)
    if (client) return { ...client, session: s }
    if (path === `${M}/current-api-session` || path === `${C}/current-api-session`) {
      if (method === 'DELETE') { this.sessions.delete(s.token); return ok({}) }
      return ok({ token: s.token, identityId: s.identityId, lastActivityAt: new Date(s.lastActivity).toISOString() }, s)
    }
    if (path === `${C}/services` && method === 'GET') {
      const who = this.identities.get(s.identityId)!
      // [§5] repeated configTypes; "all" = every type; a comma list is one unknown name.
      const asked = url.searchParams.getAll('configTypes')
      const types = asked.length ? asked : s.configTypes
      const wanted = types.includes('all') ? Object.keys(CONFIG_TYPES) : types.filter((t) => t in CONFIG_TYPES)
      const all = [...this.services.values()].map((svc) => ({ svc, perms: this.permissionsFor(who, svc) })).filter((x) => x.perms.length > 0)
      return this.page(url, all.map(({ svc, perms }) => this.serviceJson(svc, perms, wanted)), s)
    }
    const m = path.startsWith(M) ? path.slice(M.length) : undefined
    if (m === undefined) throw new ApiError(404, 'NOT_FOUND', `no route for ${method} ${path}`)
    let match: RegExpExecArray | null
    if (m === '/identities' && method === 'GET') {
      this.allow(s, 'identity', 'read')
      const filter = compileFilter(url.searchParams.get('filter'))
      return this.page(url, [...this.identities.values()].filter((i) => filter(i as unknown as Record<string, unknown>)).map((i) => this.identityJson(i)), s)
    }
    if (m === '/identities' && method === 'POST') {
      this.allow(s, 'identity', 'create')
      const id = this.createIdentity(parseJson(body))
      return { status: 201, body: { data: { id: id.id, _links: { self: { href: `./identities/${id.id}` } } }, meta: {} }, session: s }
    }
    if ((match = /^\/identities\/([^/]+)$/.exec(m))) {
      const id = this.identities.get(decodeURIComponent(match[1]!))
      if (method === 'GET') {
        this.allow(s, 'identity', 'read')
        if (!id) throw notFound('identity', match[1]!)
        return ok(this.identityJson(id), s)
      }
      if (method === 'PATCH' || method === 'PUT') {
        // Re-attributing an identity: identity.update (or identity), which ziti-cni's
        // credential does not hold.
        this.allow(s, 'identity', 'update')
        if (!id) throw notFound('identity', match[1]!)
        const b = parseJson(body) as { roleAttributes?: unknown }
        if (Array.isArray(b.roleAttributes)) id.roleAttributes = b.roleAttributes.map(String)
        id.updatedAt = new Date().toISOString()
        return ok({}, s)
      }
      if (method === 'DELETE') {
        this.allow(s, 'identity', 'delete')
        if (!id) throw notFound('identity', match[1]!)
        this.identities.delete(id.id)
        for (const [t, sess] of this.sessions) if (sess.identityId === id.id) this.sessions.delete(t)
        return ok({}, s)
      }
    }
    if ((match = /^\/identities\/([^/]+)\/services$/.exec(m)) && method === 'GET') {
      this.allow(s, 'service', 'read')
      const id = this.identities.get(decodeURIComponent(match[1]!))
      if (!id) throw notFound('identity', match[1]!)
      const type = (url.searchParams.get('policyType') ?? '').toLowerCase()
      const list = [...this.services.values()].filter((svc) => {
        const perms = this.permissionsFor(id, svc)
        return type === 'dial' ? perms.includes('Dial') : type === 'bind' ? perms.includes('Bind') : perms.length > 0
      })
      // By policy only: `config` and `permissions` are not computed (identity_router.go:338).
      return this.page(url, list.map((svc) => this.serviceJson(svc, [], [])), s)
    }
    if (m === '/configs' && method === 'GET') {
      this.allow(s, 'config', 'read')
      const filter = compileFilter(url.searchParams.get('filter'))
      return this.page(url, [...this.configs.values()].filter((c) => filter(c as unknown as Record<string, unknown>)).map((c) => this.configJson(c)), s)
    }
    if (m === '/configs' && method === 'POST') {
      this.allow(s, 'config', 'create')
      const { name, configTypeId, data } = parseJson(body) as { name?: string; configTypeId?: string; data?: Record<string, unknown> }
      const type = Object.entries(CONFIG_TYPES).find(([, id]) => id === configTypeId)?.[0]
      if (!name || !type || typeof data !== 'object' || data === null) throw new ApiError(400, 'COULD_NOT_VALIDATE', 'The supplied request contains an invalid document', { field: !name ? 'name' : !type ? 'configTypeId' : 'data', value: null, reason: 'required' })
      const problem = validateConfigData(type, data)
      if (problem) throw new ApiError(400, 'COULD_NOT_VALIDATE', 'The supplied request contains an invalid document', { field: 'data', value: data, reason: problem })
      const c = this.addConfig(name, type as keyof typeof CONFIG_TYPES, data)
      return { status: 201, body: { data: { id: c.id, _links: {} }, meta: {} }, session: s }
    }
    throw new ApiError(404, 'NOT_FOUND', `no route for ${method} ${path}`)
  }

  page(url: URL, items: unknown[], s: Session) {
    // [§2] ZT controller/models/base_model.go
    const rawLimit = url.searchParams.get('limit')
    const rawOffset = url.searchParams.get('offset')
    let limit = rawLimit === null ? 10 : Number(rawLimit)
    const offset = rawOffset === null ? 0 : Number(rawOffset)
    if (!Number.isInteger(limit) || limit < 0 || !Number.isInteger(offset) || offset < 0) throw new ApiError(400, 'INVALID_PAGINATION', 'The pagination properties provided are invalid')
    if (offset > 100000) throw new ApiError(400, 'INVALID_PAGINATION', 'offset may not be greater than 100000')
    if (limit === 0) limit = 10
    limit = Math.min(limit, 500)
    return { status: 200, body: { data: items.slice(offset, offset + limit), meta: { pagination: { limit, offset, totalCount: items.length }, filterableFields: ['id', 'name'] } }, session: s }
  }

  private authenticate(req: IncomingMessage, url: URL, body: Buffer): Session {
    const method = url.searchParams.get('method')
    const opts = body.length ? (parseJson(body) as { username?: string; password?: string; configTypes?: string[] }) : {}
    let who: FakeIdentity | undefined
    if (method === 'password') {
      who = [...this.identities.values()].find((i) => i.updb && i.updb.username === opts.username && i.updb.password === opts.password)
    } else if (method === 'cert') {
      const sock = req.socket as TLSSocket
      const peer = sock.getPeerCertificate()
      if (sock.authorized && peer?.raw) {
        const fp = createHash('sha1').update(peer.raw).digest('hex')
        who = [...this.identities.values()].find((i) => i.certFingerprint === fp)
      }
    } else {
      throw new ApiError(400, 'INVALID_AUTH_METHOD', 'The supplied authentication method is not valid')
    }
    if (!who) throw new ApiError(401, 'INVALID_AUTH', 'The authentication request failed')
    const s: Session = { token: randomUUID(), id: randomUUID(), identityId: who.id, lastActivity: Date.now(), configTypes: opts.configTypes ?? [] }
    this.sessions.set(s.token, s)
    return s
  }

  private createIdentity(raw: unknown): FakeIdentity {
    const b = (raw ?? {}) as Record<string, unknown>
    const invalid = (field: string, reason: string, value: unknown = null) => new ApiError(400, 'COULD_NOT_VALIDATE', 'The supplied request contains an invalid document', { field, value, reason })
    if (typeof b.name !== 'string' || b.name === '') throw invalid('name', 'name in body is required')
    if (typeof b.type !== 'string' || !['User', 'Device', 'Service', 'Router', 'Default'].includes(b.type)) throw invalid('type', 'type in body should be one of [User Device Service Router Default]', b.type)
    if (typeof b.isAdmin !== 'boolean') throw invalid('isAdmin', 'isAdmin in body is required')
    if (this.identityByName(b.name)) throw invalid('name', 'duplicate value', b.name)
    const roles = b.roleAttributes ?? []
    if (!Array.isArray(roles) || roles.some((r) => typeof r !== 'string')) throw invalid('roleAttributes', 'must be a list of strings', roles)
    const now = new Date().toISOString()
    // `type` is required but stored as Default (ZT routes/identity_api_model.go).
    const id: FakeIdentity = { id: shortId(), name: b.name, type: 'Default', isAdmin: b.isAdmin, roleAttributes: roles as string[], tags: (b.tags ?? {}) as Record<string, unknown>, permissions: [], createdAt: now, updatedAt: now }
    const enrollment = b.enrollment as { ott?: boolean } | undefined
    if (enrollment?.ott) {
      const token = randomUUID()
      const expiresAt = new Date(Date.now() + this.enrollmentMinutes * 60_000)
      id.enrollment = { id: shortId(), token, expiresAt: expiresAt.toISOString(), jwt: this.jwt({ iss: this.url, sub: id.id, jti: token, exp: Math.floor(expiresAt.getTime() / 1000), em: 'ott', ctrls: [this.url] }) }
    }
    this.identities.set(id.id, id)
    return id
  }

  /** RS256 with this server's TLS key: the SDK checks it against the cert served at `iss`. */
  private jwt(claims: Record<string, unknown>): string {
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url')
    const input = `${b64({ alg: 'RS256', typ: 'JWT' })}.${b64(claims)}`
    return `${input}.${sign('sha256', Buffer.from(input), createPrivateKey(this.serving.keyPem)).toString('base64url')}`
  }

  private async enroll(token: string | undefined, csrPem: string | undefined): Promise<string> {
    const id = [...this.identities.values()].find((i) => i.enrollment && i.enrollment.token === token)
    if (!id || !id.enrollment) throw new ApiError(400, 'INVALID_ENROLLMENT_TOKEN', 'The supplied token is not valid')
    if (Date.parse(id.enrollment.expiresAt) < Date.now()) throw new ApiError(400, 'ENROLLMENT_EXPIRED', 'The window for this enrollment has expired')
    // RSA and EC keys, as the controller takes them (the C SDK sends EC P-256).
    const cert = await certFromCsr(csrPem ?? '', this.ca, id.id)
    if (!cert) throw new ApiError(400, 'MISSING_OR_INVALID_CSR', 'The request requires a valid CSR')
    id.certFingerprint = fingerprint(cert)
    this.lastEnrolled = { identityId: id.id, certFingerprint: id.certFingerprint }
    delete id.enrollment // single use
    id.updatedAt = new Date().toISOString()
    return `${cert}${this.ca.certPem}`
  }

  private issue(publicKey: forge.pki.PublicKey, cn: string): string {
    const caCert = forge.pki.certificateFromPem(this.ca.certPem)
    const cert = forge.pki.createCertificate()
    cert.publicKey = publicKey
    cert.serialNumber = serial()
    cert.validity.notBefore = new Date(Date.now() - 60_000)
    cert.validity.notAfter = new Date(Date.now() + 86_400_000)
    cert.setSubject([{ name: 'commonName', value: cn }])
    cert.setIssuer(caCert.subject.attributes)
    cert.setExtensions([{ name: 'basicConstraints', cA: false }, { name: 'extKeyUsage', clientAuth: true }])
    cert.sign(forge.pki.privateKeyFromPem(this.ca.keyPem), forge.md.sha256.create())
    return forge.pki.certificateToPem(cert)
  }

  private identityJson(i: FakeIdentity) {
    return {
      id: i.id, name: i.name, type: { id: i.type, name: i.type, entity: 'identity-types' }, typeId: i.type, isAdmin: i.isAdmin,
      roleAttributes: i.roleAttributes, tags: i.tags, createdAt: i.createdAt, updatedAt: i.updatedAt, disabled: false, hasApiSession: [...this.sessions.values()].some((s) => s.identityId === i.id),
      authenticators: i.certFingerprint ? { cert: { id: `a-${i.id}`, fingerprint: i.certFingerprint } } : {},
      enrollment: i.enrollment ? { ott: { ...i.enrollment } } : {},
      _links: { self: { href: `./identities/${i.id}` } },
    }
  }

  private configJson(c: FakeConfig) {
    const typeName = Object.entries(CONFIG_TYPES).find(([, id]) => id === c.configTypeId)![0]
    return { id: c.id, name: c.name, configTypeId: c.configTypeId, configType: { id: c.configTypeId, name: typeName, entity: 'config-types' }, data: c.data, tags: {}, _links: {} }
  }

  private serviceJson(svc: FakeService, permissions: string[], configTypes: string[]) {
    const config: Record<string, unknown> = {}
    for (const cid of svc.configs) {
      const c = this.configs.get(cid)
      if (!c) continue
      const typeName = Object.entries(CONFIG_TYPES).find(([, id]) => id === c.configTypeId)![0]
      if (configTypes.includes(typeName)) config[typeName] = c.data // keyed by type *name*
    }
    return { id: svc.id, name: svc.name, roleAttributes: svc.roleAttributes, configs: svc.configs, config, permissions, encryptionRequired: svc.encryptionRequired, postureQueries: [], tags: {}, _links: {} }
  }
}

function fingerprint(certPem: string): string {
  return createHash('sha1').update(new X509Certificate(certPem).raw).digest('hex')
}

function notFound(entity: string, id: string): ApiError {
  return new ApiError(404, 'NOT_FOUND', `The resource requested was not found or is no longer available`, { field: 'id', value: id, reason: `${entity} not found` })
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8') || '{}')
  } catch {
    throw new ApiError(400, 'COULD_NOT_PARSE_BODY', 'The body of the request could not be parsed')
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

// ---- config schemas [§6] ----

export function validateConfigData(type: string, d: Record<string, unknown>): string | undefined {
  const extra = (allowed: string[]) => Object.keys(d).find((k) => !allowed.includes(k))
  const protocols = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every((p) => p === 'tcp' || p === 'udp') && new Set(v).size === v.length
  if (type === 'intercept.v1') {
    const bad = extra(['protocols', 'addresses', 'portRanges', 'dialOptions', 'sourceIp', 'allowedSourceAddresses'])
    if (bad) return `(root): Additional property ${bad} is not allowed`
    if (!protocols(d.protocols)) return 'protocols: must be a non-empty unique list of tcp, udp'
    if (!Array.isArray(d.addresses) || d.addresses.length === 0 || d.addresses.some((a) => typeof a !== 'string' || a === '') || new Set(d.addresses).size !== d.addresses.length) return 'addresses: must be a non-empty list of unique strings'
    if (!Array.isArray(d.portRanges) || d.portRanges.some((r) => !isPortRange(r))) return 'portRanges: each must be {low, high} in 0-65535'
    return undefined
  }
  if (type === 'proxy.v1') {
    const bad = extra(['port', 'protocols', 'binding'])
    if (bad) return `(root): Additional property ${bad} is not allowed`
    if (typeof d.port !== 'number' || !Number.isInteger(d.port) || d.port < 1 || d.port > 65535) return 'port: must be an integer 1-65535'
    if (!protocols(d.protocols)) return 'protocols: must be a non-empty unique list of tcp, udp'
    if (d.binding !== undefined && typeof d.binding !== 'string') return 'binding: must be a string'
    return undefined
  }
  if (type === 'host.v1') return undefined
  return `unknown config type ${type}`
}

function isPortRange(r: unknown): boolean {
  const x = r as { low?: unknown; high?: unknown }
  const p = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 65535
  return typeof r === 'object' && r !== null && Object.keys(r).every((k) => k === 'low' || k === 'high') && p(x.low) && p(x.high)
}

// ---- ZitiQL, the subset ziti-cni sends: <field> (= | != | contains) "<string>",
// <field> in ["a", ...], joined with `and`. Strings only in double quotes (single quotes
// would be identifiers); escapes \" \\ \n \r \t \f (ZitiQl.g4 STRING/ESC). ----

type Pred = (o: Record<string, unknown>) => boolean

/**
 * The permissions an identity may be given, as openziti/ziti @804f55a
 * controller/permissions/permissions.go:44-160 (AllPermissions) lists them for what this
 * stand-in serves: each entity bare (every action) and as entity.read/create/update/delete,
 * plus admin_readonly. Anything else is refused, as the controller refuses unknown names.
 */
const ENTITIES = ['auth-policy', 'ca', 'config', 'config-type', 'edge-router-policy', 'enrollment', 'external-jwt-signer', 'identity', 'posture-check', 'router', 'service', 'service-edge-router-policy', 'service-policy']
export const ALL_PERMISSIONS = new Set(['admin_readonly', ...ENTITIES.flatMap((e) => [e, `${e}.read`, `${e}.create`, `${e}.update`, `${e}.delete`])])
function checkPermissions(permissions: string[]): void {
  for (const p of permissions) if (!ALL_PERMISSIONS.has(p)) throw new Error(`permission ${p} is not one the controller knows (controller/permissions/permissions.go)`)
}

export function compileFilter(text: string | null): Pred {
  if (text === null || text.trim() === '') return () => true
  const fail = (why: string): never => { throw new ApiError(400, 'INVALID_FILTER', `the filter is invalid: ${why}`) }
  let i = 0
  const ws = () => { while (i < text.length && /\s/.test(text[i]!)) i++ }
  const str = (): string => {
    ws()
    if (text[i] !== '"') fail(`expected a double-quoted string at ${i}`)
    i++
    let out = ''
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') {
        const e = text[i + 1]
        const map: Record<string, string> = { '"': '"', '\\': '\\', n: '\n', r: '\r', t: '\t', f: '\f', b: '\b', '/': '/' }
        if (e === undefined || !(e in map)) fail(`bad escape at ${i}`)
        out += map[e!]
        i += 2
      } else out += text[i++]
    }
    if (text[i] !== '"') fail('unterminated string')
    i++
    return out
  }
  const field = (): string => {
    ws()
    const m = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(text.slice(i))
    if (!m) fail(`expected a field at ${i}`)
    i += m![0].length
    return m![0]
  }
  const preds: Pred[] = []
  for (;;) {
    const f = field()
    if (!['id', 'name', 'type'].includes(f)) fail(`unknown symbol ${f}`)
    ws()
    const rest = text.slice(i)
    let p: Pred
    if (rest.startsWith('!=')) { i += 2; const v = str(); p = (o) => String(o[f]) !== v }
    else if (rest.startsWith('=')) { i += 1; const v = str(); p = (o) => String(o[f]) === v }
    else if (/^contains\b/i.test(rest)) { i += 8; const v = str(); p = (o) => String(o[f]).includes(v) }
    else if (/^in\b/i.test(rest)) {
      i += 2; ws()
      if (text[i] !== '[') fail('expected [')
      i++
      const vals: string[] = []
      for (;;) { vals.push(str()); ws(); if (text[i] === ',') { i++; continue } if (text[i] === ']') { i++; break } fail('expected , or ]') }
      p = (o) => vals.includes(String(o[f]))
    } else fail(`unknown operator at ${i}`)
    preds.push(p!)
    ws()
    if (i >= text.length) break
    if (/^and\b/i.test(text.slice(i))) { i += 3; continue }
    fail(`unexpected input at ${i}`)
  }
  return (o) => preds.every((p) => p(o))
}
