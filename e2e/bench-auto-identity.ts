// `identity: auto` end to end on the containerd tier, against a Secret-identity pod, same run:
// the real webhook (pure admission), the identity controller (its runtime and enrollment
// endpoint), the API server stand-in, the fake OpenZiti controller, containerd + runc, the CNI
// plugin, the stand-in tunneler. Prints:
//   - PODS pods of each kind, interleaved (the order alternates): time from the pod's creation
//     (the API create, admission included) to the pod enrolled (auto: the fake controller
//     answered the init step's enrollment) and to the first intercepted reply (pg.ziti:5432 through the
//     sidecar, asked from the app container by `kubectl exec`-style exec: the same cost for both
//     kinds, ~0.1-0.3 s of each figure); medians, p90, and the ratio auto/Secret;
//   - a burst of BURST identity: auto pods created at once: all running and enrolled, identities
//     created, OpenZiti controller calls per pod (the identity controller's, and all), enrollment
//     requests throttled (429), TokenReviews; then all deleted: identities left after the
//     deletion (leaked), and how long until none was left;
//   - the load average (1 min) sampled every 2 s over each phase.
// Root only (netns, containerd). Usage:
//   node e2e/bench-auto-identity.ts [PODS=10] [BURST=100]   (env BENCH_DEADLINE_SECONDS=600: per burst pod)
import { loadavg } from 'node:os'
import type { V1Pod } from '@kubernetes/client-node'
import { TestNode, sweepLeftovers } from './node/lib/node.ts'
import { app, appPod } from './node/lib/pods.ts'
import type { PodStartError, RunningPod } from './node/lib/kubelet.ts'
import { IMAGES } from './node/lib/test-images.ts'
import { enrollmentTls, startIdentityControllerReplica, startWebhook } from './node/lib/webhook.ts'
import { FakeZitiController, type FakeCall } from './node/standins/ziti-controller.ts'

const PODS = Number(process.argv[2] ?? 10)
const BURST = Number(process.argv[3] ?? 100)
const DEADLINE_MS = Number(process.env.BENCH_DEADLINE_SECONDS ?? 600) * 1000
if (process.getuid?.() !== 0) { process.stderr.write('bench-auto-identity: needs root (netns, containerd)\n'); process.exit(2) }
const out = (s: string) => process.stdout.write(`${s}\n`)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, ms: number, every = 50): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await probe()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(every)
  }
}

/** Load average samples, for the report. */
function sampleLoad() {
  const xs: number[] = [loadavg()[0]!]
  const timer = setInterval(() => xs.push(loadavg()[0]!), 2000)
  return () => { clearInterval(timer); xs.push(loadavg()[0]!); return `load avg (1 min) ${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}, mean ${(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(1)} over ${xs.length} samples` }
}

