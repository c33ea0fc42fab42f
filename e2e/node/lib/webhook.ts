// The real webhook (same fastify app as in the image) on an HTTPS port of this machine, and
// the identity controller (same runtime as its image) with its enrollment endpoint.
import type { AddressInfo } from 'node:net'
import type { Server } from 'node:https'
import { KubeConfig } from '@kubernetes/client-node'
import { pino } from 'pino'
import { validateConfig } from '../../../webhook/src/config.ts'
import { createWebhookMetrics } from '../../../webhook/src/metrics.ts'
import { buildServer } from '../../../webhook/src/server.ts'
import { createCa, createServingCert, type KeyPair } from '../../../webhook/src/tls/certs.ts'
import { enrollServer } from '../../../webhook/src/identity-controller/enroll-server.ts'
import { startIdentityController, type IdentityRuntime } from '../../../webhook/src/identity-controller/runtime.ts'

export async function startWebhook(raw: object = {}) {
  const ca = createCa({ commonName: 'ziti-cni-webhook-ca', validDays: 1 })
  const serving = createServingCert(ca, { commonName: 'ziti-cni-webhook.ziti-cni-system.svc', dnsNames: ['ziti-cni-webhook.ziti-cni-system.svc'], ipAddresses: ['127.0.0.1'], validDays: 1 })
  const config = validateConfig(raw, {})
  const metrics = createWebhookMetrics()
  const log = pino({ level: process.env.ZCNI_E2E_WEBHOOK_LOG ?? 'silent' })
  const app = buildServer({ config, metrics, log, tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true })
  await app.listen({ host: '127.0.0.1', port: 0 })
  return {
    app, metrics, config,
    admission: { url: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}/mutate`, ca: ca.certPem },
    close: async () => { await app.close() },
  }
}

/** The enrollment endpoint's CA and serving certificate, for an address the pods reach. */
export function enrollmentTls(host: string): { ca: KeyPair; serving: KeyPair } {
  const ca = createCa({ commonName: 'ziti-cni-identity-controller-ca', validDays: 1 })
  return { ca, serving: createServingCert(ca, { commonName: 'ziti-cni-identity-controller', ipAddresses: [host], validDays: 1 }) }
}

/** One identity-controller replica: its own Lease identity, the enrollment endpoint on host:port. */
export async function startIdentityControllerReplica(raw: object, opts: { kubeconfig: string; credential: string; replica: string; tls: { cert: string; key: string }; host: string; port: number }) {
  const config = validateConfig(raw, {})
  const kc = new KubeConfig()
  kc.loadFromFile(opts.kubeconfig)
  const registry = createWebhookMetrics().registry
  const log = pino({ level: process.env.ZCNI_E2E_WEBHOOK_LOG ?? 'silent' })
  const rt: IdentityRuntime = await startIdentityController(config.controller, kc, registry, log, { identity: opts.replica, credentialText: opts.credential })
  const server: Server = enrollServer(rt.enrollment, opts.tls, registry, log)
  await new Promise<void>((r) => server.listen(opts.port, opts.host, r))
  let closed = false
  return {
    rt, registry,
    port: (server.address() as AddressInfo).port,
    /** The replica stops (its pod died): no more renewals, no endpoint. */
    close: async () => {
      if (closed) return
      closed = true
      rt.stop()
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
    },
  }
}
