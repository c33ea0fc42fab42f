// The node agent's memory with an empty pod cache and with N pods of its node cached: the real
// agent bundle (dist/agent.mjs, as the DaemonSet runs it, --no-install so no root dir is
// touched) against the API server stand-in, which serves the pods through list+watch. Figures
// from /proc/PID/status (VmRSS now, VmHWM the peak, RssAnon: heap and malloc, RssFile: the
// node binary's pages) and the agent's own prom-client gauges
// (V8 heap used/total, external), so the report says where the memory is.
// The agent runs with the NODE_OPTIONS the shipped DaemonSet sets (deploy/base/agent).
//   node cni-plugin/bench/rss.ts [N]   (default 500; BENCH_NODE_OPTIONS overrides NODE_OPTIONS,
//   BENCH_SETTLE_MS the wait before each reading, default 2000; BENCH_AGENT_BUNDLE another
//   agent bundle, e.g. an older build to compare)
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { createCa, createServingCert } from '../../webhook/src/tls/certs.ts'
import { KubeApiStandIn } from '../../e2e/node/lib/kube-api.ts'
import { AGENT_BUNDLE, freePort } from '../../e2e/node/lib/node.ts'

export interface MemoryFigures { rssMiB: number; hwmMiB: number; anonMiB: number; fileMiB: number; heapUsedMiB: number; heapTotalMiB: number; externalMiB: number }
export interface RssResult { empty: MemoryFigures; full: MemoryFigures; listed: MemoryFigures; cached: number; listedCached: number; podJsonBytes: number }

const MiB = 1024 * 1024
const NODE = 'bench-node'

function procStatus(pid: number): { rssMiB: number; hwmMiB: number; anonMiB: number; fileMiB: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)![1]) / 1024
  return { rssMiB: kb('VmRSS'), hwmMiB: kb('VmHWM'), anonMiB: kb('RssAnon'), fileMiB: kb('RssFile') }
}

function gauge(metrics: string, name: string, labels = ''): number {
  const line = metrics.split('\n').find((l) => l.startsWith(`${name}${labels} `) || l.startsWith(`${name}${labels}{`))
  return line ? Number(line.split(' ').at(-1)) : NaN
}

/**
 * A pod as the API returns it on a real cluster: owner, managedFields from the controller and
 * the kubelet, two containers with env and mounts, status with conditions (~6 KiB of JSON).
 */
