// The real webhook (same fastify app as in the image) on an HTTPS port of this machine.
import type { AddressInfo } from 'node:net'
import { KubeConfig } from '@kubernetes/client-node'
import { pino } from 'pino'
import { validateConfig } from '../../../webhook/src/config.ts'
import { createWebhookMetrics } from '../../../webhook/src/metrics.ts'
import { buildServer } from '../../../webhook/src/server.ts'
import { createCa, createServingCert } from '../../../webhook/src/tls/certs.ts'
import { startController, type ControllerRuntime } from '../../../webhook/src/ziti/setup.ts'

/** With `controller`: identity: auto through the controller, with the given credential. */
export async function startWebhook(raw: object = {}, controller?: { kubeconfig: string; credential: string; replica: string }) {
  const ca = createCa({ commonName: 'ziti-cni-webhook-ca', validDays: 1 })
  const serving = createServingCert(ca, { commonName: 'ziti-cni-webhook.ziti-cni-system.svc', dnsNames: ['ziti-cni-webhook.ziti-cni-system.svc'], ipAddresses: ['127.0.0.1'], validDays: 1 })
  const config = validateConfig(raw, {})
  const metrics = createWebhookMetrics()
  const log = pino({ level: process.env.ZCNI_E2E_WEBHOOK_LOG ?? 'silent' })
  let rt: ControllerRuntime | undefined
  if (controller) {
    const kc = new KubeConfig()
    kc.loadFromFile(controller.kubeconfig)
    rt = startController(config.controller, kc, metrics.registry, log, { namespace: 'ziti-cni-system', identity: controller.replica, credentialText: controller.credential })
  }
  const app = buildServer({ config, metrics, log, tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true, provisioner: rt?.provisioner })
  await app.listen({ host: '127.0.0.1', port: 0 })
  return {
    app, metrics, controller: rt,
    admission: { url: `https://127.0.0.1:${(app.server.address() as AddressInfo).port}/mutate`, ca: ca.certPem },
    close: async () => { rt?.stop(); await app.close() },
  }
}
