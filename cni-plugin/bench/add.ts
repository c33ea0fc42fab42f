// pnpm bench:cni (root) — medians over 30+ pods on a real kernel and a real runtime:
//   * RunPodSandbox through containerd with bridge+ziti-cni vs bridge alone (a second
//     containerd, same run, interleaved),
//   * ziti-cni's own ADD (the SEA executable, exec'd as libcni does) vs `node -e 0` and vs
//     `ziti-cni VERSION`, for a pod without intent and a pod with 50 services,
//   * the agent's resident memory with 500 pods in its node-scoped cache vs an empty cache.
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { assertRoot } from '../../shared/testkit/root.ts'
import { TestNode, NODE_NAME, sweepLeftovers } from '../../e2e/node/lib/node.ts'
import { Containerd } from '../../e2e/node/lib/containerd.ts'
import { sandboxConfig as sandboxConfigFor } from '../../e2e/node/lib/kubelet.ts'
import { cachedResult, callPlugin, execProcess, loadConfList } from '../../e2e/node/lib/cni-exec.ts'
import { IMAGES } from '../../e2e/node/lib/test-images.ts'
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

async function netnsOf(c: Containerd, id: string): Promise<string> {
  const info = JSON.parse((await c.cri.podSandboxStatus(id, true)).info.info ?? '{}') as { runtimeSpec?: { linux?: { namespaces?: Array<{ type: string; path?: string }> } } }
  return info.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path ?? ''
}

function rssKb(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1])
}

async function main() {
  assertRoot(['nft', 'ip', 'nsenter', 'containerd', 'runc'])
  sweepLeftovers()
  const node = new TestNode({ id: 7 })
  // The baseline: a second containerd whose conf dir holds the same bridge list without ziti-cni.
  const bareDir = join(node.dir, 'bare')
  const bareConf = join(bareDir, 'net.d')
  mkdirSync(bareConf, { recursive: true })
  const bare = new Containerd({ dir: join(bareDir, 'containerd'), cniBinDir: node.binDir, cniConfDir: bareConf, sandboxImage: IMAGES.pause })
  try {
    await node.start()
    writeFileSync(join(bareConf, '10-bridge.conflist'), node.primaryConflist().replace(/"bridge": "[^"]+"/, `"bridge": "${node.prefix}bb"`).replace(/10\.(\d+)\.(\d+)\.0\/24/, '10.$1.$2.128/25').replace(/"gateway": "[^"]+"/, '"gateway": "' + node.gateway.replace(/1$/, '129') + '"').replace(/"dataDir": "[^"]+"/, `"dataDir": "${join(bareDir, 'ipam')}"`))
    await bare.start()
    bare.importImages(node.containerd.importedArchive!)

    // `node -e 0` and `ziti-cni VERSION`, started the way libcni starts a plugin.
    const nodeStart: number[] = []
    const version: number[] = []
    const versionConf = JSON.stringify({ cniVersion: '1.0.0' })
    for (let i = 0; i < PODS; i++) {
      nodeStart.push((await execProcess(process.execPath, ['-e', '0'])).ms)
      version.push((await execProcess(join(node.binDir, 'ziti-cni'), [], { CNI_COMMAND: 'VERSION' }, versionConf)).ms)
    }

    const cases = [
      { label: 'no intent', annotations: {} as Record<string, string> },
      { label: '50 services', annotations: { 'cni.openziti.io/interception': intentWithServices(50) } },
    ]
    const sandbox: Record<string, number[]> = {}
    const zitiOnly: Record<string, number[]> = {}
    const zitiAgain: Record<string, number[]> = {}
    const bareSandbox: number[] = []
    const sandboxConfig = (name: string, uid: string) => sandboxConfigFor({ metadata: { name, namespace: 'default', uid }, spec: {} } as never, { servers: [], domain: 'cluster.local' }, join(node.dir, 'logs'))
    const timed = async <T>(f: () => Promise<T>): Promise<[T, number]> => { const t0 = process.hrtime.bigint(); const r = await f(); return [r, Number(process.hrtime.bigint() - t0) / 1e6] }
    for (let i = 0; i < PODS; i++) {
      // Interleaved: baseline and measured sandboxes alternate so machine noise hits both alike.
      const [bareId, bareMs] = await timed(() => bare.cri.runPodSandbox(sandboxConfig(`bare-${i}`, `ub${i}`)))
      bareSandbox.push(bareMs)
      for (const c of cases) {
        const name = `bench-${c.label.replace(/ /g, '-')}-${i}`
        const pod = node.api.put('pods', { metadata: { name, namespace: 'default', annotations: c.annotations }, spec: { nodeName: NODE_NAME, containers: [] } })
        // In a cluster the kubelet starts the sandbox well after the scheduler bound the pod,
        // so the agent's watch has it; give the watch that moment here too.
        await new Promise((r) => setTimeout(r, 100))
        const [id, ms] = await timed(() => node.containerd.cri.runPodSandbox(sandboxConfig(name, pod.metadata.uid!)))
        ;(sandbox[c.label] ??= []).push(ms)
        // ziti-cni's own step, as libcni execs it, on a fresh netns the bare chain set up.
        const netns = await netnsOf(bare, bareId)
        const list = loadConfList(node.confDir)
        const a = { containerId: `${bareId.slice(0, 32)}${i}${c.label.length}`, netns, pod: { namespace: 'default', name, uid: pod.metadata.uid! } }
        const [, own] = await timed(() => callPlugin(node.binDir, list, 'ziti-cni', 'ADD', a, { prevResult: cachedResult('e2e-pod-network', bareId) }))
        ;(zitiOnly[c.label] ??= []).push(own)
        // A repeated ADD of the same attachment (runtime retry) takes the replace path.
        const [, again] = await timed(() => callPlugin(node.binDir, list, 'ziti-cni', 'ADD', a, { prevResult: cachedResult('e2e-pod-network', bareId) }))
        ;(zitiAgain[c.label] ??= []).push(again)
        await callPlugin(node.binDir, list, 'ziti-cni', 'DEL', a)
        await node.containerd.cri.stopPodSandbox(id)
        await node.containerd.cri.removePodSandbox(id)
      }
      await bare.cri.stopPodSandbox(bareId)
      await bare.cri.removePodSandbox(bareId)
    }

    const base = median(nodeStart)
    const b = median(bareSandbox)
    say(`RunPodSandbox through containerd ${(await node.containerd.cri.version()).runtime_version} (pause + loopback + chain), medians over ${PODS} interleaved sandboxes`)
    say(`  bridge alone (baseline)                 ${ms(b)}`)
    for (const c of cases) {
      const m = median(sandbox[c.label]!)
      say(`  bridge + ziti-cni, ${c.label.padEnd(12)}          ${ms(m)}  (${(m / b).toFixed(2)}x; +${ms(m - b)})`)
    }
    say(`ziti-cni executable, as libcni execs it`)
    say(`  node -e 0 start-up (baseline)           ${ms(base)}`)
    say(`  ziti-cni VERSION (SEA start-up only)    ${ms(median(version))}  (${(median(version) / base).toFixed(2)}x node -e 0)`)
    for (const c of cases) {
      const m = median(zitiOnly[c.label]!)
      say(`  ziti-cni ADD, ${c.label.padEnd(12)}              ${ms(m)}  (${(m / base).toFixed(2)}x node -e 0; target <= 1.5x)`)
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
    await bare.stop()
    spawnSync('ip', ['link', 'del', `${node.prefix}bb`])
    await node.teardown()
  }
}

main().catch((e: unknown) => { process.stderr.write(`${(e as Error).stack}\n`); process.exit(1) })
