// POST /enroll: the only way an enrollment JWT leaves the identity controller. The caller
// presents its pod's projected ServiceAccount token (audience controller.tokenAudience); the
// API server vouches for it (TokenReview, authentication.k8s.io/v1) and names the bound pod
// (status.user.extra["authentication.kubernetes.io/pod-name"/"pod-uid"], kubernetes
// pkg/serviceaccount/claims.go). The pod must exist with that uid, run as that
// ServiceAccount, be injected with identity: auto and pass the attribute policy; then its
// identity is ensured and its one-time JWT returned. Asked again once the JWT is spent (the
// pod's enroller died between the controller accepting the CSR and the identity file being
// written), the identity is deleted and recreated: a fresh JWT, the half-enrolled cert revoked.
//
// Who can reach /enroll: any pod in the cluster (the Service is cluster-wide on purpose) and
// anything that can route to a pod IP. What a request costs: a TLS handshake here; then one
// TokenReview (API server), one pod GET (API server), one to three OpenZiti controller calls.
// So the expensive part sits behind a limiter that decides on the TCP peer address alone,
// before the token is even looked at: a token bucket per source address, one global bucket
// and a cap on enrollments in flight. Refusals are 429 with Retry-After (the init step retries).
import { AuthenticationV1Api, CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node'
import { createServer, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import { Counter, type Registry } from 'prom-client'
import type { ControllerConfig } from '../config.ts'
import type { Identities } from './identities.ts'
import { wantedIdentity } from './plan.ts'
import { makeApiClient } from '../kube-client.ts'

export const EXTRA_POD_NAME = 'authentication.kubernetes.io/pod-name'
export const EXTRA_POD_UID = 'authentication.kubernetes.io/pod-uid'

export interface EnrollAnswer { status: number; body: { jwt?: string; message?: string } }

export interface EnrollDeps {
  kc: KubeConfig
  identities: Identities
  cfg: ControllerConfig
  cluster: string
  log: Logger
}

export class Enrollment {
  private readonly auth: AuthenticationV1Api
  private readonly core: CoreV1Api
  private readonly d: EnrollDeps

  constructor(d: EnrollDeps) {
    this.d = d
    this.auth = makeApiClient(d.kc, AuthenticationV1Api)
    this.core = makeApiClient(d.kc, CoreV1Api)
  }

  async answer(authorization: string | undefined): Promise<EnrollAnswer> {
    const refuse = (status: number, message: string): EnrollAnswer => ({ status, body: { message } })
    const token = authorization?.startsWith('Bearer ') ? authorization.slice(7).trim() : ''
    if (!token) return refuse(401, 'present the pod\'s projected ServiceAccount token as a Bearer token')
    const audience = this.d.cfg.tokenAudience
    const review = await this.auth.createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [audience] } } })
    const st = review.status
    if (!st?.authenticated) return refuse(401, `the API server did not authenticate the token${st?.error ? `: ${st.error}` : ''}`)
    if (!(st.audiences ?? []).includes(audience)) return refuse(401, `the token is not for audience ${audience}`)
    const user = st.user?.username ?? ''
    const m = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(user)
    const podName = st.user?.extra?.[EXTRA_POD_NAME]?.[0]
    const podUid = st.user?.extra?.[EXTRA_POD_UID]?.[0]
    if (!m || !podName || !podUid) return refuse(403, 'the token is not a ServiceAccount token bound to a pod')
    const [, namespace, serviceAccount] = m as unknown as [string, string, string]
    let pod: V1Pod
    try {
      pod = await this.core.readNamespacedPod({ namespace, name: podName })
    } catch (e) {
      if ((e as { code?: number }).code === 404) return refuse(403, `pod ${namespace}/${podName} does not exist`)
      throw e
    }
    if (pod.metadata?.uid !== podUid) return refuse(403, `pod ${namespace}/${podName} is not the pod the token is bound to (uid differs)`)
    if ((pod.spec?.serviceAccountName || 'default') !== serviceAccount) return refuse(403, `pod ${namespace}/${podName} does not run as ServiceAccount ${serviceAccount}`)
    const want = wantedIdentity(pod, this.d.cfg, this.d.cluster)
    if (!want.ok) return refuse(403, `pod ${namespace}/${podName} gets no identity: ${want.reason}`)
    const deadline = Date.now() + 10_000
    let have = await this.d.identities.ensure(want.spec, deadline)
    let jwt = (await this.d.identities.detail(have.id, deadline))?.enrollment?.ott?.jwt
    if (!jwt) {
      // Spent, yet the pod asks: its enroller only asks while the pod holds no identity file,
      // so the enrollment died half-way (the CSR accepted, the file never written). Only this
      // pod's bound token gets here, and it re-issues only this pod's identity.
      have = await this.d.identities.reissue(want.spec, have, deadline)
      jwt = (await this.d.identities.detail(have.id, deadline))?.enrollment?.ott?.jwt
      if (!jwt) return refuse(409, `identity ${want.spec.name} was re-issued and enrolled again at once; retry`)
    }
    this.d.log.info({ pod: `${namespace}/${podName}`, podUid, identity: want.spec.name, identityId: have.id }, 'handed the enrollment token to its pod')
    return { status: 200, body: { jwt } }
  }
}

export interface Bucket { burst: number; perSecond: number }
export interface EnrollLimits {
  /** Per TCP peer address: a pod enrolls once, plus the init step's retries (0.5 s .. 5 s apart). */
  perSource: Bucket
  /** All sources together: what the API server and the OpenZiti controller see at most. */
  global: Bucket
  /** Enrollments being answered at once (each holds API and controller calls open). */
  maxInFlight: number
  /** Sources remembered; beyond it the idlest are forgotten (the global bucket still holds). */
  maxSources: number
}

