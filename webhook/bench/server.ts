// One server process for the benchmark: `webhook` (the real app) or `baseline` (a bare fastify
// HTTPS hello-world with the same TLS). Prints its port, then serves until killed.
import Fastify from 'fastify'
import { pino } from 'pino'
import type { AddressInfo } from 'node:net'
import { validateConfig } from '../src/config.ts'
import { createWebhookMetrics } from '../src/metrics.ts'
import { buildServer } from '../src/server.ts'

const [kind, cert, key] = [process.argv[2], Buffer.from(process.argv[3]!, 'base64').toString(), Buffer.from(process.argv[4]!, 'base64').toString()]
function baseline() {
  const app = Fastify({ https: { cert, key }, bodyLimit: 6 * 1024 * 1024 })
  app.post('/mutate', async () => ({ hello: 'world' }))
  return app
}
// The webhook logs at info in production; the benchmark keeps that cost in.
const app = kind === 'webhook'
  ? buildServer({ config: validateConfig({}, {}), metrics: createWebhookMetrics(), log: pino({ level: 'info' }, pino.destination('/dev/null')), tls: { cert, key }, ready: () => true })
  : baseline()
await app.listen({ host: '127.0.0.1', port: 0 })
process.stdout.write(`${(app.server.address() as AddressInfo).port}\n`)
