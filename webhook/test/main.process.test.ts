// The webhook process as deployed: config file, self-managed TLS against the API stand-in
// (the Secret ships empty, so only get/update are used), caBundle patched, a certificate
// renewed by another replica picked up without a restart, SIGTERM drains and exits 0.
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect } from 'node:tls'
import { cleanEnv, freePort } from '../../e2e/node/lib/node.ts'
import { createServingCert } from '../src/tls/certs.ts'
import { fromSecretData, toSecretData } from '../src/tls/material.ts'
import { https, startApiStandIn } from './helpers.ts'

t.test('webhook process with self-managed TLS', async (t) => {
  const { api, url, ca: apiCa } = await startApiStandIn(t, 'wh-token')
  await api.create('mutatingwebhookconfigurations', { metadata: { name: 'ziti-cni-webhook' }, webhooks: [{ name: 'a.cni.openziti.io', clientConfig: { service: { name: 'ziti-cni-webhook', namespace: 'ziti-cni-system' } } }] } as never)
  await api.create('secrets', { metadata: { name: 'ziti-cni-webhook-tls', namespace: 'ziti-cni-system' }, type: 'Opaque' } as never)
  const agentDs = (image: string) => ({ metadata: { name: 'ziti-cni-agent', namespace: 'ziti-cni-system' }, spec: { template: { spec: { containers: [{ name: 'agent', image }] } } } })
  api.put('daemonsets', agentDs('registry.example.com/ziti-cni/agent:9.9.9') as never)

  const dir = mkdtempSync(join(tmpdir(), 'zcni-wh-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'kubeconfig'), JSON.stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'c',
    clusters: [{ name: 'c', cluster: { server: url, 'certificate-authority-data': Buffer.from(apiCa.certPem).toString('base64') } }],
    users: [{ name: 'u', user: { token: 'wh-token' } }], contexts: [{ name: 'c', context: { cluster: 'c', user: 'u' } }],
  }))
  writeFileSync(join(dir, 'config.yaml'), 'logLevel: info\ntls:\n  mode: self-managed\n')
  const port = await freePort()
  const proc = spawn(process.execPath, [new URL('../src/main.ts', import.meta.url).pathname, '--config', join(dir, 'config.yaml'), '--kubeconfig', join(dir, 'kubeconfig')], {
    env: cleanEnv({ WEBHOOK_PORT: String(port), POD_NAMESPACE: 'ziti-cni-system', TLS_CHECK_INTERVAL_SECONDS: '1', DRAIN_SECONDS: '2', VALIDATOR_IMAGE_CHECK_SECONDS: '1' }), stdio: ['ignore', 'pipe', 'pipe'],
  })
  let logs = ''
  proc.stdout.on('data', (d) => { logs += d })
  proc.stderr.on('data', (d) => { logs += d })
  t.teardown(() => { proc.kill('SIGKILL') })
  const stored = () => fromSecretData(api.get('secrets', 'ziti-cni-system', 'ziti-cni-webhook-tls')?.data as Record<string, string>)
  const until = async (cond: () => boolean | Promise<boolean>, what: string) => {
    const end = Date.now() + 15_000
    while (!(await cond())) {
      if (Date.now() > end || proc.exitCode !== null) throw new Error(`${what} did not happen:\n${logs}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  await until(async () => {
    const m = stored()
    if (!m) return false
    try { return (await https(`https://127.0.0.1:${port}/readyz`, m.caBundle, 'GET', undefined, {}, 'ziti-cni-webhook.ziti-cni-system.svc')).status === 200 } catch { return false }
  }, 'ready over HTTPS')
  const material = stored()!
  t.pass('serves HTTPS with a certificate the stored CA verifies')
  const mwc = api.get('mutatingwebhookconfigurations', undefined, 'ziti-cni-webhook') as unknown as { webhooks: Array<{ clientConfig: { caBundle: string } }> }
  t.equal(Buffer.from(mwc.webhooks[0]!.clientConfig.caBundle, 'base64').toString(), material.caBundle, 'caBundle patched')
  t.notOk(api.requests.some((r) => r.method === 'POST'), 'never creates objects (RBAC: get/update/patch only)')

  const serial = () => new Promise<string>((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, ca: material.caBundle, servername: 'ziti-cni-webhook.ziti-cni-system.svc' }, () => { resolve(s.getPeerCertificate().serialNumber); s.end() })
    s.on('error', reject)
  })
  const before = await serial()
  // Another replica renews: same CA, new serving certificate in the Secret.
  const renewed = createServingCert(material.ca, { commonName: 'ziti-cni-webhook.ziti-cni-system.svc', dnsNames: ['ziti-cni-webhook.ziti-cni-system.svc'], validDays: 365 })
  const secret = api.get('secrets', 'ziti-cni-system', 'ziti-cni-webhook-tls')!
  api.put('secrets', { ...secret, data: toSecretData({ ...material, serving: renewed }) } as never)
  await until(async () => (await serial()) !== before, 'certificate swap')
  t.pass('new connections get the renewed certificate, same process')
  // The log line may trail the swap by a moment (pino writes asynchronously).
  await until(async () => /serving certificate reloaded without restart/.test(logs), 'the reload log line')
  t.match(logs, /serving certificate reloaded without restart/)

  // The validator image is the agent DaemonSet's, followed when the DaemonSet is upgraded.
  const injectedValidator = async () => {
    const review = JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'v-1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'apps', object: { metadata: { name: 'p', annotations: { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } }, spec: { containers: [{ name: 'app', image: 'x/app:1', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] } } } })
    const r = await https(`https://127.0.0.1:${port}/mutate`, material.caBundle, 'POST', review, {}, 'ziti-cni-webhook.ziti-cni-system.svc')
    const ops = JSON.parse(Buffer.from(JSON.parse(r.text).response.patch, 'base64').toString()) as Array<{ path: string; value: Array<{ name: string; image: string }> }>
    return ops.find((o) => o.path === '/spec/initContainers')!.value.find((c) => c.name === 'ziti-cni-validator')!.image
  }
  t.equal(await injectedValidator(), 'registry.example.com/ziti-cni/agent:9.9.9', 'validator image read from the agent DaemonSet')
  api.put('daemonsets', agentDs('registry.example.com/ziti-cni/agent:9.9.10') as never)
  await until(async () => (await injectedValidator()) === 'registry.example.com/ziti-cni/agent:9.9.10', 'the new agent image')
  t.pass('an agent upgrade moves the validator image, no restart')

  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)))
  const sent = Date.now()
  proc.kill('SIGTERM')
  // During the drain: not ready (the endpoint goes), yet still admitting what is in flight.
  await until(async () => (await https(`https://127.0.0.1:${port}/readyz`, material.caBundle, 'GET', undefined, {}, 'ziti-cni-webhook.ziti-cni-system.svc')).status === 503, 'readiness false')
  const review = JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'drain-1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'default', object: { metadata: { name: 'p' }, spec: { containers: [] } } } })
  const during = await https(`https://127.0.0.1:${port}/mutate`, material.caBundle, 'POST', review, {}, 'ziti-cni-webhook.ziti-cni-system.svc')
  t.equal(during.status, 200, 'admissions are still answered while draining')
  t.equal(await exited, 0, 'SIGTERM drains and exits 0')
  t.ok(Date.now() - sent >= 1900, 'it kept serving for drainSeconds')
})

t.test('a bad config file stops start-up with every problem named', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-wh-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'config.yaml'), 'sidecarUid: root\nproxy:\n  portBase: 80\n')
  const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const p = spawn(process.execPath, [new URL('../src/main.ts', import.meta.url).pathname, '--config', join(dir, 'config.yaml')], { env: cleanEnv(), stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    p.stderr.on('data', (d) => { err += d })
    p.on('exit', (code) => resolve({ code, err }))
  })
  t.equal(r.code, 2)
  t.match(r.err, /sidecarUid: must be an integer in 1-2147483647/)
  t.match(r.err, /proxy.portBase: must be an integer in 1024-65000/)
})
