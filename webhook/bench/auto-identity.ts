// pnpm bench:auto — admission latency of a pod with `identity: auto` against the same pod with
// a Secret identity, interleaved in the same run. Admission is pure now (the identity controller
// creates the identity later, README "Controller-driven identities"), so this measures what the
// attribute policy and the injected reference cost: no controller, no API server in the path.
// The webhook and this sequential client share CPU 0. The whole path (identity created,
// enrolled, first intercepted reply, a burst, leaks) is e2e/bench-auto-identity.ts (root).
import { spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { request } from 'node:https'
import type { AddressInfo } from 'node:net'
import { pino } from 'pino'
import { validateConfig } from '../src/config.ts'
import { createWebhookMetrics } from '../src/metrics.ts'
import { buildServer } from '../src/server.ts'
import { createCa, createServingCert } from '../src/tls/certs.ts'

const N = Number(process.env.BENCH_ADMISSIONS ?? 300)
spawnSync('taskset', ['-p', '-c', '0', String(process.pid)], { stdio: 'ignore' })
const ca = createCa({ commonName: 'bench-ca', validDays: 1 })
const serving = createServingCert(ca, { commonName: 'localhost', ipAddresses: ['127.0.0.1'], validDays: 1 })
const config = validateConfig({ validator: { image: 'ghcr.io/ziti-cni/agent:0.1.0' }, controller: { url: 'https://ziti.example.com:1280', cluster: 'bench', enrollCa: ca.certPem, enrollImage: 'ghcr.io/ziti-cni/webhook:0.1.0', attributePolicy: [{ namespace: 'apps', prefixes: ['bench'] }] } }, {})
const metrics = createWebhookMetrics()
const app = buildServer({ config, metrics, log: pino({ level: 'silent' }), tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true })
await app.listen({ host: '127.0.0.1', port: 0 })
const port = (app.server.address() as AddressInfo).port

const services = Array.from({ length: 20 }, (_, k) => `svc-${k}.ziti:443=svc-${k}`).join(', ')
function review(auto: boolean): string {
  const annotations: Record<string, string> = auto
    ? { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'bench', 'cni.openziti.io/services': services }
    : { 'cni.openziti.io/identity-secret': 'web-id', 'cni.openziti.io/services': services }
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
process.stdout.write(`admission latency, ${N} sequential admissions each, interleaved (20 services listed)\n`)
process.stdout.write(`${row('Secret identity', lat.secret)}\n${row('identity: auto (policy + reference)', lat.auto)}\n`)
process.stdout.write(`ratio auto/secret: p50 ${(q(lat.auto, 0.5) / q(lat.secret, 0.5)).toFixed(1)}x, p99 ${(q(lat.auto, 0.99) / q(lat.secret, 0.99)).toFixed(1)}x; refused: ${refused}\n`)
await app.close()
