// Two listeners: the CNI socket (root-only unix socket the executable talks to) and the
// health/metrics port (node:http: three read-only GET routes; fastify cost the agent ~6 MiB of
// resident memory for them, bench/rss.ts) for the kubelet and Prometheus.
import { createServer as createHttpServer } from 'node:http'
import type { Logger } from 'pino'
import { createServer, type Server } from 'node:net'
import { execRequestProblem, MAX_MESSAGE_BYTES, renderExecReply, requestProblem, type AgentRequest, type AgentResponse, type ExecRequest } from '../cni/agent-protocol.ts'
import { CniError, CURRENT_VERSION, ErrorCode } from '../cni/spec.ts'
import { handleExec } from './exec.ts'
import type { AgentMetrics } from './metrics.ts'
import type { Programmer } from './programmer.ts'

/** CNI requests being handled now: background work (the drift pass) yields to pod start-up. */
export const cniInFlight = { count: 0 }

/**
 * The CNI socket: one JSON request line in, one answer out, per connection: a JSON line, or for
 * EXEC the raw reply (agent-protocol.ts). Root-only (0600), on the node; the executable (its
 * front end, or the Node plugin) is its only client. `ownSocket` is the path it listens on as
 * the plugin's config names it (an EXEC for another agent's socket is refused).
 */
export function createCniServer(programmer: Pick<Programmer, 'handle'>, metrics: AgentMetrics, log: Logger, ownSocket: string): Server {
  const cniLog = log.child({ component: 'cni-server' })
  const answer = async (line: string): Promise<string | Buffer> => {
    let body: unknown
    try {
      body = JSON.parse(line)
    } catch {
      return JSON.stringify({ ok: false, code: ErrorCode.DecodeFailure, msg: 'agent request is not JSON' }) + '\n'
    }
    if ((body as { command?: unknown } | null)?.command !== 'EXEC') return JSON.stringify(await handle(body)) + '\n'
    const problem = execRequestProblem(body)
    if (problem) {
      cniLog.warn({ problem }, 'refused an EXEC request')
      return renderExecReply(1, JSON.stringify(new CniError(ErrorCode.DecodeFailure, `agent EXEC request: ${problem}`).toJSON(CURRENT_VERSION)) + '\n')
    }
    return handleExec(body as ExecRequest, { ownSocket, handle, log: cniLog })
  }
  const handle = async (decoded: unknown): Promise<AgentResponse> => {
    let body = decoded as AgentRequest
    const problem = requestProblem(body)
    if (problem) return { ok: false, code: ErrorCode.DecodeFailure, msg: `agent request: ${problem}` }
    if (body.command === 'PING') return { ok: true, intercepted: false }
    body = { ...body, validAttachments: body.validAttachments ?? [] }
    const started = process.hrtime.bigint()
    const reqLog = cniLog.child({ command: body.command, containerId: body.containerId, pod: body.pod ? `${body.pod.namespace}/${body.pod.name}` : undefined })
    let res: AgentResponse
    try {
      if ((body.command === 'ADD' || body.command === 'CHECK') && !body.pod) {
        throw new CniError(ErrorCode.InvalidEnv, `${body.command} needs the pod's namespace and name`)
      }
      cniInFlight.count++
      try { res = await programmer.handle(body as AgentRequest & { command: 'ADD' | 'DEL' | 'CHECK' | 'GC' }) } finally { cniInFlight.count-- }
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
  }
  return createServer((sock) => {
    const chunks: Buffer[] = []
    let size = 0
    sock.on('error', () => { /* the client went away; nothing to answer */ })
    sock.on('data', (c: Buffer) => {
      chunks.push(c)
      size += c.length
      if (size > MAX_MESSAGE_BYTES) { sock.end(JSON.stringify({ ok: false, code: ErrorCode.DecodeFailure, msg: 'agent request is too large' }) + '\n'); return }
      if (!c.includes(10)) return
      sock.pause()
      void answer(Buffer.concat(chunks).toString('utf8')).then((reply) => sock.end(reply))
    })
  })
}

export interface HealthProbe {
  live(): boolean
  ready(): { ready: boolean; reason: string }
}

export interface HealthServer {
  listen(addr: { host: string; port: number }): Promise<void>
  close(): Promise<void>
}

/** GET (or HEAD) /healthz, /readyz and /metrics; anything else 404, other methods 405. */
export function createHealthServer(probe: HealthProbe, metrics: AgentMetrics, log: Logger): HealthServer {
  const healthLog = log.child({ component: 'health' })
  const server = createHttpServer((req, res) => {
    const send = (status: number, type: string, body: string) => {
      res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) })
      res.end(req.method === 'HEAD' ? undefined : body)
    }
    const json = (status: number, body: unknown) => send(status, 'application/json; charset=utf-8', JSON.stringify(body))
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: 'Method Not Allowed' })
    if (path === '/healthz') return json(probe.live() ? 200 : 500, { ok: probe.live() })
    if (path === '/readyz') { const r = probe.ready(); return json(r.ready ? 200 : 503, r) }
    if (path === '/metrics') {
      return void metrics.registry.metrics().then((text) => send(200, metrics.registry.contentType, text), (e: unknown) => {
        healthLog.error({ err: (e as Error).message }, 'cannot render metrics')
        json(500, { error: 'cannot render metrics' })
      })
    }
    json(404, { error: 'Not Found', path })
  })
  // fastify's default (72 s), longer than a scrape interval: node's own 5 s closes idle
  // keep-alive sockets under clients that are about to reuse them ("socket hang up").
  server.keepAliveTimeout = 72_000
  return {
    listen: ({ host, port }) => new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, host, () => { server.off('error', reject); resolve() }) }),
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }),
  }
}
