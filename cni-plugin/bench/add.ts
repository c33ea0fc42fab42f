// pnpm bench:cni (root) — medians over 30+ pods on a real kernel:
//   * ADD through bridge+ziti-cni vs bridge alone (same run, same machine),
//   * ziti-cni's own ADD (the SEA executable) vs `node -e 0` start-up, for a pod without
//     intent and a pod with 50 services,
//   * the agent's resident memory with 500 pods in its node-scoped cache vs an empty cache.
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { assertRoot } from '../../shared/testkit/root.ts'
import { TestNode, NODE_NAME, sweepLeftovers } from '../../e2e/node/lib/node.ts'
import { CniRuntime, execProcess } from '../../e2e/node/lib/runtime.ts'
import { serializeIntent, type Intent } from '@ziti-cni/shared'

const PODS = Number(process.env.BENCH_PODS ?? 30)
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]! }
const ms = (x: number) => `${x.toFixed(1)} ms`
const say = (s: string) => process.stdout.write(`${s}\n`)

function intentWithServices(n: number): string {
  const intent: Intent = {
    v: 1, mode: 'proxy', uid: 2171,
    dnat: Array.from({ length: n }, (_, i) => ({ dst: `100.64.${Math.floor((i + 2) / 256)}.${(i + 2) % 256}`, proto: 'tcp' as const, port: 5432, to: 15100 + i })),
    fence: Array.from({ length: n }, (_, i) => 15100 + i),
  }
  return serializeIntent(intent)
}

function rssKb(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1])
}

async function main() {
  assertRoot(['nft', 'ip', 'nsenter'])
  sweepLeftovers()
  const node = new TestNode({ id: 7 })
  try {
    await node.start()
    // Same bridge config without ziti-cni: the baseline chain, in a separate conf dir.
    const bareDir = join(node.dir, 'net.d-bare')
    mkdirSync(bareDir)
    writeFileSync(join(bareDir, '10-bridge.conflist'), node.primaryConflist())
    const bare = new CniRuntime(bareDir, ['/usr/lib/cni'])

    // `node -e 0` started exactly the way the runtime harness starts a plugin.
    const nodeStart: number[] = []
    for (let i = 0; i < PODS; i++) nodeStart.push((await execProcess(process.execPath, ['-e', '0'])).ms)

    const cases = [
      { label: 'no intent', annotations: {} as Record<string, string> },
      { label: '50 services', annotations: { 'cni.openziti.io/interception': intentWithServices(50) } },
    ]
    const chain: Record<string, number[]> = {}
    const zitiOnly: Record<string, number[]> = {}
    const zitiAgain: Record<string, number[]> = {}
    const bridgeAlone: number[] = []
    for (let i = 0; i < PODS; i++) {
      // Interleave baseline and measured runs so machine noise hits both alike.
      const netns = `${node.prefix}-b${i}`
      spawnSync('ip', ['netns', 'add', netns])
      const t0 = process.hrtime.bigint()
      await bare.add({ containerId: `bare${i}`, netnsPath: `/var/run/netns/${netns}`, ifName: 'eth0', pod: { namespace: 'default', name: `bare-${i}`, uid: `u${i}` } })
      bridgeAlone.push(Number(process.hrtime.bigint() - t0) / 1e6)
      await bare.del({ containerId: `bare${i}`, netnsPath: `/var/run/netns/${netns}`, ifName: 'eth0', pod: { namespace: 'default', name: `bare-${i}`, uid: `u${i}` } })
      spawnSync('ip', ['netns', 'del', netns])
      for (const c of cases) {
        const pod = node.api.put('pods', { metadata: { name: `bench-${c.label.replace(/ /g, '-')}-${i}`, namespace: 'default', annotations: c.annotations }, spec: { nodeName: NODE_NAME, containers: [] } })
        // In a cluster the kubelet starts the sandbox well after the scheduler bound the pod,
        // so the agent's watch has it; give the watch that moment here too.
        await new Promise((r) => setTimeout(r, 100))
        const t1 = process.hrtime.bigint()
        const s = await node.runSandbox(pod)
        ;(chain[c.label] ??= []).push(Number(process.hrtime.bigint() - t1) / 1e6)
        // ziti-cni's own step of that ADD: process start, agent round trip, programming.
        ;(zitiOnly[c.label] ??= []).push(s.timings['ziti-cni']!)
        // A repeated ADD of the same attachment (runtime retry) takes the replace path.
        const t2 = process.hrtime.bigint()
        await node.runtime.addOne(s, 'ziti-cni')
        ;(zitiAgain[c.label] ??= []).push(Number(process.hrtime.bigint() - t2) / 1e6)
        await node.removeSandbox(s)
      }
    }

    const base = median(nodeStart)
    say(`CNI ADD, medians over ${PODS} pods (loopback + chain, as a runtime runs it)`)
    say(`  bridge alone (baseline)            ${ms(median(bridgeAlone))}`)
    for (const c of cases) say(`  bridge + ziti-cni, ${c.label.padEnd(12)}     ${ms(median(chain[c.label]!))}  (${(median(chain[c.label]!) / median(bridgeAlone)).toFixed(2)}x bridge alone)`)
    say(`  node -e 0 start-up (baseline)      ${ms(base)}`)
    for (const c of cases) {
      const m = median(zitiOnly[c.label]!)
      say(`  ziti-cni's step of the ADD, ${c.label.padEnd(12)} ${ms(m)}  (${(m / base).toFixed(2)}x node -e 0; target <= 1.5x)`)
    }
    for (const c of cases) say(`  ziti-cni ADD repeated (replace path), ${c.label.padEnd(12)} ${ms(median(zitiAgain[c.label]!))}`)

    const lookups = (await node.metrics()).split('\n').filter((l) => l.startsWith('ziti_cni_pod_lookups_total')).map((l) => l.replace('ziti_cni_pod_lookups_total', '')).join(', ')
    say(`  agent pod lookups: ${lookups}`)

    // Memory: the agent with an empty cache, then with 500 pods on this node.
    const pid = node.agent!.pid!
    await new Promise((r) => setTimeout(r, 1000))
    const before = rssKb(pid)
    for (let i = 0; i < 500; i++) {
      node.api.put('pods', {
        metadata: { name: `cached-${i}`, namespace: 'default', labels: { app: `app-${i % 20}` }, annotations: { 'cni.openziti.io/interception': intentWithServices(2) } },
        spec: { nodeName: NODE_NAME, containers: [{ name: 'app', image: 'registry.example.com/app:1.0', env: Array.from({ length: 20 }, (_, k) => ({ name: `E${k}`, value: 'x'.repeat(20) })) }] },
      })
    }
    const deadline = Date.now() + 20_000
    let cached = 0
    while (Date.now() < deadline) {
      cached = Number(/ziti_cni_cached_pods (\d+)/.exec(await node.metrics())?.[1] ?? 0)
      if (cached >= 500) break
      await new Promise((r) => setTimeout(r, 200))
    }
    await new Promise((r) => setTimeout(r, 2000))
    const after = rssKb(pid)
    say(`agent resident memory: ${(before / 1024).toFixed(1)} MiB with an empty cache, ${(after / 1024).toFixed(1)} MiB with ${cached} cached pods (${(after / before).toFixed(2)}x; +${((after - before) / 1024).toFixed(1)} MiB)`)
  } finally {
    await node.teardown()
  }
}

main().catch((e: unknown) => { process.stderr.write(`${(e as Error).stack}\n`); process.exit(1) })
