// Pure certificate minting with node-forge: a CA and a serving certificate signed by it.
// No files, no Kubernetes: the self-managed TLS mode and the tests build on this.
import forge from 'node-forge'

export interface KeyPair {
  certPem: string
  keyPem: string
}

export interface CertOptions {
  commonName: string
  /** DNS names and IP addresses for subjectAltName. */
  dnsNames?: string[]
  ipAddresses?: string[]
  validDays: number
  now?: Date
}

export function serial(): string {
  // A positive, minimally encoded 16-byte DER INTEGER: top bit clear (positive) and the first
  // byte non-zero (a leading 0x00 before a byte < 0x80 is "illegal padding" to OpenSSL, which
  // a '0' + hex prefix produced for one serial in 16).
  const bytes = forge.random.getBytesSync(16)
  return (((bytes.charCodeAt(0) & 0x7f) | 0x40).toString(16)) + forge.util.bytesToHex(bytes.slice(1))
}

function newCert(publicKey: forge.pki.PublicKey, opts: CertOptions): forge.pki.Certificate {
  const cert = forge.pki.createCertificate()
  cert.publicKey = publicKey
  cert.serialNumber = serial()
  const now = opts.now ?? new Date()
  cert.validity.notBefore = new Date(now.getTime() - 5 * 60_000) // tolerate clock skew
  cert.validity.notAfter = new Date(now.getTime() + opts.validDays * 86_400_000)
  cert.setSubject([{ name: 'commonName', value: opts.commonName }])
  return cert
}

export function createCa(opts: CertOptions): KeyPair {
  const keys = forge.pki.rsa.generateKeyPair(2048)
  const cert = newCert(keys.publicKey, opts)
  cert.setIssuer(cert.subject.attributes)
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ])
  cert.sign(keys.privateKey, forge.md.sha256.create())
  return { certPem: forge.pki.certificateToPem(cert), keyPem: forge.pki.privateKeyToPem(keys.privateKey) }
}

export function createServingCert(ca: KeyPair, opts: CertOptions): KeyPair {
  const caCert = forge.pki.certificateFromPem(ca.certPem)
  const caKey = forge.pki.privateKeyFromPem(ca.keyPem)
  const keys = forge.pki.rsa.generateKeyPair(2048)
  const cert = newCert(keys.publicKey, opts)
  cert.setIssuer(caCert.subject.attributes)
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      altNames: [
        ...(opts.dnsNames ?? []).map((value) => ({ type: 2, value })),
        ...(opts.ipAddresses ?? []).map((ip) => ({ type: 7, ip })),
      ],
    },
  ])
  cert.sign(caKey, forge.md.sha256.create())
  return { certPem: forge.pki.certificateToPem(cert), keyPem: forge.pki.privateKeyToPem(keys.privateKey) }
}

/** notAfter of a PEM certificate. */
export function certExpiry(certPem: string): Date {
  return forge.pki.certificateFromPem(certPem).validity.notAfter
}

/** True when `cert` was signed by `ca` (used to decide whether a stored pair is still usable). */
export function signedBy(certPem: string, caPem: string): boolean {
  try {
    return forge.pki.certificateFromPem(caPem).verify(forge.pki.certificateFromPem(certPem))
  } catch {
    return false
  }
}
