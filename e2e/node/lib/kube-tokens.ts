// ServiceAccount tokens for the API server stand-in, as the real API server issues and checks
// them: TokenRequest (POST /api/v1/namespaces/{ns}/serviceaccounts/{sa}/token, what the
// kubelet calls for a projected serviceAccountToken volume) and TokenReview (POST
// /apis/authentication.k8s.io/v1/tokenreviews). Read from kubernetes @031075d:
//   - claims (pkg/serviceaccount/claims.go:62-101, Claims): sub system:serviceaccount:<ns>:<sa>,
//     aud, iat, nbf, exp; private "kubernetes.io": {namespace, serviceaccount{name,uid}, pod{name,uid}}
//   - validation (claims.go:113-205, Validate): expired -> "service account token has expired";
//     the ServiceAccount must still exist with the claimed uid; a bound pod that is gone (or
//     deleted more than a leeway ago) -> "service account token has been invalidated"; a pod of
//     the same name with another uid -> "pod UID (...) does not match service account pod ref claim (...)"
//   - the bound pod's name and uid reach the reviewer as user.extra
//     "authentication.kubernetes.io/pod-name" / "pod-uid" (ServiceAccountInfo.UserInfo)
//   - audiences: a token is accepted only for an audience it carries; a review with no
//     spec.audiences checks the API server's own; status.audiences is the intersection
//     (k8s.io/apiserver pkg/authentication/authenticator/audiences.go)
//   - TokenRequest validation: expirationSeconds >= 600 ("may not specify a duration less
//     than 10 minutes", pkg/apis/authentication/validation), boundObjectRef must exist with its uid
// Signed RS256 with a key of this stand-in; a token that does not verify is simply not ours.
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, verify, type KeyObject } from 'node:crypto'
import type { IncomingMessage } from 'node:http'

type Obj = { metadata: { name: string; namespace?: string; uid?: string; deletionTimestamp?: string } }
export type Lookup = (plural: string, ns: string | undefined, name: string) => Obj | undefined

export const API_AUDIENCE = 'https://kubernetes.default.svc.cluster.local'

interface Claims {
  iss: string; sub: string; aud: string[]; iat: number; nbf: number; exp: number; jti: string
  'kubernetes.io': { namespace: string; serviceaccount: { name: string; uid: string }; pod?: { name: string; uid: string } }
}

export class KubeTokens {
  private readonly key: KeyObject
  private readonly pub: KeyObject
  private readonly lookup: Lookup
  /** Every TokenRequest and TokenReview, for tests that must prove nothing happened. */
  readonly issued: Array<{ namespace: string; serviceAccount: string; pod?: string; audiences: string[] }> = []
  readonly reviews: Array<{ authenticated: boolean; error?: string }> = []

