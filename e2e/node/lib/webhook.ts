// The real webhook (same fastify app as in the image) on an HTTPS port of this machine.
import type { AddressInfo } from 'node:net'
import { pino } from 'pino'
import { validateConfig } from '../../../webhook/src/config.ts'
import { createWebhookMetrics } from '../../../webhook/src/metrics.ts'
import { buildServer } from '../../../webhook/src/server.ts'
import { createCa, createServingCert } from '../../../webhook/src/tls/certs.ts'

export async function startWebhook(raw: object = {}) {
  const ca = createCa({ commonName: 'ziti-cni-webhook-ca', validDays: 1 })
  const serving = createServingCert(ca, { commonName: 'ziti-cni-webhook.ziti-cni-system.svc', dnsNames: ['ziti-cni-webhook.ziti-cni-system.svc'], ipAddresses: ['127.0.0.1'], validDays: 1 })
  const config = validateConfig(raw, {})
  const app = buildServer({ config, metrics: createWebhookMetrics(), log: pino({ level: 'silent' }), tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true })
  await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, admission: { url: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}/mutate`, ca: ca.certPem }, close: () => app.close() }
}
