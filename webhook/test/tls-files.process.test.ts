// The webhook process in `files` TLS mode, as deployed with cert-manager: no kubeconfig at all
// (no Kubernetes right is used for TLS), the pair read from a directory laid out as the kubelet
// lays out a Secret volume, a rotation done the kubelet's way (a new `..<timestamp>` dir, a
// `..data_tmp` symlink renamed over `..data`; kubernetes pkg/volume/util/atomic_writer.go)
// picked up without a restart, proved by real TLS handshakes that see the new serial and
// fingerprint. Missing or invalid files stop start-up with exit 2 and a message naming them.
import t from 'tap'
import { spawn } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect } from 'node:tls'
import { cleanEnv, freePort } from '../../e2e/node/lib/node.ts'
import { createCa, createServingCert, type KeyPair } from '../src/tls/certs.ts'
import { TEST_CONFIG } from './helpers.ts'

const SERVER_NAME = 'ziti-cni-webhook.ziti-cni-system.svc'
const MAIN = new URL('../src/main.ts', import.meta.url).pathname

/** A Secret volume: `..<ts>/{tls.crt,tls.key}`, `..data -> ..<ts>`, `tls.crt -> ..data/tls.crt`. */
function secretVolume(dir: string) {
  let n = 0
  const publish = (pair: KeyPair) => {
    const ts = `..2026_12_01_00_00_0${n++}.000000000`
    mkdirSync(join(dir, ts))
    writeFileSync(join(dir, ts, 'tls.crt'), pair.certPem)
    writeFileSync(join(dir, ts, 'tls.key'), pair.keyPem)
    symlinkSync(ts, join(dir, '..data_tmp'))
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
    return ts
  }
  return {
    first(pair: KeyPair) {
      publish(pair)
      for (const f of ['tls.crt', 'tls.key']) symlinkSync(join('..data', f), join(dir, f))
    },
    rotate(pair: KeyPair, previous: string) {
      const ts = publish(pair)
      rmSync(join(dir, previous), { recursive: true })
      return ts
    },
  }
}

function start(t: Tap, dir: string, tls: Record<string, string>, port: number) {
  writeFileSync(join(dir, 'config.yaml'), JSON.stringify({ ...TEST_CONFIG, tls: { mode: 'files', ...tls } }))
  const proc = spawn(process.execPath, [MAIN, '--config', join(dir, 'config.yaml')], {
    // No kubeconfig and no in-cluster env: a Kubernetes call would fail start-up.
    env: cleanEnv({ WEBHOOK_PORT: String(port), POD_NAMESPACE: 'ziti-cni-system', DRAIN_SECONDS: '0', KUBERNETES_SERVICE_HOST: '' }), stdio: ['ignore', 'pipe', 'pipe'],
  })
  let logs = ''
  proc.stdout.on('data', (d) => { logs += d })
  proc.stderr.on('data', (d) => { logs += d })
  t.teardown(() => { proc.kill('SIGKILL') })
  const exit = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)))
  return { proc, exit, logs: () => logs }
}
type Tap = { teardown: (fn: () => unknown) => void }

const peer = (port: number, ca: string) => new Promise<{ serial: string; fingerprint256: string }>((resolve, reject) => {
  const s = connect({ host: '127.0.0.1', port, ca, servername: SERVER_NAME }, () => {
    const c = s.getPeerCertificate()
    resolve({ serial: c.serialNumber.toUpperCase(), fingerprint256: c.fingerprint256 })
    s.end()
  })
  s.on('error', reject)
})
const of = (pem: string) => { const x = new X509Certificate(pem); return { serial: x.serialNumber.toUpperCase(), fingerprint256: x.fingerprint256 } }

