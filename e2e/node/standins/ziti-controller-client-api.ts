// The Edge client API routes that upstream's C SDK calls, as ziti-sdk-c 1.18.1 (the version
// ziti-edge-tunnel v1.18.2 pins; ../shared/third-party/ziti-edge-tunnel/src) shows them. Cited
// as [SDK file:line] (library/ unless said otherwise), with the field names of its JSON models
// (includes/ziti/ziti_model.h, inc_internal/internal_model.h: XX(field, type, kind, jsonName)).
// Hooked into FakeZitiController.route after the session check; answers undefined for routes it
// does not own. The SDK's flow with this controller:
//   GET /version                                          [ziti_ctrl.c:704] (the controller's own route)
//   GET /edge/client/v1/external-jwt-signers?limit&offset [ziti_ctrl.c:782, ziti.c:694] no session
//   POST /authenticate?method=cert                        [legacy_auth.c:340-343] (controller's route)
//   GET /current-api-session                              [legacy_auth.c:307, ziti_ctrl.c:751]
//   GET /current-identity                                 [ziti_ctrl.c:742]
//   GET /.well-known/est/cacerts (under the client path)  [ziti_ctrl.c:949, ziti_enroll.c:391] (controller's route)
//   GET /current-identity/edge-routers?limit&offset       [ziti_ctrl.c:816]
//   GET /current-api-session/service-updates              [ziti_ctrl.c:797]
//   GET /services?configTypes=all&limit&offset            [ziti_ctrl.c:806] (controller's route)
//   POST /sessions {serviceId, type}                      [ziti_ctrl.c:886]
// The SDK pages with limit=25 (ziti.c:105) and stops when total <= offset + limit
// [ziti_ctrl.c:456]; the controller's own page() gives that shape.
import { createPrivateKey, randomUUID, webcrypto } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import 'reflect-metadata' // @peculiar/x509's dependency injection needs it loaded first
import * as x509 from '@peculiar/x509'
import { serial } from '../../../webhook/src/tls/certs.ts'

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

const C = '/edge/client/v1'

/** An edge router the SDK dials: `supportedProtocols.tls` is the URL it connects to [internal_model.h:39-44, ziti.c:1680-1685]. */
export interface FakeEdgeRouter { name: string; tls: string }

/** A dial session: its token goes into the router's Connect [connect.c:405]. */
export interface FakeDialSession { id: string; token: string; apiSessionToken: string; identityId: string; serviceId: string; type: 'Dial' | 'Bind' }

export interface ClientApiSession { token: string; id: string; identityId: string; lastActivity: number }

/** What the module needs of the controller (kept narrow so it stays one job). */
export interface ClientApiHost {
  readonly ca: { certPem: string }
  readonly sessionTimeoutMs: number
  readonly identities: Map<string, { id: string; name: string }>
  readonly services: Map<string, { id: string; name: string; encryptionRequired: boolean }>
  permissionsFor(identity: never, service: never): string[]
  page(url: URL, items: unknown[], s: never): { status: number; body: unknown }
}

export type ClientApiAnswer = { status: number; body: unknown; raw?: string } | undefined

export class ZitiClientApi {
  readonly routers: FakeEdgeRouter[] = []
  readonly dialSessions = new Map<string, FakeDialSession>()
  /** lastChangeAt of the service list [internal_model.h:196-197]; bumped by serviceChanged(). */
  private lastChangeAt = new Date().toISOString()
  private readonly host: ClientApiHost

  constructor(host: ClientApiHost) {
    this.host = host
  }

  addRouter(name: string, tlsUrl: string): FakeEdgeRouter {
    const r = { name, tls: tlsUrl }
    this.routers.push(r)
    return r
  }

  serviceChanged(): void {
    this.lastChangeAt = new Date().toISOString()
  }

  /** The token's dial session, if the router is asked to connect with it. */
  dialSession(token: string): FakeDialSession | undefined {
    return [...this.dialSessions.values()].find((d) => d.token === token)
  }

  /** For the router stand-in: a live Dial session's service, if `dialToken` is one of `identityId`'s. */
  dialService(dialToken: string, identityId: string): { name: string; encryptionRequired: boolean } | undefined {
    const d = this.dialSession(dialToken)
    if (!d || d.identityId !== identityId || d.type !== 'Dial') return undefined
    const svc = this.host.services.get(d.serviceId)
    const who = this.host.identities.get(identityId)
    if (!svc || !who || !this.host.permissionsFor(who as never, svc as never).includes('Dial')) return undefined
    return { name: svc.name, encryptionRequired: svc.encryptionRequired }
  }

  /** Routes needing no API session. */
  public(method: string, path: string, url: URL): ClientApiAnswer {
    // [ziti.c:694, ziti_ctrl.c:778-784] listed before authentication; a controller with none
    // answers an empty page (ZT routes/external_jwt_signer_router.go is public on the client API).
    if (method === 'GET' && path === `${C}/external-jwt-signers`) return this.emptyPage(url)
    return undefined
  }