export function realisticPod(i: number, nodeName: string, intent: string | undefined): object {
  const name = `app-${i % 20}-7d9f8c6b5-${(i * 7919).toString(36).padStart(5, 'x')}`
  const at = '2026-12-01T10:00:00Z'
  const container = (n: string) => ({
    name: n, image: `123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/${n}:1.4.${i % 9}`, imagePullPolicy: 'IfNotPresent',
    ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }],
    env: Array.from({ length: 12 }, (_, k) => ({ name: `SETTING_${k}`, value: `value-${k}-${'x'.repeat(16)}` })),
    resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '256Mi' } },
    volumeMounts: [{ name: 'kube-api-access-abcde', readOnly: true, mountPath: '/var/run/secrets/kubernetes.io/serviceaccount' }],
    terminationMessagePath: '/dev/termination-log', terminationMessagePolicy: 'File',
  })
  return {
    metadata: {
      name, namespace: `team-${i % 5}`, generateName: name.slice(0, -5),
      labels: { app: `app-${i % 20}`, 'pod-template-hash': '7d9f8c6b5', 'app.kubernetes.io/part-of': 'shop' },
      annotations: { ...(intent ? { 'cni.openziti.io/interception': intent } : {}), 'kubectl.kubernetes.io/restartedAt': at },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `app-${i % 20}-7d9f8c6b5`, uid: randomUUID(), controller: true, blockOwnerDeletion: true }],
      managedFields: [
        { manager: 'kube-controller-manager', operation: 'Update', apiVersion: 'v1', time: at, fieldsType: 'FieldsV1', fieldsV1: { 'f:metadata': { 'f:generateName': {}, 'f:labels': { '.': {}, 'f:app': {}, 'f:pod-template-hash': {} }, 'f:ownerReferences': { '.': {}, 'k:{"uid":"x"}': {} } }, 'f:spec': { 'f:containers': { 'k:{"name":"app"}': { '.': {}, 'f:env': {}, 'f:image': {}, 'f:imagePullPolicy': {}, 'f:name': {}, 'f:ports': {}, 'f:resources': {} } }, 'f:dnsPolicy': {}, 'f:enableServiceLinks': {}, 'f:restartPolicy': {}, 'f:schedulerName': {}, 'f:securityContext': {}, 'f:terminationGracePeriodSeconds': {} } } },
        { manager: 'kubelet', operation: 'Update', apiVersion: 'v1', time: at, fieldsType: 'FieldsV1', subresource: 'status', fieldsV1: { 'f:status': { 'f:conditions': { 'k:{"type":"ContainersReady"}': { '.': {}, 'f:lastProbeTime': {}, 'f:lastTransitionTime': {}, 'f:status': {}, 'f:type': {} }, 'k:{"type":"Ready"}': { '.': {}, 'f:lastProbeTime': {}, 'f:lastTransitionTime': {}, 'f:status': {}, 'f:type': {} } }, 'f:containerStatuses': {}, 'f:hostIP': {}, 'f:phase': {}, 'f:podIP': {}, 'f:podIPs': { '.': {}, 'k:{"ip":"10.0.1.5"}': { '.': {}, 'f:ip': {} } }, 'f:startTime': {} } } },
      ],
    },
    spec: {
      nodeName, serviceAccountName: 'default', restartPolicy: 'Always', dnsPolicy: 'ClusterFirst', schedulerName: 'default-scheduler', terminationGracePeriodSeconds: 30,
      containers: [container('app'), container('metrics')],
      volumes: [{ name: 'kube-api-access-abcde', projected: { defaultMode: 420, sources: [{ serviceAccountToken: { expirationSeconds: 3607, path: 'token' } }, { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } }] } }],
      tolerations: [{ key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 }, { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 }],
    },
    status: {
      phase: 'Running', hostIP: '192.168.10.4', podIP: `10.0.${(i >> 8) & 255}.${i & 255}`, podIPs: [{ ip: `10.0.${(i >> 8) & 255}.${i & 255}` }], startTime: at, qosClass: 'Burstable',
      conditions: ['Initialized', 'Ready', 'ContainersReady', 'PodScheduled'].map((type) => ({ type, status: 'True', lastProbeTime: null, lastTransitionTime: at })),
      containerStatuses: ['app', 'metrics'].map((n) => ({ name: n, ready: true, restartCount: 0, started: true, image: `team/${n}:1.4`, imageID: `sha256:${'a'.repeat(64)}`, containerID: `containerd://${'b'.repeat(64)}`, state: { running: { startedAt: at } } })),
    },
  }
}

/**
 * Starts the agent against the stand-in and measures it with an empty cache; feeds `pods` pods
 * (watch events) and measures again; then starts a second agent while they exist (its first
 * list: 500 pods in one page, the peak a restart or a node with a full cache sees).
 */
/** NODE_OPTIONS of the agent container in the shipped DaemonSet ('' when it sets none). */
export function shippedNodeOptions(): string {
  const ds = parseYaml(readFileSync(new URL('../../deploy/base/agent/daemonset.yaml', import.meta.url), 'utf8')) as { spec: { template: { spec: { containers: Array<{ name: string; env?: Array<{ name: string; value?: string }> }> } } } }
  return ds.spec.template.spec.containers.find((c) => c.name === 'agent')?.env?.find((e) => e.name === 'NODE_OPTIONS')?.value ?? ''
}

