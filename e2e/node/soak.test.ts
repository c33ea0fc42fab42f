// Soak on the real-runtime tier: pod churn (intercepted proxy-mode pods created and deleted at a
// steady pace, N live at once) for a configurable time, with an agent restart at one third and a
// kubelet restart (its device manager: sockets wiped, checkpoint kept, plugins must register
// again) at two thirds. It asserts that no pod with intent ever runs unprogrammed (each running
// pod's netns holds the ziti_cni table, checked for every live pod on every cycle; while the
// agent is down a pod with intent fails closed and starts nothing), that nothing leaks (state,
// netns, containers, devices) once the churn is over, and that the agent's RSS stays flat; it
// prints the figures.
//   ZCNI_SOAK_SECONDS  duration (180 in CI, 40 otherwise); the long form: 1800
//   ZCNI_SOAK_PODS     live pods (10 in CI, 4 otherwise); the long form: 50
import t from 'tap'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadavg } from 'node:os'
import type { V1Pod } from '@kubernetes/client-node'
import { rootOnly } from '../../shared/testkit/root.ts'
import { NETNS_LIST } from './lib/containerd.ts'
import type { RunningPod } from './lib/kubelet.ts'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { appPod, infraPod } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { startWebhook } from './lib/webhook.ts'

const CI = process.env.CI === 'true'
const SECONDS = Number(process.env.ZCNI_SOAK_SECONDS ?? (CI ? 180 : 40))
const LIVE = Number(process.env.ZCNI_SOAK_PODS ?? (CI ? 10 : 4))
const RESOURCE = 'tun.openziti.io/tun'

const mib = (r: { kib: number } | undefined) => (r ? (r.kib / 1024).toFixed(1) : '-')

function rssKiB(pid: number | undefined): number {
  if (!pid) return 0
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) : 0
}