/**
 * A burst of 100 new pods enrolls in about 3 s (50 at once, then 20 a second); a single source
 * gets 5 at once, then one every 2 s; whatever floods, the API server sees at most 20
 * TokenReviews a second (plus the burst) from this replica.
 */
export const ENROLL_LIMITS: EnrollLimits = { perSource: { burst: 5, perSecond: 0.5 }, global: { burst: 50, perSecond: 20 }, maxInFlight: 16, maxSources: 10_000 }

export type Admission = { ok: true; release: () => void } | { ok: false; scope: 'source' | 'global' | 'in-flight'; retryAfterSeconds: number }

interface Level { tokens: number; at: number }

/** Token buckets and an in-flight count; pure (the caller passes the clock). */
export class EnrollLimiter {
  private readonly limits: EnrollLimits
  private readonly sources = new Map<string, Level>()
  private readonly all: Level
  private inFlight = 0

  constructor(limits: EnrollLimits, now: number) {
    this.limits = limits
    this.all = { tokens: limits.global.burst, at: now }
  }

  private static refill(l: Level, b: Bucket, now: number): void {
    l.tokens = Math.min(b.burst, l.tokens + ((now - l.at) / 1000) * b.perSecond)
    l.at = now
  }

  private static wait(l: Level, b: Bucket): number {
    return Math.max(1, Math.ceil((1 - l.tokens) / b.perSecond))
  }

  /** Admits one enrollment from `source` at `now` (ms), or says who refused and for how long. */
  admit(source: string, now: number): Admission {
    const { perSource, global, maxInFlight } = this.limits
    if (this.inFlight >= maxInFlight) return { ok: false, scope: 'in-flight', retryAfterSeconds: 1 }
    let mine = this.sources.get(source)
    if (mine) this.sources.delete(source) // re-inserted below: Map order is least recently seen first
    else mine = { tokens: perSource.burst, at: now }
    EnrollLimiter.refill(mine, perSource, now)
    this.sources.set(source, mine)
    this.forget(now)
    if (mine.tokens < 1) return { ok: false, scope: 'source', retryAfterSeconds: EnrollLimiter.wait(mine, perSource) }
    EnrollLimiter.refill(this.all, global, now)
    if (this.all.tokens < 1) return { ok: false, scope: 'global', retryAfterSeconds: EnrollLimiter.wait(this.all, global) }
    mine.tokens -= 1
    this.all.tokens -= 1
    this.inFlight++
    let released = false
    return { ok: true, release: () => { if (!released) { released = true; this.inFlight-- } } }
  }

  private forget(now: number): void {
    if (this.sources.size <= this.limits.maxSources) return
    // Full buckets carry no state worth keeping; then the least recently seen go.
    for (const [k, l] of this.sources) {
      if (this.sources.size <= this.limits.maxSources) return
      EnrollLimiter.refill(l, this.limits.perSource, now)
      if (l.tokens >= this.limits.perSource.burst) this.sources.delete(k)
    }
    for (const k of this.sources.keys()) {
      if (this.sources.size <= this.limits.maxSources) return
      this.sources.delete(k)
    }
  }

  get sourcesTracked(): number { return this.sources.size }
}

/** The peer address as a bucket key (IPv4-mapped IPv6 is the IPv4 address). */
export const sourceOf = (req: IncomingMessage): string => (req.socket.remoteAddress ?? 'unknown').replace(/^::ffff:/, '')

/** The HTTPS listener: /enroll, /healthz, /metrics. */
export function enrollServer(enrollment: Enrollment, tls: { cert: string; key: string }, registry: Registry, log: Logger, limits: EnrollLimits = ENROLL_LIMITS): Server {
  const limiter = new EnrollLimiter(limits, Date.now())
  const throttled = (registry.getSingleMetric('ziti_cni_enroll_throttled_total') as Counter<'scope'> | undefined) ??
    new Counter({ name: 'ziti_cni_enroll_throttled_total', help: 'Enrollment requests refused with 429 before any API or controller call, by limit (source, global, in-flight)', labelNames: ['scope'] as const, registers: [registry] })
  const send = (res: ServerResponse, status: number, body: unknown, type = 'application/json', headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers })
    res.end(typeof body === 'string' ? body : JSON.stringify(body))
  }
  const server = createServer({ cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' }, (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method === 'GET' && path === '/healthz') return send(res, 200, 'ok', 'text/plain')
    if (req.method === 'GET' && path === '/metrics') { void registry.metrics().then((m) => send(res, 200, m, registry.contentType)); return }
    if (req.method !== 'POST' || path !== '/enroll') return send(res, 404, { message: 'not found' })
    req.resume()
    const source = sourceOf(req)
    const admission = limiter.admit(source, Date.now())
    if (!admission.ok) {
      throttled.inc({ scope: admission.scope })
      log.debug({ source, scope: admission.scope }, 'enrollment throttled')
      return send(res, 429, { message: `too many enrollment requests (${admission.scope} limit); retry after ${admission.retryAfterSeconds} s` }, 'application/json', { 'retry-after': String(admission.retryAfterSeconds) })
    }
    enrollment.answer(req.headers.authorization).then(
      (a) => {
        if (a.status !== 200) log.warn({ status: a.status, reason: a.body.message, source }, 'enrollment refused')
        send(res, a.status, a.body)
      },
      (e: unknown) => { log.error({ err: String(e) }, 'enrollment failed'); send(res, 503, { message: 'the enrollment could not be completed; retry' }) },
    ).finally(admission.release)
  })
  // A connection that sends nothing (or dribbles headers) is dropped instead of held.
  server.headersTimeout = 10_000
  server.requestTimeout = 20_000
  return server
}
