// The admin CLI: `render` prints exactly what ADD would apply for a pod manifest; `inspect`
// shows a live netns table and whether it matches the pod's intent. Same code as the agent.
import { ANNOTATION_INTERCEPTION, NFT_FAMILY, NFT_TABLE, ValidationError, ipCommands, parseIntent, podIngress, renderPlan, type IngressPort, type IngressSpec } from '@ziti-cni/shared'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { parse as parseYaml } from 'yaml'
import { lineDiff, normaliseListing } from '@ziti-cni/shared'
import { createNetns } from '../agent/netns.ts'
import { StateStore } from '../agent/state.ts'

const USAGE = `usage:
  ziti-cni render -f POD.yaml [--format nft|json]   print what ADD would apply (nft: pipe into nft -c -f -)
  ziti-cni inspect --netns PATH [-f POD.yaml]       show the live table; with -f, compare it with the intent
  ziti-cni inspect --pod NS/NAME [--state-dir DIR]  the same for a pod the agent programmed (run on the node,
                                                    e.g. kubectl exec into the agent pod)
`

class UsageError extends Error {}

/** The pod's intent and the ports its containers declare (what the fence lets in). */
function readPodIntent(file: string): { intent: string; ingress: IngressPort[] } {
  const text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(resolve(process.env.INIT_CWD ?? process.cwd(), file), 'utf8')
  let doc: unknown
  try {
    doc = parseYaml(text)
  } catch (e) {
    throw new UsageError(`${file}: not YAML or JSON: ${(e as Error).message}`)
  }
  const annotations = (doc as { metadata?: { annotations?: Record<string, unknown> } })?.metadata?.annotations ?? {}
  const intent = annotations[ANNOTATION_INTERCEPTION]
  if (intent === undefined) throw new UsageError(`${file}: the pod has no ${ANNOTATION_INTERCEPTION} annotation (run it through the webhook first: pnpm -s run inject -f ${file})`)
  if (typeof intent !== 'string') throw new UsageError(`${file}: ${ANNOTATION_INTERCEPTION} must be a string`)
  return { intent, ingress: podIngress((doc as { spec?: IngressSpec }).spec) }
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv, allowPositionals: true, strict: true,
    options: {
      file: { type: 'string', short: 'f' }, format: { type: 'string', default: 'json' }, netns: { type: 'string' },
      pod: { type: 'string' }, 'state-dir': { type: 'string', default: '/var/run/ziti-cni/state' }, help: { type: 'boolean', short: 'h' },
    },
  })
  const cmd = positionals[0]
  if (values.help || !cmd) { process.stdout.write(USAGE); return values.help ? 0 : 2 }
  if (cmd === 'render') {
    if (!values.file) throw new UsageError('render needs -f POD.yaml')
    if (values.format !== 'nft' && values.format !== 'json') throw new UsageError(`--format must be nft or json, not ${JSON.stringify(values.format)}`)
    const pod = readPodIntent(values.file)
    const plan = renderPlan(parseIntent(pod.intent), { ingress: pod.ingress })
    if (values.format === 'nft') process.stdout.write(plan.nft)
    else process.stdout.write(JSON.stringify({ ...plan, ip: ipCommands(plan).map((a) => ['ip', ...a]) }, null, 2) + '\n')
    return 0
  }
  if (cmd === 'inspect') {
    let expected: { intent: string; ingress: IngressPort[] } | undefined = values.file ? readPodIntent(values.file) : undefined
    if (values.pod) {
      const [ns, name] = values.pod.split('/')
      const found = new StateStore(values['state-dir']).list().find((s) => s.pod.namespace === ns && s.pod.name === name)
      if (!found) throw new UsageError(`no attachment recorded for pod ${values.pod} in ${values['state-dir']} (not intercepted, or not on this node)`)
      values.netns = found.netns
      expected ??= { intent: found.intent, ingress: found.ingress ?? [] }
      process.stdout.write(`pod ${values.pod}: container ${found.containerId.slice(0, 12)}, netns ${found.netns}, mode ${found.mode}\n`)
    }
    if (!values.netns) throw new UsageError('inspect needs --netns PATH or --pod NS/NAME')
    const netns = createNetns({ hostNetns: '/proc/self/ns/net', nsenter: 'nsenter', timeoutMs: 5000 })
    netns.assertPodNetns(values.netns)
    const live = await netns.nft(values.netns, ['list', 'table', NFT_FAMILY, NFT_TABLE])
    if (live.code !== 0) {
      process.stdout.write(`no ${NFT_FAMILY} ${NFT_TABLE} table in ${values.netns}\n`)
      return expected ? 1 : 0
    }
    process.stdout.write(live.stdout)
    if (!expected) return 0
    // Same judge as CHECK: load the rendered plan into a throwaway netns and compare listings.
    const listing = await renderedListing(renderPlan(parseIntent(expected.intent), { ingress: expected.ingress }).nft)
    const diff = lineDiff(normaliseListing(listing), normaliseListing(live.stdout))
    process.stdout.write(diff ? `\nDRIFT: live table differs from the pod's intent:\n${diff}\n` : '\nMATCH: live table equals the pod\'s intent\n')
    return diff ? 1 : 0
  }
  throw new UsageError(`unknown command ${JSON.stringify(cmd)}`)
}

/**
 * The kernel's listing of a rendered transaction, from a throwaway netns (`unshare --net`)
 * that disappears with the process. The shell script is a constant; the ruleset is stdin.
 */
async function renderedListing(nft: string): Promise<string> {
  const { spawnSync } = await import('node:child_process')
  const r = spawnSync('unshare', ['--net', '--', 'sh', '-c', `nft -f - && nft list table ${NFT_FAMILY} ${NFT_TABLE}`], { input: nft, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`cannot load the rendered ruleset into a scratch netns: ${r.stderr || r.error}`)
  return r.stdout
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code }, (e: unknown) => {
  if (e instanceof ValidationError || e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`ziti-cni: ${(e as Error).message}\n`)
    process.exitCode = e instanceof UsageError || !(e instanceof ValidationError) ? 2 : 1
  } else {
    process.stderr.write(`ziti-cni: ${(e as Error).message}\n`)
    process.exitCode = 1
  }
})
