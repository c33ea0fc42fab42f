import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export function createWebhookMetrics() {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'ziti_cni_webhook_' })
  return {
    registry,
    requests: new Counter({ name: 'ziti_cni_admission_requests_total', help: 'Admission requests by outcome', labelNames: ['outcome'] as const, registers: [registry] }),
    latency: new Histogram({
      name: 'ziti_cni_admission_duration_seconds', help: 'Time to answer an admission request', labelNames: ['outcome'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers: [registry],
    }),
    injections: new Counter({ name: 'ziti_cni_injections_total', help: 'Sidecars injected, by mode', labelNames: ['mode'] as const, registers: [registry] }),
    rejections: new Counter({ name: 'ziti_cni_rejections_total', help: 'Pods refused at admission', registers: [registry] }),
    certRenewals: new Counter({ name: 'ziti_cni_webhook_cert_reloads_total', help: 'Serving certificate (re)loads', registers: [registry] }),
  }
}

export type WebhookMetrics = ReturnType<typeof createWebhookMetrics>