t.test(`soak: ${SECONDS} s of pod churn, ${LIVE} live pods, an agent and a kubelet restart`, rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 8, tunDevicePlugin: true })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  t.teardown(async () => { await node.teardown(); await webhook?.close() })
  await node.start()
  await node.deviceManager!.ready(RESOURCE)
  const infra = await node.runPod(await node.createPod(infraPod()))
  node.clusterDns.push(infra.ip)
  webhook = await startWebhook({ validator: { image: IMAGES.validator }, tproxy: { clusterDns: [infra.ip] } })
  node.api.admission = webhook.admission
  await node.createSecret('apps', 'soak-identity', { 'identity.json': JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' } }) })

  const netnsList = join(node.containerd.dirs.dir, NETNS_LIST)
  const baseline = { state: readdirSync(node.stateDir).length, containers: (await node.containerd.cri.listContainers()).length, netns: readFileSync(netnsList, 'utf8').split('\n').filter(Boolean).length, devices: node.deviceManager!.podsWithDevices().length }
  const live: RunningPod[] = []
  const figures = { created: 0, deleted: 0, failedClosed: 0, unprogrammed: 0, checks: 0, startMs: [] as number[], rss: [] as Array<{ at: number; kib: number; phase: string }> }
  let phase = 'first agent'
  let seq = 0

  /** The kubelet's pod worker: a failed sandbox (a fail-closed ADD) is retried after its back-off (kubelet.ts). */
  const start = async (pod: V1Pod): Promise<RunningPod> => {
    const t0 = Date.now()
    const rp = await node.runPod(pod, { startupCapMs: 60_000, until: 'running', deadlineMs: 180_000 })
    figures.startMs.push(Date.now() - t0)
    return rp
  }
  const churnOnce = async () => {
    const name = `soak-${seq++}`
    const pod = await node.createPod(appPod(name, 'apps', { 'cni.openziti.io/identity-secret': 'soak-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
    const rp = await start(pod)
    figures.created++
    live.push(rp)
    while (live.length > LIVE) {
      const old = live.shift()!
      node.api.delete('pods', 'apps', old.pod.metadata!.name!)
      await node.removePod(old)
      figures.deleted++
    }
    for (const p of live) {
      figures.checks++
      if (!node.hasTable(p)) { figures.unprogrammed++; t.fail(`pod ${p.pod.metadata!.name} runs with intent but its netns has no ziti_cni table`) }
    }
    figures.rss.push({ at: Date.now(), kib: rssKiB(node.agent?.pid), phase })
  }

  const t0 = Date.now()
  const end = t0 + SECONDS * 1000
  let agentRestarted = false
  let kubeletRestarted = false
  while (Date.now() < end) {
    await churnOnce()
    const elapsed = Date.now() - t0
    if (!agentRestarted && elapsed > SECONDS * 1000 / 3) {
      agentRestarted = true
      await node.stopAgent()
      // While it is away a pod with intent must not start: its ADD fails closed, nothing runs.
      const pod = await node.createPod(appPod(`soak-down-${seq}`, 'apps', { 'cni.openziti.io/identity-secret': 'soak-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
      const err = await node.runPod(pod).then(() => undefined, (e: Error) => e)
      t.match(err?.message, /failed \(add\): .*fails closed/, 'agent down: a pod with intent fails closed')
      figures.failedClosed++
      await node.startAgent()
      phase = 'second agent'
      await node.deviceManager!.ready(RESOURCE)
      const rp = await start(pod)
      figures.created++
      live.push(rp)
    }
    if (!kubeletRestarted && elapsed > SECONDS * 2000 / 3) {
      kubeletRestarted = true
      const before = node.deviceManager!.registrations.length
      await node.deviceManager!.restart()
      await node.deviceManager!.ready(RESOURCE)
      t.ok(node.deviceManager!.registrations.length > before, 'kubelet restart: the agent\'s device plugin registered again')
    }
  }
  t.ok(agentRestarted && kubeletRestarted, 'both restarts happened within the run')

  for (const p of live.splice(0)) {
    node.api.delete('pods', 'apps', p.pod.metadata!.name!)
    await node.removePod(p)
    figures.deleted++
  }
  const leftNetns = readFileSync(netnsList, 'utf8').split('\n').filter(Boolean).slice(baseline.netns).filter((p) => existsSync(p))
  t.same(leftNetns, [], 'no pod netns left behind')
  t.equal(readdirSync(node.stateDir).length, baseline.state, 'no attachment state left behind')
  t.equal((await node.containerd.cri.listContainers()).length, baseline.containers, 'no container left behind')
  t.equal(node.deviceManager!.podsWithDevices().length, baseline.devices, 'no device left allocated')
  t.equal(figures.unprogrammed, 0, `no pod with intent ran unprogrammed (${figures.checks} checks)`)

  // Flat RSS: the second agent's last third against its first third (after a warm-up sample).
  const second = figures.rss.filter((r) => r.phase === 'second agent').slice(1)
  const third = Math.max(1, Math.floor(second.length / 3))
  const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)] ?? 0 }
  const early = median(second.slice(0, third).map((r) => r.kib))
  const late = median(second.slice(-third).map((r) => r.kib))
  const startMs = median(figures.startMs)
  t.comment(`soak figures: ${SECONDS} s, ${LIVE} live; created ${figures.created}, deleted ${figures.deleted}, sandbox retries ${node.kubelet.sandboxRetries}, fail-closed ${figures.failedClosed}; ` +
    `median pod start ${startMs} ms (max ${Math.max(...figures.startMs)} ms); ${figures.checks} table checks; agent RSS early ${Math.round(early / 1024)} MiB, late ${Math.round(late / 1024)} MiB (${second.length} samples); ` +
    `RSS first agent start ${mib(figures.rss[0])}, second agent start ${mib(second[0])}, mid ${mib(second[Math.floor(second.length / 2)])}, end ${mib(second.at(-1))} MiB; ` +
    `chaos ${[...(node.api.chaos?.faults ?? [])].join(',') || 'off'} seed ${node.api.chaos?.seed ?? '-'}, API 429s ${node.api.requests.filter((r) => r.status === 429).length} of ${node.api.requests.length}; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`)
  t.ok(second.length >= 2, 'RSS sampled across the second agent\'s life')
  t.ok(late - early < 32 * 1024, `agent RSS flat: ${early} KiB -> ${late} KiB`)
})
