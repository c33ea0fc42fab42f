// node cni-plugin/bench/drift.ts [PODS] (root) — the drift pass (src/agent/drift.ts) over N
// programmed pod netns on this kernel: the agent's own Programmer programs them (proxy with 50
// services and eBPF tproxy, half each), then passes are timed: all clean, and with every 10th pod
// drifted and re-programmed. Prints the pass time, the cost per pod, and what the interval
// implies. Also run by bench/cni.ts (pnpm bench:cni) with its BENCH_DRIFT_PODS.
//   PODS (default BENCH_PODS or 500), BENCH_PASSES (default 3)
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { serializeIntent, type Intent } from '@ziti-cni/shared'
import { assertRoot, scratchNetns } from '../../shared/testkit/root.ts'
import { DriftDetector } from '../src/agent/drift.ts'
import { createNetns } from '../src/agent/netns.ts'
import type { PodSource } from '../src/agent/pods.ts'
import { Programmer } from '../src/agent/programmer.ts'
import { StateStore } from '../src/agent/state.ts'

const BPF_OBJECT = new URL('../dist/tproxy.bpf.o', import.meta.url).pathname
const say = (s: string) => process.stdout.write(`${s}\n`)
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]! }

const PROXY = serializeIntent({
  v: 1, mode: 'proxy', uid: 2171,
  dnat: Array.from({ length: 50 }, (_, i) => ({ dst: `100.64.0.${i + 2}`, proto: 'tcp' as const, port: 5432, to: 15100 + i })),
  fence: Array.from({ length: 50 }, (_, i) => 15100 + i),
} as Intent)
const EBPF = '{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10"],"proto":["tcp","udp"],"to":15001,"datapath":"ebpf","fence":[15001]}'

export interface DriftFigures { pods: number; setupS: number; cleanMs: number; driftedMs: number; proxyMsPerPod: number; tproxyMsPerPod: number; passes: number }

/** Programs `count` scratch netns, times the passes, removes everything. */
export async function benchDrift(count: number, passes: number): Promise<DriftFigures> {
  assertRoot(['nft', 'ip', 'nsenter', 'tc', 'sysctl'])
  const dir = mkdtempSync(join(tmpdir(), 'zcni-bench-drift-'))
  const state = new StateStore(join(dir, 'state'))
  const netns = createNetns({ hostNetns: '/proc/self/ns/net', nsenter: 'nsenter', timeoutMs: 10_000 })
  const log = pino({ level: 'silent' })
  const intents = new Map<string, string>()
  const pods: PodSource = {
    get: async (ref) => ({ source: 'cache', pod: { metadata: { namespace: ref.namespace, name: ref.name, uid: ref.uid, annotations: { 'cni.openziti.io/interception': intents.get(ref.name)! } } } }),
    cachedCount: () => 0, synced: () => true, onPod: () => {}, stop: async () => {},
  }
  const programmer = new Programmer({ netns, pods, state, log, lookupDeadlineMs: 1000, bpfObject: BPF_OBJECT })
  const spaces: Array<{ name: string; path: string; remove: () => void; ebpf: boolean }> = []
  try {
    const setup = performance.now()
    for (let i = 0; i < count; i++) {
      const ns = scratchNetns('zcni-bd')
      const ebpf = i % 2 === 1
      spaces.push({ ...ns, ebpf })
      for (const argv of [['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p'], ['addr', 'add', '10.244.0.5/24', 'dev', 'eth0'], ['link', 'set', 'eth0', 'up']]) spawnSync('ip', ['-n', ns.name, ...argv])
      const name = `pod-${i}`
      intents.set(name, ebpf ? EBPF : PROXY)
      await programmer.add({ command: 'ADD', containerId: `ctr-${i}`, ifName: 'eth0', netns: ns.path, pod: { namespace: 'bench', name, uid: `uid-${i}` }, validAttachments: [], podIps: ['10.244.0.5'] })
    }
    const setupS = (performance.now() - setup) / 1000
    const detector = new DriftDetector({ netns, state, log, lookupDeadlineMs: 1000, bpfObject: BPF_OBJECT, action: 'reprogram', nodeName: 'bench', minAgeMs: 0, emitEvent: async () => {} })
    const clean: number[] = []
    const drifted: number[] = []
    for (let p = 0; p < passes; p++) {
      const r = await detector.pass(state.list())
      if (r.checked !== count || r.drifted !== 0) throw new Error(`clean pass found ${JSON.stringify(r)}`)
      clean.push(r.ms)
      for (let i = 0; i < count; i += 10) spawnSync('ip', ['netns', 'exec', spaces[i]!.name, 'nft', 'delete', 'table', 'inet', 'ziti_cni'])
      const d = await detector.pass(state.list())
      if (d.drifted !== Math.ceil(count / 10) || d.reprogrammed !== d.drifted) throw new Error(`drifted pass found ${JSON.stringify(d)}`)
      drifted.push(d.ms)
    }
    // Per mode: one pass over each half alone.
    const all = state.list()
    const byMode = async (mode: string) => { const r = await detector.pass(all.filter((s) => s.mode === mode)); return r.ms / Math.max(r.checked, 1) }
    const proxyMs = await byMode('proxy')
    const tproxyMs = await byMode('tproxy')
    return { pods: count, setupS, cleanMs: median(clean), driftedMs: median(drifted), proxyMsPerPod: proxyMs, tproxyMsPerPod: tproxyMs, passes }
  } finally {
    for (const s of spaces) s.remove()
    rmSync(dir, { recursive: true, force: true })
  }
}

export function formatDrift(f: DriftFigures): string[] {
  const c = f.cleanMs
  return [
    `drift pass over ${f.pods} programmed pods (${f.pods - Math.floor(f.pods / 2)} proxy with 50 services, ${Math.floor(f.pods / 2)} eBPF tproxy; set up in ${f.setupS.toFixed(1)} s)`,
    `  clean pass:   median ${(c / 1000).toFixed(2)} s over ${f.passes} passes = ${(c / f.pods).toFixed(1)} ms per pod (proxy ${f.proxyMsPerPod.toFixed(1)} ms, eBPF tproxy ${f.tproxyMsPerPod.toFixed(1)} ms: one nft list vs nft + ip rule/route + sysctl + tc, each an nsenter exec)`,
    `  10% drifted:  median ${(f.driftedMs / 1000).toFixed(2)} s (each drifted pod re-programmed)`,
    `  at --drift-interval 60 s a pass is busy ${(100 * c / 60_000).toFixed(1)}% of the time with ${f.pods} pods (wall time, mostly the nsenter children; one pod at a time, passes never overlap)`,
  ]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  benchDrift(Number(process.argv[2] ?? process.env.BENCH_PODS ?? 500), Number(process.env.BENCH_PASSES ?? 3))
    .then((f) => { for (const l of formatDrift(f)) say(l) })
    .catch((e: unknown) => { process.stderr.write(`${(e as Error).stack ?? e}\n`); process.exit(1) })
}