  /** Routes needing the API session `s` (already checked and slid by the controller). */
  authed(method: string, path: string, url: URL, body: Buffer, s: ClientApiSession, req: IncomingMessage): ClientApiAnswer {
    const ok = (data: unknown) => ({ status: 200, body: { data, meta: {} } })
    const who = this.host.identities.get(s.identityId)
    if (!who) return undefined
    if (method === 'GET' && path === `${C}/current-api-session`) {
      // ZITI_API_SESSION_MODEL [internal_model.h:60-77]. `id` must stay the same across refreshes:
      // legacy_session_cb compares old and new ids (legacy_auth.c:263) to tell a refresh from a
      // new login.
      const expiresAt = new Date(s.lastActivity + this.host.sessionTimeoutMs).toISOString()
      return ok({
        id: s.id, token: s.token, identityId: who.id, identity: { id: who.id, name: who.name },
        expiresAt, expirationSeconds: Math.floor(this.host.sessionTimeoutMs / 1000),
        updatedAt: new Date(s.lastActivity).toISOString(), cachedLastActivityAt: new Date(s.lastActivity).toISOString(),
        lastActivityAt: new Date(s.lastActivity).toISOString(),
        isMfaRequired: false, isMfaComplete: false, authQueries: [], postureQueries: [],
        improperClientCertChain: false, isCertExtendable: false, isCertExtendRequested: false, isCertKeyRollRequested: false,
      })
    }
    if (method === 'GET' && path === `${C}/current-identity`) {
      // ZITI_IDENTITY_DATA_MODEL [internal_model.h:31-36]
      return ok({ id: who.id, name: who.name, appData: {}, defaultHostingPrecedence: 'default', defaultHostingCost: 0, serviceHostingPrecedences: {}, serviceHostingCosts: {} })
    }
    if (method === 'GET' && path === `${C}/current-identity/edge-routers`) {
      // ZITI_EDGE_ROUTER_MODEL [internal_model.h:42-44]: name, supportedProtocols.tls
      return this.host.page(url, this.routers.map((r) => ({ name: r.name, supportedProtocols: { tls: r.tls }, hostname: new URL(r.tls).hostname, isOnline: true })), s as never)
    }
    if (method === 'GET' && path === `${C}/current-api-session/service-updates`) {
      return ok({ lastChangeAt: this.lastChangeAt })
    }
    if (method === 'POST' && path === `${C}/sessions`) {
      // body {"serviceId": "...", "type": "Dial"} [ziti_ctrl.c:876-890]; reply ZITI_SESSION_MODEL
      // [internal_model.h:49-55]. A service the identity has no such policy for: 404 as the
      // controller does (ZT routes/session_router.go -> NOT_FOUND for an inaccessible service).
      let parsed: { serviceId?: string; type?: string }
      try { parsed = JSON.parse(body.toString('utf8')) as typeof parsed } catch { return { status: 400, body: { error: { code: 'COULD_NOT_PARSE_BODY', message: 'The body of the request could not be parsed' }, meta: {} } } }
      const svc = parsed.serviceId ? this.host.services.get(parsed.serviceId) : undefined
      const type = parsed.type === 'Bind' ? 'Bind' : parsed.type === 'Dial' ? 'Dial' : undefined
      if (!svc || !type || !this.host.permissionsFor(who as never, svc as never).includes(type)) {
        return { status: 404, body: { error: { code: 'NOT_FOUND', message: 'The resource requested was not found or is no longer available', requestId: randomUUID() }, meta: {} } }
      }
      const d: FakeDialSession = { id: randomUUID(), token: randomUUID(), apiSessionToken: s.token, identityId: who.id, serviceId: svc.id, type }
      this.dialSessions.set(d.id, d)
      void req
      return { status: 201, body: { data: { id: d.id, token: d.token, apiSessionId: s.id, serviceId: svc.id, type, edgeRouters: this.routers.map((r) => ({ name: r.name, supportedProtocols: { tls: r.tls }, urls: { tls: r.tls } })) }, meta: {} } }
    }
    return undefined
  }

  private emptyPage(url: URL) {
    const limit = Number(url.searchParams.get('limit') ?? 10) || 10
    const offset = Number(url.searchParams.get('offset') ?? 0) || 0
    return { status: 200, body: { data: [], meta: { pagination: { limit, offset, totalCount: 0 }, filterableFields: [] } } }
  }
}

/**
 * The client certificate for an enrollment CSR, signed by the controller's CA, or undefined when
 * the CSR does not parse or its signature does not verify (MISSING_OR_INVALID_CSR). The C SDK's
 * CSR carries an EC P-256 key (tlsuv src/openssl/keys.c:717-719, used by ziti_enroll.c:351),
 * which the controller accepts as it accepts RSA (ZT model/enrollment_mod_ott.go); node-forge
 * only handles RSA, so CSRs go through @peculiar/x509 on WebCrypto.
 */
export async function certFromCsr(csrPem: string, ca: { certPem: string; keyPem: string }, commonName: string): Promise<string | undefined> {
  let csr: x509.Pkcs10CertificateRequest
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem)
    if (!await csr.verify()) return undefined
  } catch {
    return undefined
  }
  const alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
  const der = createPrivateKey(ca.keyPem).export({ type: 'pkcs8', format: 'der' })
  const signingKey = await webcrypto.subtle.importKey('pkcs8', der, alg, false, ['sign'])
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${commonName}`,
    issuer: new x509.X509Certificate(ca.certPem).subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: alg,
    publicKey: csr.publicKey,
    signingKey: signingKey as unknown as x509.X509CertificateCreateWithKeyParams['signingKey'],
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
  })
  return `${cert.toString('pem')}\n`
}
