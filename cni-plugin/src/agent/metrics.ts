import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export function createAgentMetrics(cachedPods: () => number = () => 0) {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'ziti_cni_agent_' })
  return {
    registry,
    requests: new Counter({ name: 'ziti_cni_requests_total', help: 'CNI requests handled by the agent', labelNames: ['command', 'outcome'] as const, registers: [registry] }),
    latency: new Histogram({
      name: 'ziti_cni_request_duration_seconds', help: 'CNI request latency in the agent', labelNames: ['command', 'outcome'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [registry],
    }),
    lookups: new Counter({ name: 'ziti_cni_pod_lookups_total', help: 'Pod lookups by source and outcome', labelNames: ['source', 'outcome'] as const, registers: [registry] }),
    reinserts: new Counter({ name: 'ziti_cni_conflist_reinserts_total', help: 'Times the primary CNI config was rewritten without ziti-cni', labelNames: ['primary'] as const, registers: [registry] }),
    repairs: new Counter({ name: 'ziti_cni_repairs_total', help: 'Pods found running without interception, by action', labelNames: ['action'] as const, registers: [registry] }),
    cachedPods: new Gauge({ name: 'ziti_cni_cached_pods', help: 'Pods in the node-scoped cache', registers: [registry], collect() { this.set(cachedPods()) } }),
  }
}

export type AgentMetrics = ReturnType<typeof createAgentMetrics>
