// `pnpm run inject -f pod.yaml [-o yaml|json] [--config FILE]`: prints the mutated pod,
// like `istioctl kube-inject`, through the same review() as POST /mutate.
import type { V1Pod } from '@kubernetes/client-node'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { parse as parseYaml, stringify as toYaml } from 'yaml'
import { review } from '../admission.ts'
import { applyMutation } from '../inject/mutate.ts'
import { ConfigError, RELEASE_AGENT_IMAGE, validateConfig } from '../config.ts'
import { loadConfig } from '../load-config.ts'

class UsageError extends Error {}

/** Paths are the caller's: `pnpm run` starts us in the package dir but sets INIT_CWD. */
const callerPath = (p: string) => resolve(process.env.INIT_CWD ?? process.cwd(), p)

function run(argv: string[]): number {
  const { values } = parseArgs({
    args: argv, strict: true,
    options: { file: { type: 'string', short: 'f' }, output: { type: 'string', short: 'o', default: 'yaml' }, config: { type: 'string' }, namespace: { type: 'string', short: 'n' } },
  })
  if (!values.file) throw new UsageError('usage: inject -f POD.yaml [-o yaml|json] [--config FILE] [-n NAMESPACE]')
  if (values.output !== 'yaml' && values.output !== 'json') throw new UsageError(`-o must be yaml or json, not ${JSON.stringify(values.output)}`)
  // Offline, the default config is the built-in one unless --config names a file.
  const config = values.config ? loadConfig(callerPath(values.config), {}) : validateConfig({}, {})
  // In a cluster the validator image is read from the agent DaemonSet; offline, name this
  // release's agent image.
  if (!config.validator.image) config.validator.image = RELEASE_AGENT_IMAGE
  const text = values.file === '-' ? readFileSync(0, 'utf8') : readFileSync(callerPath(values.file), 'utf8')
  let pod: V1Pod
  try {
    pod = parseYaml(text) as V1Pod
  } catch (e) {
    throw new UsageError(`${values.file}: not YAML or JSON: ${(e as Error).message}`)
  }
  if ((pod as { kind?: string })?.kind !== 'Pod') throw new UsageError(`${values.file}: expected a Pod manifest, got kind ${JSON.stringify((pod as { kind?: string })?.kind)}`)
  const namespace = values.namespace ?? pod.metadata?.namespace ?? 'default'
  const result = review({ uid: 'offline', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace, object: pod }, config)
  for (const w of result.response.warnings ?? []) process.stderr.write(`Warning: ${w}\n`)
  if (!result.response.allowed) {
    process.stderr.write(`${result.response.status?.message}\n`)
    return 1
  }
  const mutated = result.ops ? applyMutation(pod, result.ops) : pod
  process.stdout.write(values.output === 'json' ? JSON.stringify(mutated, null, 2) + '\n' : toYaml(mutated))
  return 0
}

try {
  process.exitCode = run(process.argv.slice(2))
} catch (e) {
  if (e instanceof UsageError || e instanceof ConfigError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') || (e as { code?: string }).code === 'ENOENT') {
    process.stderr.write(`inject: ${(e as Error).message}\n`)
    process.exitCode = 2
  } else throw e
}
