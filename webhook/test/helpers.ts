import { request } from 'node:https'
import type { AddressInfo } from 'node:net'
import { pino } from 'pino'
import { validateConfig, type WebhookConfig } from '../src/config.ts'
import { createWebhookMetrics } from '../src/metrics.ts'
import { buildServer } from '../src/server.ts'
import { createCa, createServingCert, type KeyPair } from '../src/tls/certs.ts'

let cached: { ca: KeyPair; serving: KeyPair } | undefined
export function testCerts(): { ca: KeyPair; serving: KeyPair } {
  if (!cached) {
    const ca = createCa({ commonName: 'test-ca', validDays: 2 })
    cached = { ca, serving: createServingCert(ca, { commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], validDays: 2 }) }
  }
  return cached
}

/**
 * The tests' config: the defaults plus a tproxy tunneler (none is configured by default) and
 * one namespace the platform locks down (egress.namespaces).
 */
export const TEST_CONFIG = { tproxy: { image: 'registry.example.com/ziti-cni/tproxy-tunneler:1.0', clusterDns: ['10.96.0.10'] }, tun: { image: 'ghcr.io/ziti-cni/ziti-edge-tunnel-attach:1.7.12' }, validator: { image: 'ghcr.io/ziti-cni/agent:0.1.0' }, egress: { namespaces: { payments: { default: 'ziti-only', allowCidrs: ['10.0.9.0/24'], allowPorts: ['8443'] } } } }

export async function startWebhook(config: WebhookConfig = validateConfig(TEST_CONFIG, {})) {
  const { ca, serving } = testCerts()
  const metrics = createWebhookMetrics()
  const app = buildServer({ config, metrics, log: pino({ level: 'silent' }), tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `https://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  return { app, url, ca: ca.certPem, metrics }
}

export function https(url: string, ca: string, method: string, body?: string, headers: Record<string, string> = {}, servername?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, ca, ...(servername ? { servername } : {}), headers: { ...(body ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) } : {}), ...headers } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

/** An API server stand-in on HTTPS with one bearer token, closed when the test ends. */
export async function startApiStandIn(t: { teardown: (fn: () => unknown) => void }, token: string, o: { chaos?: string } = {}) {
  const { KubeApiStandIn } = await import('../../e2e/node/lib/kube-api.ts')
  const ca = createCa({ commonName: 'api-ca', validDays: 1 })
  const serving = createServingCert(ca, { commonName: 'api', ipAddresses: ['127.0.0.1'], validDays: 1 })
  const api = new KubeApiStandIn({ cert: serving.certPem, key: serving.keyPem, tokens: [token], ...(o.chaos !== undefined ? { chaos: o.chaos } : {}) })
  const url = await api.listen()
  t.teardown(() => api.close())
  return { api, url, ca }
}
