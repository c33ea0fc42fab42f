// Assembles the HTTPS fastify app from its encapsulated plugins.
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { WebhookConfig } from './config.ts'
import { healthRoutes } from './http/health.ts'
import { mutateRoutes } from './http/mutate.ts'
import type { WebhookMetrics } from './metrics.ts'

export interface ServerOptions {
  config: WebhookConfig
  metrics: WebhookMetrics
  log: Logger
  tls: { cert: string; key: string }
  ready: () => boolean
}

export function buildServer(opts: ServerOptions): FastifyInstance {
  const app = Fastify({
    loggerInstance: opts.log as FastifyBaseLogger,
    https: { cert: opts.tls.cert, key: opts.tls.key, minVersion: 'TLSv1.2' },
    bodyLimit: opts.config.bodyLimitBytes,
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    connectionTimeout: 30_000,
    keepAliveTimeout: 65_000,
  }) as unknown as FastifyInstance
  app.register(mutateRoutes, { config: opts.config, metrics: opts.metrics })
  app.register(healthRoutes, { ready: opts.ready, metrics: opts.metrics })
  return app
}
