// pnpm bench:auto — admission latency with the OpenZiti controller in the path: a pod with
// `identity: auto` (identity create, JWT read, service and config lists, Secret create)
// against the same pod with a Secret identity, interleaved in the same run. The fake
// controller and the API stand-in run in another process pinned to CPU 1; the webhook and
// this sequential client share CPU 0, as one admission at a time is what latency means here.
import { spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { request } from 'node:https'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { KubeConfig } from '@kubernetes/client-node'
import { pino } from 'pino'
import { validateConfig } from '../src/config.ts'
import { createWebhookMetrics } from '../src/metrics.ts'
import { buildServer } from '../src/server.ts'
import { createCa, createServingCert } from '../src/tls/certs.ts'
import { startController } from '../src/ziti/setup.ts'

const N = Number(process.env.BENCH_ADMISSIONS ?? 300)
spawnSync('taskset', ['-p', '-c', '0', String(process.pid)], { stdio: 'ignore' })
const world = spawn('taskset', ['-c', '1', process.execPath, fileURLToPath(new URL('./controller-world.ts', import.meta.url))], { stdio: ['ignore', 'pipe', 'inherit'] })
const info = await new Promise<{ controllerUrl: string; credential: string; apiUrl: string; apiCa: string }>((resolve, reject) => {
  let buf = ''
  world.stdout!.on('data', (d: Buffer) => { buf += d.toString(); if (buf.includes('\n')) resolve(JSON.parse(buf.split('\n')[0]!)) })
  world.once('exit', (c) => reject(new Error(`controller world exited ${c}`)))
})
const kc = new KubeConfig()
kc.loadFromOptions({ clusters: [{ name: 'c', server: info.apiUrl, caData: Buffer.from(info.apiCa).toString('base64') }], users: [{ name: 'u', token: 'bench' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
const config = validateConfig({ validator: { image: 'ghcr.io/ziti-cni/agent:0.1.0' }, controller: { url: info.controllerUrl } }, {})
const metrics = createWebhookMetrics()
const rt = startController(config.controller, kc, metrics.registry, pino({ level: 'silent' }), { namespace: 'ziti-cni-system', credentialText: info.credential, autoStart: false })
const ca = createCa({ commonName: 'bench-ca', validDays: 1 })
const serving = createServingCert(ca, { commonName: 'localhost', ipAddresses: ['127.0.0.1'], validDays: 1 })
const app = buildServer({ config, metrics, log: pino({ level: 'silent' }), tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true, provisioner: rt.provisioner })
await app.listen({ host: '127.0.0.1', port: 0 })
const port = (app.server.address() as AddressInfo).port

function review(auto: boolean): string {
  const annotations: Record<string, string> = auto
    ? { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'bench' }
    : { 'cni.openziti.io/identity-secret': 'web-id', 'cni.openziti.io/services': Array.from({ length: 20 }, (_, k) => `svc-${k}.ziti:443=svc-${k}`).join(', ') }
  return JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: {
    uid: randomUUID(), kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'apps', name: '',
    object: { metadata: { generateName: 'web-', namespace: 'apps', annotations }, spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] } },
  } })
}

function post(body: string): Promise<{ ms: number; allowed: boolean }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint()
    const req = request({ host: '127.0.0.1', port, path: '/mutate', method: 'POST', ca: ca.certPem, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, allowed: (JSON.parse(Buffer.concat(chunks).toString()) as { response: { allowed: boolean } }).response.allowed }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

const lat = { secret: [] as number[], auto: [] as number[] }
let refused = 0
for (let i = 0; i < 20; i++) { await post(review(true)); await post(review(false)) } // warm-up
for (let i = 0; i < N; i++) {
  const a = await post(review(true))
  const s = await post(review(false))
  if (!a.allowed || !s.allowed) refused++
  lat.auto.push(a.ms)
  lat.secret.push(s.ms)
}
const q = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]!
const row = (name: string, xs: number[]) => `${name.padEnd(34)} p50 ${q(xs, 0.5).toFixed(2).padStart(7)} ms   p99 ${q(xs, 0.99).toFixed(2).padStart(7)} ms`
process.stdout.write(`admission latency, ${N} sequential admissions each, interleaved (fake controller on localhost, 20 dialable services)\n`)
process.stdout.write(`${row('Secret identity, 20 services', lat.secret)}\n${row('identity: auto (controller path)', lat.auto)}\n`)
process.stdout.write(`ratio auto/secret: p50 ${(q(lat.auto, 0.5) / q(lat.secret, 0.5)).toFixed(1)}x, p99 ${(q(lat.auto, 0.99) / q(lat.secret, 0.99)).toFixed(1)}x; refused: ${refused}\n`)
const calls = (await metrics.registry.getSingleMetric('ziti_cni_controller_requests_total')!.get()).values
process.stdout.write(`controller calls: ${calls.map((v) => `${v.labels.op}/${v.labels.status}=${v.value}`).join(' ')}; logins: ${(await metrics.registry.getSingleMetric('ziti_cni_controller_logins_total')!.get()).values.map((v) => `${v.labels.result}=${v.value}`).join(' ')}\n`)
rt.stop()
await app.close()
world.kill()
// A refused admission would make the figures meaningless.
if (refused > 0) process.exit(1)
