// `pnpm -s run auto-drift -n NAMESPACE POD [--config FILE] [--credential FILE] [--kubeconfig FILE]`:
// for a pod with `identity: auto`, what it intercepts (fixed at admission) against what its
// identity may dial now. The reader credential needs identity.read, service.read, config.read.
// Exit 0: the same; 3: drift.
import { KubeConfig, CoreV1Api, type V1Pod } from '@kubernetes/client-node'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { ANNOTATION_IDENTITY, ANNOTATION_INTERCEPTION, AUTO, LIMITS, SIDECAR_NAME, parseIntent } from '@ziti-cni/shared'
import { identityName } from '../ziti/identity.ts'
import { quote } from '../ziti/zitiql.ts'
import { ConfigError, validateConfig } from '../config.ts'
import { loadConfig } from '../load-config.ts'
import { ControllerClient } from '../ziti/controller.ts'
import { parseCredential } from '../ziti/credential.ts'
import { drift, listenersFromArgs, podInterception } from '../ziti/drift.ts'
import { createControllerMetrics } from '../ziti/metrics.ts'
import { autoServices } from '../ziti/services.ts'
import { makeApiClient } from '../kube-client.ts'

const callerPath = (p: string) => resolve(process.env.INIT_CWD ?? process.cwd(), p)
class UsageError extends Error {}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, strict: true, allowPositionals: true, options: {
    namespace: { type: 'string', short: 'n', default: 'default' }, config: { type: 'string' }, credential: { type: 'string' }, kubeconfig: { type: 'string' },
  } })
  if (positionals.length !== 1) throw new UsageError('usage: auto-drift -n NAMESPACE POD [--config FILE] [--credential FILE] [--kubeconfig FILE]')
  const config = values.config ? loadConfig(callerPath(values.config), process.env) : validateConfig({}, process.env)
  if (!config.controller.url) throw new UsageError('no controller: set controller.url in --config (or ZITI_CONTROLLER_URL)')
  const kc = new KubeConfig()
  if (values.kubeconfig) kc.loadFromFile(callerPath(values.kubeconfig))
  else kc.loadFromDefault()
  const pod: V1Pod = await makeApiClient(kc, CoreV1Api).readNamespacedPod({ namespace: values.namespace, name: positionals[0]! })
  const ann = pod.metadata?.annotations ?? {}
  if (ann[ANNOTATION_IDENTITY] !== AUTO || !pod.metadata?.uid) throw new UsageError(`pod ${values.namespace}/${positionals[0]} does not use ${ANNOTATION_IDENTITY}: auto`)
  const name = identityName(config.controller.identityPrefix, { namespace: values.namespace, name: pod.metadata.name!, uid: pod.metadata.uid })
  const intent = parseIntent(ann[ANNOTATION_INTERCEPTION] ?? '')
  if (intent.mode !== 'proxy') throw new UsageError('only proxy-mode pods take their services from the controller')
  const credential = parseCredential(readFileSync(callerPath(values.credential ?? config.controller.credentialFile), 'utf8'))
  const ca = config.controller.caFile ? readFileSync(config.controller.caFile, 'utf8') : credential.kind === 'cert' ? credential.ca : undefined
  if (!ca) throw new UsageError('no CA for the controller: set controller.caFile, or use an identity credential with id.ca')
  const client = new ControllerClient({ url: config.controller.url, ca, credential, metrics: createControllerMetrics(new Registry()), log: pino({ level: 'silent' }) })
  try {
    // The identity controller names each identity after its pod's uid (ziti/identity.ts).
    const found = (await client.listIdentities(`name = ${quote(name)}`, Date.now() + 15_000)).find((i) => i.name === name)
    if (!found) throw new UsageError(`no identity ${name} at the controller (not created yet, or the pod is gone)`)
    const id = found.id
    const now = autoServices(await client.dialableServices(id, Date.now() + 15_000), { maxPortsPerService: config.controller.maxPortsPerService, maxEntries: LIMITS.services })
    const sidecar = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find((c) => c.name === SIDECAR_NAME)
    const listeners = listenersFromArgs(sidecar?.args ?? [])
    for (const [service, port] of now.fixedPorts) if (!listeners.has(port)) listeners.set(port, service)
    const d = drift(podInterception(intent, pod.spec?.hostAliases ?? [], listeners), now)
    const out = process.stdout
    out.write(`pod ${values.namespace}/${pod.metadata?.name}, identity ${name} (${id})\n`)
    const section = (title: string, xs: string[]) => { out.write(`${title}: ${xs.length === 0 ? 'none' : ''}\n`); for (const x of xs) out.write(`  ${x}\n`) }
    section('intercepted and still granted', d.unchanged)
    section('granted now, not intercepted (recreate the pod to pick them up)', d.added)
    section('intercepted, no longer granted (dials fail at the controller)', d.removed)
    for (const w of now.warnings) out.write(`note: ${w.replace(/^ziti-cni: /, '')}\n`)
    return d.added.length || d.removed.length ? 3 : 0
  } finally {
    client.close()
  }
}

run(process.argv.slice(2)).then((code) => { process.exitCode = code }, (e: unknown) => {
  if (e instanceof UsageError || e instanceof ConfigError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`auto-drift: ${(e as Error).message}\n`)
    process.exitCode = 2
  } else {
    process.stderr.write(`auto-drift: ${(e as Error).message}\n`)
    process.exitCode = 1
  }
})
