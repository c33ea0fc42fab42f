// TLS: the pure renewal decisions, then self-managed mode against the API stand-in (Secret,
// caBundle patch, concurrent replicas), then the running server swapping certificates.
import t from 'tap'
import { KubeConfig } from '@kubernetes/client-node'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect } from 'node:tls'
import { pino } from 'pino'
import { certExpiry, createCa, createServingCert, signedBy } from '../src/tls/certs.ts'
import { decideMaterial, fromSecretData, toSecretData } from '../src/tls/material.ts'
import { SelfManagedTls } from '../src/tls/self-managed.ts'
import { readPair, TlsFilesError, watchPair } from '../src/tls/files.ts'
import { X509Certificate } from 'node:crypto'
import { startApiStandIn } from './helpers.ts'

const policy = { serviceName: 'ziti-cni-webhook', namespace: 'ziti-cni-system', validityDays: 30, renewBeforeDays: 7 }
const DAY = 86_400_000

t.test('decideMaterial: create, keep, renew', async (t) => {
  const now = new Date('2026-11-28T00:00:00Z')
  const first = decideMaterial(undefined, policy, now)!
  t.equal(first.reason, 'no stored certificate')
  t.ok(signedBy(first.material.serving.certPem, first.material.ca.certPem))
  t.equal(decideMaterial(first.material, policy, new Date(now.getTime() + 10 * DAY)), undefined, 'kept while valid')
  const renewed = decideMaterial(first.material, policy, new Date(now.getTime() + 24 * DAY))!
  t.equal(renewed.reason, 'serving certificate is about to expire')
  t.equal(renewed.material.ca.certPem, first.material.ca.certPem, 'same CA, so caBundle stays valid')
  t.ok(certExpiry(renewed.material.serving.certPem) > certExpiry(first.material.serving.certPem))
  const caRotated = decideMaterial(first.material, policy, new Date(now.getTime() + 295 * DAY))!
  t.equal(caRotated.reason, 'CA is about to expire')
  t.ok(caRotated.material.caBundle.includes(first.material.ca.certPem), 'the previous CA stays in caBundle during rotation')
  t.same(fromSecretData(toSecretData(first.material)), first.material, 'Secret data round-trips')
})

t.test('self-managed mode against the API stand-in', async (t) => {
  const { api, url, ca } = await startApiStandIn(t, 'webhook-token')
  await api.create('mutatingwebhookconfigurations', { metadata: { name: 'ziti-cni-webhook' }, webhooks: [{ name: 'a.ziti-cni.openziti.io', clientConfig: { service: { name: 'x', namespace: 'y' } } }, { name: 'b.ziti-cni.openziti.io', clientConfig: { service: { name: 'x', namespace: 'y' } } }] } as never)
  const kc = new KubeConfig()
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }],
    users: [{ name: 'u', token: 'webhook-token' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x',
  })
  const opts = { ...policy, secretName: 'ziti-cni-webhook-tls', webhookConfigName: 'ziti-cni-webhook' }
  // Two replicas starting at once settle on one Secret.
  const [a, b] = await Promise.all([new SelfManagedTls(kc, opts, pino({ level: 'silent' })).ensure(), new SelfManagedTls(kc, opts, pino({ level: 'silent' })).ensure()])
  const stored = fromSecretData(api.get('secrets', 'ziti-cni-system', 'ziti-cni-webhook-tls')?.data as Record<string, string>)!
  t.ok(stored, 'Secret created')
  t.equal(a.ca.certPem, stored.ca.certPem)
  t.equal(b.ca.certPem, stored.ca.certPem, 'both replicas trust the same CA')
  const mwc = api.get('mutatingwebhookconfigurations', undefined, 'ziti-cni-webhook') as unknown as { webhooks: Array<{ clientConfig: { caBundle: string } }> }
  t.same(mwc.webhooks.map((w) => Buffer.from(w.clientConfig.caBundle, 'base64').toString()), [stored.caBundle, stored.caBundle], 'caBundle patched into every webhook')
  // Answered ones: a chaos 429 (APF) is sent again by the client after its Retry-After.
  const patches = api.requests.filter((r) => r.method === 'PATCH' && r.status !== 429)
  t.ok(patches.length >= 1 && patches.every((p) => p.status === 200), 'caBundle set with a JSON patch')
  const before = api.requests.length
  await new SelfManagedTls(kc, opts, pino({ level: 'silent' })).ensure()
  t.notOk(api.requests.slice(before).some((r) => r.method !== 'GET'), 'a restart with valid material writes nothing')
  const later = await new SelfManagedTls(kc, opts, pino({ level: 'silent' })).ensure(new Date(Date.now() + 25 * DAY))
  t.not(later.serving.certPem, stored.serving.certPem, 'renewed before expiry')
})

