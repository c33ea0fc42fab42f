// ziti-cni-webhook: the admission server. Config and TLS are settled before it listens;
// SIGTERM drains in-flight requests (readiness goes false first).
import { KubeConfig } from '@kubernetes/client-node'
import type { Server } from 'node:https'
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { ConfigError, type WebhookConfig } from './config.ts'
import { followClusterDns } from './cluster-dns-watch.ts'
import { loadConfig } from './load-config.ts'
import { withIdentityConfig } from './identity-controller/config-file.ts'
import { createWebhookMetrics } from './metrics.ts'
import { buildServer } from './server.ts'
import { readPair, TlsFilesError, watchPair, type PairFiles } from './tls/files.ts'
import { SelfManagedTls } from './tls/self-managed.ts'
import { ValidatorImage } from './validator-image.ts'

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { config: { type: 'string' }, 'identity-config': { type: 'string' }, kubeconfig: { type: 'string' } }, strict: true })
  let config: WebhookConfig
  try {
    // identity: auto: the controller section comes from the file the identity controller reads too.
    config = values['identity-config'] ? withIdentityConfig(values.config, values['identity-config'], process.env) : loadConfig(values.config, process.env)
  } catch (e) {
    if (e instanceof ConfigError) { process.stderr.write(`${e.message}\n`); process.exit(2) }
    throw e
  }
  const log = pino({ level: config.logLevel, base: { component: 'webhook' } })
  const metrics = createWebhookMetrics()
  let draining = false
  const stops: Array<() => void> = []

  let pair: { cert: string; key: string }
  let selfManaged: SelfManagedTls | undefined
  // files mode: no Kubernetes call for TLS at all (the Secret is mounted, caBundle injected).
  const files: PairFiles = { certFile: config.tls.certFile, keyFile: config.tls.keyFile, serverName: `${config.tls.serviceName}.${config.tls.namespace}.svc` }
  let kc: KubeConfig | undefined
  const kube = () => {
    if (!kc) {
      kc = new KubeConfig()
      if (values.kubeconfig) kc.loadFromFile(values.kubeconfig)
      else kc.loadFromCluster()
    }
    return kc
  }
  if (config.validator.enabled && !config.validator.image) {
    const follower = new ValidatorImage(kube(), config.tls.namespace, config.validator.daemonSet, log)
    config.validator.image = await follower.resolve()
    stops.push(follower.follow((image) => { config.validator.image = image }))
  }
  if (config.tproxy.clusterDns.length === 0) stops.push(await followClusterDns(kube(), config, log))
  if (config.tls.mode === 'self-managed') {
    const kc = kube()
    selfManaged = new SelfManagedTls(kc, config.tls, log)
    const m = await selfManaged.ensure()
    pair = { cert: m.serving.certPem, key: m.serving.keyPem }
  } else {
    try {
      const first = readPair(files)
      pair = first
      log.info({ ...first.info, certFile: files.certFile }, 'serving the mounted certificate')
    } catch (e) {
      if (e instanceof TlsFilesError) { process.stderr.write(`ziti-cni-webhook: ${e.message}\n`); process.exit(2) }
      throw e
    }
  }
  metrics.certRenewals.inc()

  // identity: auto is only validated and referenced here; the identity controller (its own
  // Deployment) holds the controller credential.
  if (config.controller.url) log.info({ enrollUrl: config.controller.enrollUrl }, 'identity: auto enabled (references the identity controller)')
  const app = buildServer({ config, metrics, log, tls: pair, ready: () => !draining })
  const swap = (next: { cert: string; key: string; info?: object }) => {
    if (next.cert === pair.cert && next.key === pair.key) return
    pair = next
    ;(app.server as Server).setSecureContext({ cert: next.cert, key: next.key, minVersion: 'TLSv1.2' })
    metrics.certRenewals.inc()
    log.info({ ...next.info }, 'serving certificate reloaded without restart')
  }
  if (selfManaged) {
    const everyMs = Number(process.env.TLS_CHECK_INTERVAL_SECONDS ?? '3600') * 1000
    const timer = setInterval(() => {
      selfManaged.ensure().then((m) => swap({ cert: m.serving.certPem, key: m.serving.keyPem }), (e: unknown) => log.error({ err: e }, 'TLS renewal check failed'))
    }, everyMs)
    timer.unref()
    stops.push(() => clearInterval(timer))
  } else {
    stops.push(watchPair(files, swap, (e) => log.error({ err: e.message }, 'the mounted certificate changed but cannot be served; keeping the current one')))
  }

  await app.listen({ host: config.listen.host, port: config.listen.port })
  log.info({ port: config.listen.port, tls: config.tls.mode }, 'webhook listening')

  const shutdown = async (signal: string) => {
    // Readiness goes false at once, but the API server keeps sending admissions to this pod
    // until its endpoint removal has propagated: keep serving for drainSeconds, then close.
    log.info({ signal, drainSeconds: config.drainSeconds }, 'draining')
    draining = true
    await new Promise((r) => setTimeout(r, config.drainSeconds * 1000))
    for (const s of stops) s()
    await app.close()
    process.exit(0)
  }
  process.once('SIGTERM', () => void shutdown('SIGTERM'))
  process.once('SIGINT', () => void shutdown('SIGINT'))
}

main().catch((e: unknown) => {
  process.stderr.write(`ziti-cni-webhook: ${(e as Error).stack ?? e}\n`)
  process.exit(1)
})