  constructor(lookup: Lookup) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
    this.key = createPrivateKey(privateKey.export({ type: 'pkcs8', format: 'pem' }))
    this.pub = createPublicKey(this.key)
    this.lookup = lookup
  }

  /** The two routes; undefined for any other path (kube-api.ts routes it as usual). */
  async route(req: IncomingMessage, path: string): Promise<{ status: number; body: unknown } | undefined> {
    const tr = /^\/api\/v1\/namespaces\/([^/]+)\/serviceaccounts\/([^/]+)\/token$/.exec(path)
    const review = path === '/apis/authentication.k8s.io/v1/tokenreviews'
    if (!tr && !review) return undefined
    if (req.method !== 'POST') return status(405, 'MethodNotAllowed', `${req.method} is not supported`)
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { spec?: Record<string, unknown> }
    return tr ? this.tokenRequest(decodeURIComponent(tr[1]!), decodeURIComponent(tr[2]!), body) : this.tokenReview(body)
  }

  /** What the kubelet does for a projected serviceAccountToken source (the harness calls it). */
  request(namespace: string, serviceAccount: string, opts: { audiences?: string[]; expirationSeconds?: number; pod?: { name: string; uid: string } }): string {
    const r = this.tokenRequest(namespace, serviceAccount, { spec: { audiences: opts.audiences, expirationSeconds: opts.expirationSeconds, ...(opts.pod ? { boundObjectRef: { kind: 'Pod', apiVersion: 'v1', ...opts.pod } } : {}) } })
    if (r.status !== 201) throw new Error(`TokenRequest: ${(r.body as { message: string }).message}`)
    return (r.body as { status: { token: string } }).status.token
  }

  private tokenRequest(namespace: string, name: string, body: { spec?: Record<string, unknown> }): { status: number; body: unknown } {
    const spec = body.spec ?? {}
    const sa = this.lookup('serviceaccounts', namespace, name)
    if (!sa) return status(404, 'NotFound', `serviceaccounts "${name}" not found`)
    const seconds = spec.expirationSeconds === undefined ? 3600 : Number(spec.expirationSeconds)
    if (!Number.isInteger(seconds) || seconds < 600) return status(422, 'Invalid', 'TokenRequest.authentication.k8s.io is invalid: spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes')
    const audiences = Array.isArray(spec.audiences) && spec.audiences.length ? (spec.audiences as string[]) : [API_AUDIENCE]
    const ref = spec.boundObjectRef as { kind?: string; name?: string; uid?: string } | undefined
    let pod: { name: string; uid: string } | undefined
    if (ref) {
      if (ref.kind !== 'Pod') return status(422, 'Invalid', 'spec.boundObjectRef.kind: only Pod is supported here')
      const p = this.lookup('pods', namespace, ref.name ?? '')
      if (!p) return status(404, 'NotFound', `pods "${ref.name}" not found`)
      if (ref.uid && ref.uid !== p.metadata.uid) return status(409, 'Conflict', `the UID in the bound object reference (${ref.uid}) does not match the UID in record. The object might have been deleted and then recreated`)
      pod = { name: p.metadata.name, uid: p.metadata.uid! }
    }
    const now = Math.floor(Date.now() / 1000)
    const claims: Claims = {
      iss: API_AUDIENCE, sub: `system:serviceaccount:${namespace}:${name}`, aud: audiences, iat: now, nbf: now, exp: now + seconds, jti: randomUUID(),
      'kubernetes.io': { namespace, serviceaccount: { name, uid: sa.metadata.uid! }, ...(pod ? { pod } : {}) },
    }
    this.issued.push({ namespace, serviceAccount: name, ...(pod ? { pod: pod.name } : {}), audiences })
    return { status: 201, body: { kind: 'TokenRequest', apiVersion: 'authentication.k8s.io/v1', metadata: { name, namespace }, spec: { audiences, expirationSeconds: seconds, boundObjectRef: ref ?? null }, status: { token: this.sign(claims), expirationTimestamp: new Date((now + seconds) * 1000).toISOString().replace(/\.\d+Z$/, 'Z') } } }
  }

  private tokenReview(body: { spec?: Record<string, unknown> }): { status: number; body: unknown } {
    const spec = body.spec ?? {}
    const asked = Array.isArray(spec.audiences) && spec.audiences.length ? (spec.audiences as string[]) : [API_AUDIENCE]
    const out = (st: Record<string, unknown>) => {
      this.reviews.push({ authenticated: st.authenticated === true, ...(typeof st.error === 'string' ? { error: st.error } : {}) })
      return { status: 201, body: { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec, status: st } }
    }
    const v = this.validate(String(spec.token ?? ''))
    if ('error' in v) return out({ authenticated: false, error: v.error, user: {} })
    const audiences = v.aud.filter((a) => asked.includes(a))
    if (audiences.length === 0) return out({ authenticated: false, error: 'token audiences are invalid', user: {} })
    const k = v['kubernetes.io']
    return out({
      authenticated: true, audiences,
      user: {
        username: v.sub, uid: k.serviceaccount.uid,
        groups: ['system:serviceaccounts', `system:serviceaccounts:${k.namespace}`, 'system:authenticated'],
        extra: { 'authentication.kubernetes.io/credential-id': [`JTI=${v.jti}`], ...(k.pod ? { 'authentication.kubernetes.io/pod-name': [k.pod.name], 'authentication.kubernetes.io/pod-uid': [k.pod.uid] } : {}) },
      },
    })
  }

  /** claims.go Validate, in its order. */
  private validate(token: string): Claims | { error: string } {
    const [h, p, s] = token.split('.')
    if (!h || !p || !s || !verify('sha256', Buffer.from(`${h}.${p}`), this.pub, Buffer.from(s, 'base64url'))) return { error: 'invalid bearer token' }
    const c = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Claims
    const now = Date.now() / 1000
    if (now > c.exp) return { error: 'service account token has expired' }
    if (now < c.nbf) return { error: 'service account token is not valid yet' }
    const k = c['kubernetes.io']
    const sa = this.lookup('serviceaccounts', k.namespace, k.serviceaccount.name)
    if (!sa) return { error: `serviceaccounts "${k.serviceaccount.name}" not found` }
    if (sa.metadata.uid !== k.serviceaccount.uid) return { error: `service account UID (${sa.metadata.uid}) does not match claim (${k.serviceaccount.uid})` }
    if (k.pod) {
      const pod = this.lookup('pods', k.namespace, k.pod.name)
      // jwt.DefaultLeeway is one minute: a pod deleted longer ago than that is gone.
      if (!pod || (pod.metadata.deletionTimestamp && Date.parse(pod.metadata.deletionTimestamp) < Date.now() - 60_000)) return { error: 'service account token has been invalidated' }
      if (pod.metadata.uid !== k.pod.uid) return { error: `pod UID (${pod.metadata.uid}) does not match service account pod ref claim (${k.pod.uid})` }
    }
    return c
  }

  private sign(claims: Claims): string {
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url')
    const input = `${b64({ alg: 'RS256', kid: 'zcni-standin' })}.${b64(claims)}`
    return `${input}.${sign('sha256', Buffer.from(input), this.key).toString('base64url')}`
  }
}

function status(code: number, reason: string, message: string): { status: number; body: unknown } {
  return { status: code, body: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code } }
}