export async function measureAgentRss(pods: number, opts: { intent: string; nodeOptions: string; settleMs?: number; bundle?: string }): Promise<RssResult> {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-bench-rss-'))
  const ca = createCa({ commonName: 'bench-ca', validDays: 1 })
  const serving = createServingCert(ca, { commonName: 'kube-apiserver', ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'], validDays: 1 })
  const token = `token-${randomUUID()}`
  const api = new KubeApiStandIn({ cert: serving.certPem, key: serving.keyPem, tokens: [token] })
  const url = await api.listen()
  const kubeconfig = join(dir, 'kubeconfig')
  writeFileSync(kubeconfig, JSON.stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'b',
    clusters: [{ name: 'b', cluster: { server: url, 'certificate-authority-data': Buffer.from(ca.certPem).toString('base64') } }],
    users: [{ name: 'b', user: { token } }], contexts: [{ name: 'b', context: { cluster: 'b', user: 'b' } }],
  }))
  const settle = (ms: number) => new Promise((r) => setTimeout(r, ms))
  const agents: ChildProcess[] = []
  const startAgent = async (n: number) => {
    const port = await freePort()
    const agent = spawn(process.execPath, [opts.bundle ?? AGENT_BUNDLE, 'run', '--no-install', '--node-name', NODE, '--kubeconfig', kubeconfig,
      '--socket', join(dir, `run${n}/agent.sock`), '--state-dir', join(dir, `state${n}`), '--health-addr', `127.0.0.1:${port}`, '--log-level', 'warn', '--drift', 'off'], { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH, NODE_OPTIONS: opts.nodeOptions } })
    agents.push(agent)
    let stderr = ''
    agent.stderr!.on('data', (c: Buffer) => { stderr += c.toString() })
    const metrics = async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    for (let t = Date.now(); ; await settle(100)) {
      if (agent.exitCode !== null) throw new Error(`agent exited ${agent.exitCode}: ${stderr}`)
      if (Date.now() - t > 20_000) throw new Error(`agent not ready in 20 s: ${stderr}`)
      if ((await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.status === 200) break
    }
    const cached = async () => gauge(await metrics(), 'ziti_cni_cached_pods')
    const figures = async (): Promise<MemoryFigures> => {
      await settle(opts.settleMs ?? 2000)
      const m = await metrics()
      return { ...procStatus(agent.pid!), heapUsedMiB: gauge(m, 'ziti_cni_agent_nodejs_heap_size_used_bytes') / MiB, heapTotalMiB: gauge(m, 'ziti_cni_agent_nodejs_heap_size_total_bytes') / MiB, externalMiB: gauge(m, 'ziti_cni_agent_nodejs_external_memory_bytes') / MiB }
    }
    return { cached, figures }
  }
  try {
    const first = await startAgent(1)
    const empty = await first.figures()
    let podJsonBytes = 0
    for (let i = 0; i < pods; i++) {
      const pod = realisticPod(i, NODE, i % 2 === 0 ? opts.intent : undefined)
      podJsonBytes += JSON.stringify(pod).length
      api.put('pods', pod as never)
    }
    let cached = 0
    for (const t = Date.now(); Date.now() - t < 30_000 && cached < pods; await settle(200)) cached = await first.cached()
    const full = await first.figures()
    const second = await startAgent(2)
    const listed = await second.figures()
    return { empty, full, listed, cached, listedCached: await second.cached(), podJsonBytes: podJsonBytes / Math.max(pods, 1) }
  } finally {
    for (const a of agents) a.kill('SIGKILL')
    await api.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

export function formatMemory(f: MemoryFigures): string {
  return `RSS ${f.rssMiB.toFixed(1)} MiB (peak ${f.hwmMiB.toFixed(1)}; anonymous ${f.anonMiB.toFixed(1)}, file-backed ${f.fileMiB.toFixed(1)}), V8 heap ${f.heapUsedMiB.toFixed(1)}/${f.heapTotalMiB.toFixed(1)} MiB used/total, external ${f.externalMiB.toFixed(1)} MiB`
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const n = Number(process.argv[2] ?? 500)
  const intent = '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}'
  const nodeOptions = process.env.BENCH_NODE_OPTIONS ?? shippedNodeOptions()
  const r = await measureAgentRss(n, { intent, nodeOptions, settleMs: Number(process.env.BENCH_SETTLE_MS ?? 2000), ...(process.env.BENCH_AGENT_BUNDLE ? { bundle: process.env.BENCH_AGENT_BUNDLE } : {}) })
  process.stdout.write(`NODE_OPTIONS=${JSON.stringify(nodeOptions)}\n`)
  process.stdout.write(`agent, empty cache:             ${formatMemory(r.empty)}\nagent, ${r.cached} pods watched in:    ${formatMemory(r.full)} (pods ~${(r.podJsonBytes / 1024).toFixed(1)} KiB of JSON each)\nagent started with ${r.listedCached} listed: ${formatMemory(r.listed)}\n`)
}