t.test('files mode: serves the mounted certificate and picks up a kubelet-style rotation', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-wh-files-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const vol = join(dir, 'tls')
  mkdirSync(vol)
  const ca = createCa({ commonName: 'cert-manager-ca', validDays: 30 })
  const one = createServingCert(ca, { commonName: SERVER_NAME, dnsNames: [SERVER_NAME], validDays: 1 })
  const two = createServingCert(ca, { commonName: SERVER_NAME, dnsNames: [SERVER_NAME], validDays: 2 })
  const secret = secretVolume(vol)
  secret.first(one)
  const port = await freePort()
  const wh = start(t, dir, { certFile: join(vol, 'tls.crt'), keyFile: join(vol, 'tls.key') }, port)
  const until = async <T>(get: () => Promise<T>, ok: (v: T) => boolean, what: string): Promise<T> => {
    const end = Date.now() + 15_000
    for (;;) {
      try { const v = await get(); if (ok(v)) return v } catch { /* not listening yet */ }
      if (Date.now() > end || wh.proc.exitCode !== null) throw new Error(`${what} did not happen:\n${wh.logs()}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  const first = await until(() => peer(port, ca.certPem), () => true, 'an HTTPS listener')
  t.same(first, of(one.certPem), 'the handshake presents the mounted certificate (serial and SHA-256 fingerprint)')

  const ts2 = secret.rotate(two, '..2026_12_01_00_00_00.000000000')
  const second = await until(() => peer(port, ca.certPem), (p) => p.serial !== first.serial, 'the rotation')
  t.same(second, of(two.certPem), 'after the ..data swap, new handshakes present the rotated certificate')
  t.equal(wh.proc.exitCode, null, 'same process, no restart')
  await until(async () => wh.logs(), (l) => /serving certificate reloaded without restart/.test(l), 'the reload log line')
  t.match(wh.logs(), new RegExp(`"serial":"${of(two.certPem).serial}"`, 'i'), 'the log names the new serial')

  // A broken publication (a key that is not the certificate's) is refused; the good pair stays.
  const three = createServingCert(ca, { commonName: SERVER_NAME, dnsNames: [SERVER_NAME], validDays: 3 })
  secret.rotate({ certPem: three.certPem, keyPem: one.keyPem }, ts2)
  await until(async () => wh.logs(), (l) => /cannot be served; keeping the current one/.test(l), 'the refusal')
  t.same(await peer(port, ca.certPem), of(two.certPem), 'still serving the last good certificate')
  wh.proc.kill('SIGTERM')
  t.equal(await wh.exit, 0)
})

t.test('files mode: missing or invalid files stop start-up, naming the key and the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-wh-files-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const ca = createCa({ commonName: 'ca', validDays: 1 })
  const good = createServingCert(ca, { commonName: SERVER_NAME, dnsNames: [SERVER_NAME], validDays: 1 })
  const elsewhere = createServingCert(ca, { commonName: 'x', dnsNames: ['other.example.com'], validDays: 1 })
  const f = { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') }
  const cases: Array<[string, () => void, RegExp]> = [
    ['no files', () => {}, /^ziti-cni-webhook: tls\.certFile .*tls\.crt: cannot be read \(ENOENT\); mount the serving certificate's Secret there/m],
    ['a key that is not the certificate\'s', () => { writeFileSync(f.certFile, good.certPem); writeFileSync(f.keyFile, elsewhere.keyPem) }, /tls\.keyFile .*tls\.key: is not the key of the certificate/],
    ['a certificate for another name', () => { writeFileSync(f.certFile, elsewhere.certPem); writeFileSync(f.keyFile, elsewhere.keyPem) }, /does not cover ziti-cni-webhook\.ziti-cni-system\.svc/],
    ['garbage', () => { writeFileSync(f.certFile, 'garbage'); writeFileSync(f.keyFile, good.keyPem) }, /tls\.certFile .*: not a PEM certificate/],
  ]
  for (const [what, prepare, message] of cases) {
    prepare()
    const wh = start(t, dir, f, await freePort())
    t.equal(await wh.exit, 2, `${what}: exit 2`)
    t.match(wh.logs(), message, `${what}: the message says what is wrong and where`)
    t.notMatch(wh.logs(), /\n\s+at /, `${what}: no stack trace`)
  }
})
