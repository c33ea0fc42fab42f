// POST /enroll: the only way an enrollment JWT leaves the identity controller. The caller
// presents its pod's projected ServiceAccount token (audience controller.tokenAudience); the
// API server vouches for it (TokenReview, authentication.k8s.io/v1) and names the bound pod
// (status.user.extra["authentication.kubernetes.io/pod-name"/"pod-uid"], kubernetes
// pkg/serviceaccount/claims.go). The pod must exist with that uid, run as that
// ServiceAccount, be injected with identity: auto and pass the attribute policy; then its
// identity is ensured and its one-time JWT returned. Once enrolled, there is no JWT to give.
import { AuthenticationV1Api, CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node'
import { createServer, type Server } from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { ControllerConfig } from '../config.ts'
import type { Identities } from './identities.ts'
import { wantedIdentity } from './plan.ts'

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
    this.auth = d.kc.makeApiClient(AuthenticationV1Api)
    this.core = d.kc.makeApiClient(CoreV1Api)
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
    const have = await this.d.identities.ensure(want.spec, deadline)
    const detail = await this.d.identities.detail(have.id, deadline)
    const jwt = detail?.enrollment?.ott?.jwt
    if (!jwt) return refuse(409, `identity ${want.spec.name} is enrolled already: its one-time token is spent`)
    this.d.log.info({ pod: `${namespace}/${podName}`, podUid, identity: want.spec.name, identityId: have.id }, 'handed the enrollment token to its pod')
    return { status: 200, body: { jwt } }
  }
}

/** The HTTPS listener: /enroll, /healthz, /metrics. */
export function enrollServer(enrollment: Enrollment, tls: { cert: string; key: string }, registry: Registry, log: Logger): Server {
  const send = (res: ServerResponse, status: number, body: unknown, type = 'application/json') => {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' })
    res.end(typeof body === 'string' ? body : JSON.stringify(body))
  }
  return createServer({ cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' }, (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method === 'GET' && path === '/healthz') return send(res, 200, 'ok', 'text/plain')
    if (req.method === 'GET' && path === '/metrics') { void registry.metrics().then((m) => send(res, 200, m, registry.contentType)); return }
    if (req.method !== 'POST' || path !== '/enroll') return send(res, 404, { message: 'not found' })
    req.resume()
    enrollment.answer(req.headers.authorization).then(
      (a) => {
        if (a.status !== 200) log.warn({ status: a.status, reason: a.body.message }, 'enrollment refused')
        send(res, a.status, a.body)
      },
      (e: unknown) => { log.error({ err: String(e) }, 'enrollment failed'); send(res, 503, { message: 'the enrollment could not be completed; retry' }) },
    )
  })
}
