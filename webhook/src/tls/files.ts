// `files` TLS mode: the serving pair is a mounted Secret (cert-manager's Certificate, or any
// kubernetes.io/tls Secret) and the webhook needs no Kubernetes rights for it. The kubelet
// updates a Secret volume atomically (kubernetes pkg/volume/util/atomic_writer.go: a new
// `..<timestamp>` dir, a `..data_tmp` symlink to it renamed over `..data`; the visible files are
// symlinks through `..data`), so the pair is re-read on any event in the mount's directory and
// swapped only when it is complete and consistent. A subPath mount is never updated (kubelet
// docs): mount the whole volume.
import { X509Certificate, createPrivateKey } from 'node:crypto'
import { readFileSync, watch, type FSWatcher } from 'node:fs'
import { dirname } from 'node:path'

export interface FilePair { cert: string; key: string }

/** What a loaded pair is, for logs and tests. */
export interface PairInfo { serial: string; fingerprint256: string; subject: string; notAfter: string }

/** A pair that cannot be served; the message names the config key and the file. */
export class TlsFilesError extends Error {}

export interface PairFiles {
  certFile: string
  keyFile: string
  /** The name the API server dials (`<service>.<namespace>.svc`): the certificate must cover it. */
  serverName: string
}

/** Reads and checks the pair: both PEM, the key is the certificate's, valid now, for serverName. */
export function readPair(f: PairFiles, now = new Date()): FilePair & { info: PairInfo } {
  const read = (key: string, file: string) => {
    try {
      return readFileSync(file, 'utf8')
    } catch (e) {
      throw new TlsFilesError(`${key} ${file}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); mount the serving certificate's Secret there, or use tls.mode self-managed`)
    }
  }
  const cert = read('tls.certFile', f.certFile)
  const key = read('tls.keyFile', f.keyFile)
  let x509: X509Certificate
  try {
    x509 = new X509Certificate(cert)
  } catch (e) {
    throw new TlsFilesError(`tls.certFile ${f.certFile}: not a PEM certificate (${(e as Error).message})`)
  }
  let privateKey
  try {
    privateKey = createPrivateKey(key)
  } catch (e) {
    throw new TlsFilesError(`tls.keyFile ${f.keyFile}: not a PEM private key (${(e as Error).message})`)
  }
  if (!x509.checkPrivateKey(privateKey)) throw new TlsFilesError(`tls.keyFile ${f.keyFile}: is not the key of the certificate in tls.certFile ${f.certFile}`)
  if (new Date(x509.validTo) <= now) throw new TlsFilesError(`tls.certFile ${f.certFile}: the certificate expired at ${new Date(x509.validTo).toISOString()}`)
  if (new Date(x509.validFrom) > now) throw new TlsFilesError(`tls.certFile ${f.certFile}: the certificate is not valid before ${new Date(x509.validFrom).toISOString()}`)
  if (!x509.checkHost(f.serverName)) throw new TlsFilesError(`tls.certFile ${f.certFile}: the certificate does not cover ${f.serverName}, the name the API server calls (its names: ${x509.subjectAltName ?? 'none'})`)
  return { cert, key, info: { serial: x509.serialNumber, fingerprint256: x509.fingerprint256, subject: x509.subject, notAfter: new Date(x509.validTo).toISOString() } }
}

/**
 * Calls onChange with each new consistent pair; a half-written or invalid one is reported to
 * onError and the current pair stays in use. A 30 s poll backs up the directory watch.
 */
export function watchPair(f: PairFiles, onChange: (p: FilePair & { info: PairInfo }) => void, onError: (e: Error) => void): () => void {
  let last: FilePair = readPair(f)
  let timer: NodeJS.Timeout | undefined
  const check = () => {
    timer = undefined
    try {
      const next = readPair(f)
      if (next.cert !== last.cert || next.key !== last.key) { last = next; onChange(next) }
    } catch (e) {
      onError(e as Error)
    }
  }
  const dirs = [...new Set([dirname(f.certFile), dirname(f.keyFile)])]
  // Debounced: one swap of `..data` is several events.
  const watchers: FSWatcher[] = dirs.map((d) => watch(d, () => { timer ??= setTimeout(check, 100) }))
  const poll = setInterval(check, 30_000)
  poll.unref()
  return () => { for (const w of watchers) w.close(); clearInterval(poll); if (timer) clearTimeout(timer) }
}