t.test('files mode: a swapped pair is picked up; an inconsistent one is reported and not used', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const ca = createCa({ commonName: 'cm', validDays: 1 })
  const names = { dnsNames: ['ziti-cni-webhook.ziti-cni-system.svc'], validDays: 1 }
  const one = createServingCert(ca, { commonName: 'one', ...names })
  const two = createServingCert(ca, { commonName: 'two', ...names })
  const f = { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key'), serverName: 'ziti-cni-webhook.ziti-cni-system.svc' }
  writeFileSync(f.certFile, one.certPem)
  writeFileSync(f.keyFile, one.keyPem)
  const seen: string[] = []
  const errors: string[] = []
  const stop = watchPair(f, (p) => seen.push(p.cert), (e) => errors.push(e.message))
  t.teardown(stop)
  // Written by hand, one file after the other: the half-way state (two's cert, one's key) is
  // refused, the complete pair is taken.
  writeFileSync(f.certFile, two.certPem)
  await new Promise((r) => setTimeout(r, 400))
  t.same(seen, [], 'a certificate without its key is not served')
  t.match(errors.at(-1), /tls\.keyFile .*: is not the key of the certificate/)
  writeFileSync(f.keyFile, two.keyPem)
  const end = Date.now() + 3000
  while (!seen.includes(two.certPem) && Date.now() < end) await new Promise((r) => setTimeout(r, 50))
  t.same(seen, [two.certPem])
})

t.test('files mode: readPair names the key and the file for every unusable pair', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const ca = createCa({ commonName: 'cm', validDays: 1 })
  const good = createServingCert(ca, { commonName: 'x', dnsNames: ['wh.ns.svc'], validDays: 1 })
  const other = createServingCert(ca, { commonName: 'y', dnsNames: ['wh.ns.svc'], validDays: 1 })
  const wrongName = createServingCert(ca, { commonName: 'z', dnsNames: ['elsewhere.ns.svc'], validDays: 1 })
  const f = { certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key'), serverName: 'wh.ns.svc' }
  const write = (cert: string, key: string) => { writeFileSync(f.certFile, cert); writeFileSync(f.keyFile, key) }
  t.throws(() => readPair(f), /^tls\.certFile .*tls\.crt: cannot be read \(ENOENT\)/)
  t.ok((() => { try { readPair(f) } catch (e) { return e instanceof TlsFilesError } })(), 'a TlsFilesError: main.ts exits 2 with its message, no stack')
  write('not a certificate', good.keyPem)
  t.throws(() => readPair(f), /^tls\.certFile .*: not a PEM certificate/)
  write(good.certPem, 'not a key')
  t.throws(() => readPair(f), /^tls\.keyFile .*: not a PEM private key/)
  write(good.certPem, other.keyPem)
  t.throws(() => readPair(f), /^tls\.keyFile .*: is not the key of the certificate/)
  write(wrongName.certPem, wrongName.keyPem)
  t.throws(() => readPair(f), /does not cover wh\.ns\.svc, the name the API server calls \(its names: DNS:elsewhere\.ns\.svc\)/)
  write(good.certPem, good.keyPem)
  t.throws(() => readPair(f, new Date(Date.now() + 3 * DAY)), /the certificate expired at/)
  const ok = readPair(f)
  t.equal(ok.info.serial.toLowerCase(), new X509Certificate(good.certPem).serialNumber.toLowerCase())
})

t.test('the running server swaps its certificate without a restart', async (t) => {
  const { startWebhook, testCerts } = await import('./helpers.ts')
  const wh = await startWebhook()
  t.teardown(() => wh.app.close())
  const port = Number(new URL(wh.url).port)
  const peerCn = () => new Promise<string>((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => { resolve(String(s.getPeerCertificate().subject.CN)); s.end() })
    s.on('error', reject)
  })
  t.equal(await peerCn(), 'localhost')
  const next = createServingCert(testCerts().ca, { commonName: 'renewed', ipAddresses: ['127.0.0.1'], validDays: 2 })
  ;(wh.app.server as import('node:https').Server).setSecureContext({ cert: next.certPem, key: next.keyPem })
  t.equal(await peerCn(), 'renewed', 'new connections get the new certificate')
})

t.test('TLS_MODE (what the self-managed component sets) overrides the file, and is validated by its name', async (t) => {
  const { validateConfig } = await import('../src/config.ts')
  t.equal(validateConfig({ tls: { mode: 'files' } }, { TLS_MODE: 'self-managed' }).tls.mode, 'self-managed')
  t.equal(validateConfig({ tls: { mode: 'files' } }, {}).tls.mode, 'files')
  t.throws(() => validateConfig({}, { TLS_MODE: 'cert-manager' }), /TLS_MODE: must be self-managed or files/)
  t.equal(validateConfig({}, {}).tls.certFile, '/etc/ziti-cni-tls/tls.crt', 'beside the config mount, where the base mounts the Secret')
})
