import { Counter, Histogram, type Registry } from 'prom-client'

/** Controller calls, logins and identity lifecycle, on the identity controller's registry. */
export function createControllerMetrics(registry: Registry) {
  return {
    requests: new Counter({ name: 'ziti_cni_controller_requests_total', help: 'OpenZiti controller API calls by operation and HTTP status ("error": no answer)', labelNames: ['op', 'status'] as const, registers: [registry] }),
    duration: new Histogram({
      name: 'ziti_cni_controller_request_duration_seconds', help: 'OpenZiti controller API call latency', labelNames: ['op'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [registry],
    }),
    logins: new Counter({ name: 'ziti_cni_controller_logins_total', help: 'Logins to the OpenZiti controller by result', labelNames: ['result'] as const, registers: [registry] }),
    identities: new Counter({ name: 'ziti_cni_identities_total', help: 'Per-pod Ziti identities by lifecycle event (created, reissued, pod-deleted, reconciled-deleted)', labelNames: ['event'] as const, registers: [registry] }),
    reconciles: new Counter({ name: 'ziti_cni_reconcile_runs_total', help: 'Identity reconcile passes by result', labelNames: ['result'] as const, registers: [registry] }),
  }
}

export type ControllerMetrics = ReturnType<typeof createControllerMetrics>
