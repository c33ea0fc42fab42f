// ziti-cni-identity-controller: creates and deletes the Ziti identities of `identity: auto`
// pods and hands each pod its enrollment token (README "Controller-driven identities").
import { KubeConfig } from '@kubernetes/client-node'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { ConfigError, type WebhookConfig } from '../config.ts'
import { loadConfig } from '../load-config.ts'
import { withIdentityConfig } from './config-file.ts'
import { enrollServer } from './enroll-server.ts'
import { startIdentityController } from './runtime.ts'

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { config: { type: 'string' }, 'identity-config': { type: 'string' }, kubeconfig: { type: 'string' } }, strict: true })
  let config: WebhookConfig
  try {
    config = values['identity-config'] ? withIdentityConfig(values.config, values['identity-config'], process.env) : loadConfig(values.config, process.env)
    if (!config.controller.url) throw new ConfigError(['controller.url: is required for the identity controller'])
  } catch (e) {
    if (e instanceof ConfigError) { process.stderr.write(`${e.message}\n`); process.exit(2) }
    throw e
  }
  const log = pino({ level: config.logLevel, base: { component: 'identity-controller' } })
  const kc = new KubeConfig()
  if (values.kubeconfig) kc.loadFromFile(values.kubeconfig)
  else kc.loadFromCluster()
  const registry = new Registry()
  const rt = await startIdentityController(config.controller, kc, registry, log)
  const c = config.controller
  const server = enrollServer(rt.enrollment, { cert: readFileSync(c.enrollCertFile, 'utf8'), key: readFileSync(c.enrollKeyFile, 'utf8') }, registry, log)
  await new Promise<void>((r) => server.listen(c.enrollPort, '0.0.0.0', r))
  log.info({ port: c.enrollPort, cluster: rt.cluster, controller: c.url }, 'identity controller running')
  const shutdown = () => { rt.stop(); server.close(() => process.exit(0)) }
  process.once('SIGTERM', shutdown)
  process.once('SIGINT', shutdown)
}

main().catch((e: unknown) => {
  process.stderr.write(`ziti-cni-identity-controller: ${(e as Error).stack ?? e}\n`)
  process.exit(1)
})