sweepLeftovers()
const node = new TestNode({ id: 31 })
const closers: Array<() => Promise<unknown>> = []
let exitCode = 0
try {
  await node.start()
  await node.runPod(await node.createPod(appPod('first', 'plain'))) // the bridge and its gateway

  const ctrl = new FakeZitiController({ host: node.gateway })
  await ctrl.listen()
  closers.push(() => ctrl.close())
  // Every call timestamped at the controller's edge (this run's instrumentation only).
  const stamped: Array<FakeCall & { at: number }> = []
  const push = ctrl.calls.push.bind(ctrl.calls)
  ctrl.calls.push = (...calls: FakeCall[]) => { const at = performance.now(); for (const c of calls) stamped.push(Object.assign(c, { at })); return push(...calls) }
  ctrl.addService('postgres', ['db'], [ctrl.addConfig('postgres-intercept', 'intercept.v1', { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })])
  ctrl.addPolicy('bench-dials-db', 'Dial', ['#bench'], ['#db'])
  const admin = ctrl.addCertIdentity('ziti-cni-identity-controller', ['identity.create', 'identity.read', 'identity.delete', 'service.read', 'config.read'])
  const credential = JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${admin.cert}`, key: `pem:${admin.key}`, ca: `pem:${ctrl.ca.certPem}` } })
  // The Lease's namespace, as deploy/components/controller-identities/namespace.yaml makes it
  // (the API stand-in refuses a Lease in a namespace that does not exist: NamespaceLifecycle).
  node.api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ziti-cni-identity' } } as never)
  node.api.put('serviceaccounts', { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'bench', namespace: 'apps' } } as never)

  // The baseline: one identity enrolled beforehand, in a Secret (what `identity-secret` pods use).
  const enrolled = ctrl.addCertIdentity('bench-secret-identity', [])
  enrolled.identity.roleAttributes = ['bench']
  await node.createSecret('apps', 'bench-identity', { 'identity.json': JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${enrolled.cert}`, key: `pem:${enrolled.key}`, ca: `pem:${ctrl.ca.certPem}` } }) })

  const tls = enrollmentTls(node.gateway)
  const controller = (enrollUrl: string) => ({
    url: ctrl.url, cluster: 'bench', reconcileSeconds: 5, graceSeconds: 3, leaseSeconds: 5,
    enrollUrl, enrollCa: tls.ca.certPem, enrollImage: IMAGES.validator,
    attributePolicy: [{ namespace: 'apps', serviceAccount: 'bench', attributes: ['bench'] }],
  })
  const replica = await startIdentityControllerReplica({ controller: controller('https://127.0.0.1:1') }, { kubeconfig: node.agentKubeconfig, credential, replica: 'ic-0', tls: { cert: tls.serving.certPem, key: tls.serving.keyPem }, host: node.gateway, port: 0 })
  closers.push(() => replica.close())
  await until('the replica to lead', () => replica.rt.leader.isLeader(), 20_000)
  const webhook = await startWebhook({ validator: { image: IMAGES.validator }, controller: controller(`https://${node.gateway}:${replica.port}`) })
  closers.push(() => webhook.close())
  node.api.admission = webhook.admission

  const ours = () => [...ctrl.identities.values()].filter((i) => i.tags['ziti-cni.openziti.io/cluster'] === 'bench')
  const manifest = (name: string, auto: boolean) => {
    const m = appPod(name, 'apps', auto
      ? { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'bench', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }
      : { 'cni.openziti.io/identity-secret': 'bench-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' })
    m.spec!.serviceAccountName = 'bench'
    return m
  }
  const identityOf = (pod: V1Pod) => ours().find((i) => i.tags['ziti-cni.openziti.io/pod-uid'] === pod.metadata!.uid)
  const remove = async (rp: RunningPod) => {
    await node.removePod(rp)
    node.api.delete('pods', 'apps', rp.pod.metadata!.name!)
  }

  // ---- Interleaved single pods ----
  interface Sample { enrolledMs?: number; runningMs: number; replyMs: number }
  const samples = { auto: [] as Sample[], secret: [] as Sample[] }
  const one = async (name: string, auto: boolean): Promise<Sample> => {
    const t0 = performance.now()
    const pod = await node.createPod(manifest(name, auto))
    const rp = await node.runPod(pod, { initTimeoutMs: 60_000 })
    const runningMs = performance.now() - t0
    let enrolledMs: number | undefined
    if (auto) {
      const id = identityOf(pod)
      if (!id || id.enrollment) throw new Error(`${name}: running but not enrolled`)
      // The sidecar's enrollment: the one POST /enroll of this pod's window at the controller.
      const call = stamped.find((c) => c.at >= t0 && c.method === 'POST' && c.path.startsWith('/edge/client/v1/enroll') && c.status === 200)
      enrolledMs = call ? call.at - t0 : undefined
    }
    const reply = await until(`${name}: an intercepted reply`, async () => {
      const r = await app(node, rp, ['tcp', 'pg.ziti', '5432'])
      return /^ziti-service=postgres /.test(r.reply ?? '') && r
    }, 60_000, 0)
    const replyMs = performance.now() - t0
    if (!reply) throw new Error('unreachable')
    await remove(rp)
    if (auto) await until(`${name}: its identity to go`, () => !identityOf(pod), 30_000)
    return { enrolledMs, runningMs, replyMs }
  }
  // A warm-up pair (image unpacking, first logins) that is not counted.
  await one('warm-auto', true)
  await one('warm-secret', false)
  let stop = sampleLoad()
  for (let i = 0; i < PODS; i++) {
    const order = i % 2 === 0 ? [true, false] : [false, true]
    for (const auto of order) samples[auto ? 'auto' : 'secret'].push(await one(`${auto ? 'auto' : 'secret'}-${i}`, auto))
  }
  const interleavedLoad = stop()
  const q = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]! }
  const med = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2 }
  const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`
  const row = (what: string, xs: number[]) => `  ${what.padEnd(44)} median ${fmt(med(xs)).padStart(8)}   p90 ${fmt(q(xs, 0.9)).padStart(8)}`
  out(`identity: auto vs Secret identity, ${PODS} pods each, interleaved, containerd + runc (${interleavedLoad})`)
  out(row('Secret: created -> running (init + sidecar)', samples.secret.map((s) => s.runningMs)))
  out(row('Secret: created -> first intercepted reply', samples.secret.map((s) => s.replyMs)))
  out(row('auto:   created -> enrolled (init)', samples.auto.map((s) => s.enrolledMs ?? NaN)))
  out(row('auto:   created -> running (init + sidecar)', samples.auto.map((s) => s.runningMs)))
  out(row('auto:   created -> first intercepted reply', samples.auto.map((s) => s.replyMs)))
  const ratio = med(samples.auto.map((s) => s.replyMs)) / med(samples.secret.map((s) => s.replyMs))
  out(`  ratio auto/Secret (median, to first reply): ${ratio.toFixed(2)}x (+${fmt(med(samples.auto.map((s) => s.replyMs)) - med(samples.secret.map((s) => s.replyMs)))})`)

  // ---- Burst ----
  if (BURST > 0) {
    const throttledBefore = await throttled()
    const reviewsBefore = node.api.serviceAccountTokens.reviews.length
    const callsBefore = stamped.length
    stop = sampleLoad()
    const t0 = performance.now()
    const pods = await Promise.all(Array.from({ length: BURST }, (_, i) => node.createPod(manifest(`burst-${i}`, true))))
    const created = performance.now() - t0
    // Each pod runs or gives up after DEADLINE; the kubelet keeps restarting what failed.
    const settled = await Promise.allSettled(pods.map((p) => node.runPod(p, { initTimeoutMs: DEADLINE_MS, until: 'running', deadlineMs: DEADLINE_MS })))
    const allRunning = performance.now() - t0
    const started = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
    const snapshots = settled.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as PodStartError).pod))
    const restarts = (name: string) => snapshots.reduce((a, rp) => a + (rp?.records?.get(name)?.restarts ?? 0), 0)
    const ids = pods.map(identityOf)
    const enrolledCount = ids.filter((i) => i && !i.enrollment && i.certFingerprint).length
    const reviews = node.api.serviceAccountTokens.reviews.length - reviewsBefore
    const throttledCount = (await throttled()) - throttledBefore
    const burstLoad = stop()
    // Deleted: the API server forgets them (the watch deletes their identities), the kubelet
    // tears them down (also the ones still restarting).
    const d0 = performance.now()
    for (const p of pods) node.api.delete('pods', 'apps', p.metadata.name)
    const teardown = node.kubelet.removeAll()
    const gone = await until('every burst identity to go', () => ours().length === 0, 120_000, 100).then(() => performance.now() - d0, () => NaN)
    await teardown
    const leaked = ours().length
    // Controller calls over the pods' whole life: created, enrolled, deleted (and the periodic
    // reconcile lists that ran meanwhile).
    const burstCalls = stamped.slice(callsBefore)
    const byController = burstCalls.filter((c) => c.identity === admin.identity.id)
    out(`burst of ${BURST} identity: auto pods created at once (${burstLoad})`)
    out(`  all stored (admission) ${fmt(created)}; running ${started.length}/${BURST} after ${fmt(allRunning)} (deadline ${fmt(DEADLINE_MS)}); restarts: ziti-enroll ${restarts('ziti-enroll')}, sidecar ${restarts('ziti-tunnel')} (startup probe under load)`)
    out(`  identities created ${ids.filter(Boolean).length}/${BURST}, enrolled in their own pod (init step) ${enrolledCount}/${BURST}, distinct ${new Set(ids.map((i) => i?.id)).size}`)
    // The periodic reconcile's list (`name contains "<prefix>-"`) runs every reconcileSeconds
    // whatever the pods do: counted apart from the calls each pod causes.
    const isReconcile = (c: FakeCall) => c.method === 'GET' && !!new URLSearchParams(c.path.split('?')[1] ?? '').get('filter')?.startsWith('name contains')
    const perPod = byController.filter((c) => !isReconcile(c))
    out(`  OpenZiti controller calls per pod by the identity controller: ${(perPod.length / BURST).toFixed(2)} (${summarize(perPod)}); plus ${byController.length - perPod.length} reconcile list pages over the ${fmt(performance.now() - t0)} (reconcileSeconds 5); all calls per pod, sidecars' logins, enrollments and service lists included: ${(burstCalls.length / BURST).toFixed(2)}`)
    out(`  enrollment requests throttled (429, retried by the init step): ${throttledCount}; TokenReviews: ${reviews} (${(reviews / BURST).toFixed(2)} per pod)`)
    out(`  after deleting all ${BURST}: identities left ${leaked} (leaked), none left after ${fmt(gone)}`)
    if (leaked > 0 || started.length !== BURST) exitCode = 1
  }

  async function throttled(): Promise<number> {
    const text = await replica.registry.metrics()
    return [...text.matchAll(/^ziti_cni_enroll_throttled_total\{[^}]*\} (\d+)/gm)].reduce((a, m) => a + Number(m[1]), 0)
  }
} catch (e) {
  process.stderr.write(`bench-auto-identity: ${(e as Error).stack ?? e}\n`)
  exitCode = 1
} finally {
  await node.teardown().catch(() => {})
  for (const c of closers.reverse()) await c().catch(() => {})
}
process.exit(exitCode)

/** Controller calls by operation, e.g. "POST /identities x1.00". */
function summarize(calls: FakeCall[]): string {
  const n = new Map<string, number>()
  for (const c of calls) {
    const op = `${c.method} ${c.path.split('?')[0]!.replace(/^\/edge\/(management|client)\/v1/, '').replace(/^\/(identities|services|configs)\/[^/]+/, '/$1/:id')}`
    n.set(op, (n.get(op) ?? 0) + 1)
  }
  return [...n].sort((a, b) => b[1] - a[1]).map(([op, k]) => `${op} ${k}`).join(', ')
}
