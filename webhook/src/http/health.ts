import type { FastifyPluginAsync } from 'fastify'
import type { WebhookMetrics } from '../metrics.ts'

export interface HealthOptions {
  ready: () => boolean
  metrics: WebhookMetrics
}

/** /healthz (process alive), /readyz (serving cert loaded, not draining), /metrics. */
export const healthRoutes: FastifyPluginAsync<HealthOptions> = async (app, { ready, metrics }) => {
  app.get('/healthz', async () => ({ ok: true }))
  app.get('/readyz', async (_req, reply) => (ready() ? { ready: true } : reply.code(503).send({ ready: false })))
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()))
}
