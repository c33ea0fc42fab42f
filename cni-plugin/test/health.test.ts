// The agent's health and metrics port (node:http): what the kubelet's probes and Prometheus get.
import t from 'tap'
import { pino } from 'pino'
import { createAgentMetrics } from '../src/agent/metrics.ts'
import { createHealthServer } from '../src/agent/server.ts'
import { freePort } from '../../e2e/node/lib/node.ts'

t.test('/healthz, /readyz with its reason, /metrics; 404 and 405 otherwise', async (t) => {
  let ready = { ready: false, reason: 'pod cache not synced' }
  const metrics = createAgentMetrics(() => 7)
  const health = createHealthServer({ live: () => true, ready: () => ready }, metrics, pino({ level: 'silent' }))
  const port = await freePort()
  await health.listen({ host: '127.0.0.1', port })
  t.teardown(() => health.close())
  const url = (p: string) => `http://127.0.0.1:${port}${p}`
  const live = await fetch(url('/healthz'))
  t.same([live.status, await live.json()], [200, { ok: true }])
  t.equal(live.headers.get('keep-alive'), 'timeout=72', 'idle keep-alive sockets live 72 s (fastify\'s default), not node\'s 5 s')
  const notReady = await fetch(url('/readyz'))
  t.same([notReady.status, await notReady.json()], [503, ready], 'not ready: 503 with the reason')
  ready = { ready: true, reason: '' }
  t.equal((await fetch(url('/readyz?verbose')).then((r) => r.status)), 200, 'ready: 200 (a query string is ignored)')
  const m = await fetch(url('/metrics'))
  t.equal(m.headers.get('content-type'), metrics.registry.contentType)
  t.match(await m.text(), /^ziti_cni_cached_pods 7$/m, 'the gauges, collected at scrape time')
  t.equal((await fetch(url('/nope'))).status, 404)
  t.equal((await fetch(url('/healthz'), { method: 'POST' })).status, 405, 'read-only')
  const head = await fetch(url('/healthz'), { method: 'HEAD' })
  t.same([head.status, await head.text()], [200, ''], 'HEAD: the status, no body')
})
