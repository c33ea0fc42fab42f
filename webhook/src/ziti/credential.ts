// The admin credential the webhook logs in with, read from a mounted Secret. Two forms:
//   - an identity JSON, as `ziti edge enroll` writes it: {ztAPI, id: {cert, key, ca}}, PEMs
//     possibly prefixed "pem:" (sdk-golang ziti/config.go). Logs in by mutual TLS.
//   - updb: {"username": "...", "password": "..."}. Logs in with the password.
// The identity is the safer one (README "Controller credential"): its key never crosses the
// wire, a stolen session token is useless without it, and it cannot be phished or replayed.

export type ControllerCredential =
  | { kind: 'cert'; cert: string; key: string; ca: string | undefined; ztAPI: string | undefined }
  | { kind: 'updb'; username: string; password: string }

export class CredentialError extends Error {
  override readonly name = 'CredentialError'
}

const pem = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v.replace(/^pem:/, '') : undefined)

export function parseCredential(text: string): ControllerCredential {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw new CredentialError('the controller credential is not JSON: expected an identity JSON ({ztAPI, id: {cert, key, ca}}) or {"username", "password"}')
  }
  const o = (raw ?? {}) as Record<string, unknown>
  if (typeof o.id === 'object' && o.id !== null) {
    const id = o.id as Record<string, unknown>
    const cert = pem(id.cert)
    const key = pem(id.key)
    if (!cert?.includes('BEGIN CERTIFICATE') || !key?.includes('PRIVATE KEY')) throw new CredentialError('the controller credential is an identity JSON without a PEM id.cert and id.key (was it enrolled? `file:` and keystore references are not supported)')
    return { kind: 'cert', cert, key, ca: pem(id.ca), ztAPI: typeof o.ztAPI === 'string' ? o.ztAPI : undefined }
  }
  if (typeof o.username === 'string' && typeof o.password === 'string') {
    // The controller's updb limits (edge-api shared/authenticate.yml).
    if (o.username.length < 4 || o.username.length > 100) throw new CredentialError('the controller credential\'s username must be 4-100 characters')
    if (o.password.length < 5 || o.password.length > 100) throw new CredentialError('the controller credential\'s password must be 5-100 characters')
    return { kind: 'updb', username: o.username, password: o.password }
  }
  throw new CredentialError('the controller credential is neither an identity JSON (with id.cert and id.key) nor {"username", "password"}')
}
