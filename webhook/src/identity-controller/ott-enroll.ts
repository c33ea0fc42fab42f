// `ziti edge enroll` for a one-time token, as the pod's enrollment step runs it: the key is
// generated here, in the pod, and only the CSR leaves it. Follows sdk-golang ziti/enroll/
// enroll.go (v1.x): the JWT's signature is checked against the key of the certificate the
// server at `iss` presents (trust on first use of that server), the CA bundle comes from its
// EST endpoint (/.well-known/est/cacerts, PKCS#7), the CSR goes to
// /edge/client/v1/enroll?method=ott&token=<jti>, and the result is the identity JSON both the
// Go tunneler and ziti-edge-tunnel load ({ztAPI, id: {cert, key, ca}}, "pem:" values).
import { generateKeyPairSync, verify, X509Certificate } from 'node:crypto'
import { request } from 'node:https'
import { connect } from 'node:tls'
import forge from 'node-forge'

export interface OttClaims { iss: string; sub: string; jti: string; exp: number }

/** The claims of an OTT enrollment JWT, or an error naming the claim that is wrong. */
export function parseOtt(jwt: string, now: number): { claims: OttClaims; signed: Buffer; signature: Buffer } {
  const [h, c, sig] = jwt.split('.')
  if (!h || !c || !sig) throw new Error('the enrollment token is not a JWT')
  let claims: Partial<OttClaims> & { em?: unknown }
  try { claims = JSON.parse(Buffer.from(c, 'base64url').toString('utf8')) } catch { throw new Error('the enrollment token\'s claims are not JSON') }
  if (claims.em !== 'ott') throw new Error(`the enrollment token's em claim is ${JSON.stringify(claims.em)}, not "ott"`)
  for (const k of ['iss', 'sub', 'jti'] as const) if (typeof claims[k] !== 'string' || !claims[k]) throw new Error(`the enrollment token has no ${k} claim`)
  if (typeof claims.exp !== 'number') throw new Error('the enrollment token has no exp claim')
  if (claims.exp * 1000 < now) throw new Error('the enrollment token has expired (exp claim)')
  if (!/^https:\/\//.test(claims.iss!)) throw new Error(`the enrollment token's iss claim ${claims.iss} is not an https URL`)
  return { claims: claims as OttClaims, signed: Buffer.from(`${h}.${c}`), signature: Buffer.from(sig, 'base64url') }
}

/** The identity file the tunnelers load. */
export function identityJson(iss: string, certChain: string, keyPem: string, caPem: string): string {
  const ztAPI = `${iss}/edge/client/v1`
  return JSON.stringify({ ztAPI, ztAPIs: [ztAPI], configTypes: null, id: { cert: `pem:${certChain}`, key: `pem:${keyPem}`, ca: `pem:${caPem}` } })
}

/** The controller refused the token: spent (INVALID_ENROLLMENT_TOKEN) or expired. Asking the
 *  identity controller again re-issues it. */
export class EnrollmentRefused extends Error {
  readonly code: string
  constructor(code: string, message: string) { super(message); this.code = code }
}

function call(url: string, opts: { method?: string; body?: string; ca?: string; pin?: string; contentType?: string }): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', timeout: 15_000, ...(opts.pin ? { rejectUnauthorized: false } : { ca: opts.ca }), headers: opts.contentType ? { 'content-type': opts.contentType } : {} }, (res) => {
      if (opts.pin) {
        const raw = (res.socket as import('node:tls').TLSSocket).getPeerCertificate().raw
        if (!raw || new X509Certificate(raw).fingerprint256 !== opts.pin) { res.destroy(); reject(new Error('the controller presented another certificate than the one that signed the token')); return }
      }
      const chunks: Buffer[] = []
      res.on('data', (b: Buffer) => chunks.push(b))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('timeout', () => req.destroy(new Error(`no answer from ${new URL(url).host} within 15 s`)))
    req.on('error', reject)
    req.end(opts.body)
  })
}

function serverCertificate(iss: string): Promise<X509Certificate> {
  const { hostname, port } = new URL(iss)
  return new Promise((resolve, reject) => {
    const s = connect({ host: hostname, port: Number(port || 443), servername: hostname, rejectUnauthorized: false }, () => {
      const raw = s.getPeerCertificate().raw
      s.end()
      if (raw) resolve(new X509Certificate(raw)); else reject(new Error(`${iss} presented no certificate`))
    })
    s.setTimeout(15_000, () => s.destroy(new Error(`no TLS answer from ${iss} within 15 s`)))
    s.on('error', reject)
  })
}

/** Enrolls the token; returns the identity JSON. The controller spends the token when it signs. */
export async function enrollOtt(jwt: string): Promise<string> {
  const { claims, signed, signature } = parseOtt(jwt, Date.now())
  const server = await serverCertificate(claims.iss)
  if (!verify('sha256', signed, server.publicKey, signature)) throw new Error(`the enrollment token's signature does not match the key of ${claims.iss}`)
  const cas = await call(`${claims.iss}/.well-known/est/cacerts`, { pin: server.fingerprint256 })
  if (cas.status !== 200) throw new Error(`${claims.iss}/.well-known/est/cacerts answered ${cas.status}`)
  const p7 = forge.pkcs7.messageFromAsn1(forge.asn1.fromDer(forge.util.decode64(cas.body.replace(/\s+/g, '')))) as unknown as { certificates: forge.pki.Certificate[] }
  const ca = p7.certificates.map((x) => forge.pki.certificateToPem(x)).join('')
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } })
  const csr = forge.pki.createCertificationRequest()
  csr.publicKey = forge.pki.publicKeyFromPem(publicKey)
  csr.setSubject([{ name: 'commonName', value: claims.sub }])
  csr.sign(forge.pki.privateKeyFromPem(privateKey) as forge.pki.rsa.PrivateKey, forge.md.sha256.create())
  const r = await call(`${claims.iss}/edge/client/v1/enroll?method=ott&token=${encodeURIComponent(claims.jti)}`, { method: 'POST', ca, body: forge.pki.certificationRequestToPem(csr), contentType: 'application/x-pem-file' })
  if (r.status !== 200) {
    let code = ''
    try { code = (JSON.parse(r.body) as { error?: { code?: string } }).error?.code ?? '' } catch { /* not the controller's envelope */ }
    if (r.status === 400 && (code === 'INVALID_ENROLLMENT_TOKEN' || code === 'ENROLLMENT_EXPIRED')) throw new EnrollmentRefused(code, `the controller refused the enrollment token: ${code}`)
    throw new Error(`the controller answered the enrollment with ${r.status}: ${r.body.slice(0, 200)}`)
  }
  const cert = r.body.trim().startsWith('{') ? (JSON.parse(r.body) as { data: { cert: string } }).data.cert : r.body
  return identityJson(claims.iss, cert, privateKey, ca)
}
