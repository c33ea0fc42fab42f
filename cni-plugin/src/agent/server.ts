// Two listeners: the CNI socket (root-only unix socket the executable talks to) and the
// health/metrics port for the kubelet and Prometheus. Each is an encapsulated fastify app.
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { AGENT_CNI_PATH, AGENT_STATUS_PATH, type AgentRequest, type AgentResponse } from '../cni/agent-protocol.ts'
import { CniError, ErrorCode } from '../cni/spec.ts'
import type { AgentMetrics } from './metrics.ts'
import type { Programmer } from './programmer.ts'

const requestSchema = {
  type: 'object',
  required: ['command', 'containerId', 'netns', 'ifName'],
  additionalProperties: false,
  properties: {
    command: { enum: ['ADD', 'DEL', 'CHECK', 'GC'] },
    containerId: { type: 'string', maxLength: 256 },
    netns: { type: 'string', maxLength: 4096 },
    ifName: { type: 'string', maxLength: 64 },
    pod: {
      type: 'object', required: ['namespace', 'name'], additionalProperties: false,
      properties: { namespace: { type: 'string', maxLength: 253 }, name: { type: 'string', maxLength: 253 }, uid: { type: 'string', maxLength: 64 } },
    },
    validAttachments: { type: 'array', maxItems: 100000, items: { type: 'object', properties: { containerID: { type: 'string' }, ifname: { type: 'string' } } } },
  },
} as const

export function createCniServer(programmer: Programmer, metrics: AgentMetrics, log: Logger): FastifyInstance {
  const app = Fastify({ loggerInstance: log.child({ component: 'cni-server' }) as FastifyBaseLogger, bodyLimit: 8 << 20, logController: new LogController({ disableRequestLogging: true }) })
  app.get(AGENT_STATUS_PATH, async () => ({ ok: true }))
  app.post<{ Body: AgentRequest }>(AGENT_CNI_PATH, { schema: { body: requestSchema } }, async (request): Promise<AgentResponse> => {
    const body: AgentRequest = { ...request.body, validAttachments: request.body.validAttachments ?? [] }
    const started = process.hrtime.bigint()
    const reqLog = request.log.child({ command: body.command, containerId: body.containerId, pod: body.pod ? `${body.pod.namespace}/${body.pod.name}` : undefined })
    let res: AgentResponse
    try {
      if ((body.command === 'ADD' || body.command === 'CHECK') && !body.pod) {
        throw new CniError(ErrorCode.InvalidEnv, `${body.command} needs the pod's namespace and name`)
      }
      res = await programmer.handle(body)
    } catch (e) {
      const err = e instanceof CniError ? e : new CniError(ErrorCode.IoFailure, `agent error: ${(e as Error).message}`)
      res = { ok: false, code: err.code, msg: err.message, ...(err.details ? { details: err.details } : {}) }
    }
    const outcome = res.ok ? (res.intercepted ? 'programmed' : 'passthrough') : `error_${res.code}`
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    metrics.requests.inc({ command: body.command, outcome })
    metrics.latency.observe({ command: body.command, outcome }, seconds)
    if (res.ok) reqLog.info({ outcome, ms: Math.round(seconds * 1000) }, `${body.command} ${outcome}`)
    else reqLog.warn({ outcome, code: res.code, details: res.details, ms: Math.round(seconds * 1000) }, res.msg)
    return res
  })
  return app
}

export interface HealthProbe {
  live(): boolean
  ready(): { ready: boolean; reason: string }
}

export function createHealthServer(probe: HealthProbe, metrics: AgentMetrics, log: Logger): FastifyInstance {
  const app = Fastify({ loggerInstance: log.child({ component: 'health' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) })
  app.get('/healthz', async (_req, reply) => reply.code(probe.live() ? 200 : 500).send({ ok: probe.live() }))
  app.get('/readyz', async (_req, reply) => {
    const r = probe.ready()
    return reply.code(r.ready ? 200 : 503).send(r)
  })
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()))
  return app
}
