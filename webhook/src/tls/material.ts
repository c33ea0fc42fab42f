// Pure decisions about the webhook's TLS material: keep what is stored while it is valid,
// otherwise mint what is missing or about to expire. Callers do the storing.
import { certExpiry, createCa, createServingCert, signedBy, type KeyPair } from './certs.ts'

export interface TlsMaterial {
  ca: KeyPair
  serving: KeyPair
  /** PEM bundle for caBundle: the current CA, plus the previous one while it may still be trusted. */
  caBundle: string
}

export interface TlsPolicy {
  serviceName: string
  namespace: string
  validityDays: number
  renewBeforeDays: number
}

export function dnsNames(p: Pick<TlsPolicy, 'serviceName' | 'namespace'>): string[] {
  return [p.serviceName, `${p.serviceName}.${p.namespace}`, `${p.serviceName}.${p.namespace}.svc`, `${p.serviceName}.${p.namespace}.svc.cluster.local`]
}

const DAY = 86_400_000

/** Returns material to store, or undefined when `stored` is good as it is. */
export function decideMaterial(stored: TlsMaterial | undefined, p: TlsPolicy, now: Date): { material: TlsMaterial; reason: string } | undefined {
  const renewBy = (pem: string) => certExpiry(pem).getTime() - p.renewBeforeDays * DAY <= now.getTime()
  let ca = stored?.ca
  let reason = stored ? '' : 'no stored certificate'
  let previousCa: string | undefined
  if (ca && renewBy(ca.certPem)) {
    previousCa = ca.certPem
    ca = undefined
    reason = 'CA is about to expire'
  }
  // The CA lives ten times longer than serving certificates, so it rarely rotates.
  ca ??= createCa({ commonName: `${p.serviceName}-ca`, validDays: p.validityDays * 10, now })
  let serving = stored?.serving
  if (serving && !reason && renewBy(serving.certPem)) reason = 'serving certificate is about to expire'
  if (serving && !reason && !signedBy(serving.certPem, ca.certPem)) reason = 'serving certificate is not signed by the stored CA'
  if (!reason) return undefined
  serving = createServingCert(ca, { commonName: `${p.serviceName}.${p.namespace}.svc`, dnsNames: dnsNames(p), validDays: p.validityDays, now })
  return { material: { ca, serving, caBundle: previousCa ? ca.certPem + previousCa : ca.certPem }, reason }
}

/** Secret data keys (kubernetes.io/tls plus the CA). */
export function toSecretData(m: TlsMaterial): Record<string, string> {
  const b64 = (s: string) => Buffer.from(s).toString('base64')
  return { 'tls.crt': b64(m.serving.certPem), 'tls.key': b64(m.serving.keyPem), 'ca.crt': b64(m.caBundle), 'ca.key': b64(m.ca.keyPem) }
}

export function fromSecretData(data: Record<string, string> | undefined): TlsMaterial | undefined {
  const get = (k: string) => (data?.[k] ? Buffer.from(data[k], 'base64').toString('utf8') : undefined)
  const [crt, key, caBundle, caKey] = [get('tls.crt'), get('tls.key'), get('ca.crt'), get('ca.key')]
  if (!crt || !key || !caBundle || !caKey) return undefined
  const caCert = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\r?\n?/.exec(caBundle)?.[0]
  if (!caCert) return undefined
  return { ca: { certPem: caCert, keyPem: caKey }, serving: { certPem: crt, keyPem: key }, caBundle }
}
