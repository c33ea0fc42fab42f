// One Kubernetes node for the node-level suites, with real parts wherever they can run here:
// containerd + runc driven over CRI by a kubelet-like harness (containerd's own libcni runs
// the CNI chain from its conf dir: bridge + host-local from Debian, then ziti-cni as the agent
// installed it), the real agent with its real installer, and an API server stand-in (the one
// allowed stand-in, besides the tunnelers). Everything lives under one temp dir and one name
// prefix so teardown, and an interrupted run's sweep, remove all of it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { V1Pod } from '@kubernetes/client-node'
import { createCa, createServingCert, type KeyPair } from '../../../webhook/src/tls/certs.ts'
import { KubeApiStandIn } from './kube-api.ts'
import { Containerd, NETNS_LIST, cleanupInstance } from './containerd.ts'
import { Kubelet, type RunningPod } from './kubelet.ts'
import { buildTestImages, IMAGES } from './test-images.ts'
import { removeDirWithMounts } from './mounts.ts'
import { FakeKubelet } from './fake-kubelet.ts'

export const REPO = fileURLToPath(new URL('../../../', import.meta.url))
export const PLUGIN_SEA = join(REPO, 'cni-plugin/dist/ziti-cni')
export const AGENT_BUNDLE = join(REPO, 'cni-plugin/dist/agent.mjs')
export const REFERENCE_PLUGINS = '/usr/lib/cni'
export const NODE_NAME = 'e2e-node'
const TEMP_PREFIX = 'zcni-e2e-'

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}

/**
 * The environment for processes we start: the test runner's NODE_OPTIONS (tap's loaders)
 * and its own variables would slow every child down.
 */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (k !== 'NODE_OPTIONS' && !k.startsWith('TAP') && !k.startsWith('_TAPJS')) env[k] = v
  return { ...env, ...extra }
}

/** Images are built once per process and imported into every node's containerd. */
let imageArchive: string | undefined
function testImages(): string {
  if (!imageArchive) {
    const { archive, work } = buildTestImages()
    process.once('exit', () => rmSync(work, { recursive: true, force: true }))
    imageArchive = archive
  }
  return imageArchive
}

export interface NodeOptions {
  /** Short unique prefix for bridge and subnet (keeps parallel suites apart). */
  id: number
  admission?: { url: string; ca: string }
  /** Agent flags to add or override (e.g. ['--repair', 'off']). */
  agentArgs?: string[]
  /**
   * tun mode: the agent serves its device plugin in this node's device-plugin dir, a fake
   * kubelet (real gRPC) registers it, and containers that ask for the resource get the
   * devices its Allocate returns, as CRI devices.
   */
  tunDevicePlugin?: boolean
}

export interface PodManifest { apiVersion?: string; kind?: string; metadata: { name: string; namespace: string; annotations?: Record<string, string>; labels?: Record<string, string>; ownerReferences?: object[] }; spec?: object }

export class TestNode {
  readonly dir: string
  readonly prefix: string
  readonly bridge: string
  readonly subnet: string
  readonly gateway: string
  /** The pod network's IPv6 range (dual-stack pods, as clusters increasingly run). */
  readonly subnet6: string
  readonly confDir: string
  readonly binDir: string
  readonly stateDir: string
  readonly socket: string
  readonly tokenFile: string
  readonly caFile: string
  readonly pluginKubeconfig: string
  readonly agentKubeconfig: string
  readonly pluginLog: string
  ca!: KeyPair
  api!: KubeApiStandIn
  apiUrl = ''
  healthPort = 0
  containerd: Containerd
  kubelet!: Kubelet
  agent: ChildProcess | undefined
  agentLog: string[] = []
  /** The cluster DNS server address (set by the suite once its DNS pod runs). */
  clusterDns: string[] = []
  /** tun mode: the kubelet's device manager, as the agent's device plugin sees it. */
  deviceManager: FakeKubelet | undefined

  readonly opts: NodeOptions

  constructor(opts: NodeOptions) {
    this.opts = opts
    this.dir = mkdtempSync(join(tmpdir(), TEMP_PREFIX))
    this.prefix = `zc${opts.id}${randomBytes(2).toString('hex')}`
    this.bridge = `${this.prefix}br`
    this.subnet = `10.${200 + (opts.id % 50)}.${Math.floor(Math.random() * 250)}.0/24`
    this.gateway = this.subnet.replace(/0\/24$/, '1')
    this.subnet6 = `fd7a:${opts.id}:${randomBytes(2).toString('hex')}::/64`
    this.confDir = join(this.dir, 'net.d')
    this.binDir = join(this.dir, 'bin')
    this.stateDir = join(this.dir, 'state')
    this.socket = join(this.dir, 'run/agent.sock')
    this.tokenFile = join(this.dir, 'sa/token')
    this.caFile = join(this.dir, 'sa/ca.crt')
    this.pluginKubeconfig = join(this.confDir, 'ziti-cni.d/ziti-cni.kubeconfig')
    this.agentKubeconfig = join(this.dir, 'agent.kubeconfig')
    this.pluginLog = join(this.dir, 'ziti-cni.log')
    for (const d of [this.confDir, this.binDir, join(this.dir, 'sa')]) mkdirSync(d, { recursive: true })
    // Who owns this node: a sweep by another suite running at the same time leaves it alone.
    writeFileSync(join(this.dir, OWNER_FILE), `${process.pid} ${this.prefix}\n`)
    // A node's CNI bin dir holds the reference plugins; the agent installs ziti-cni next to them.
    for (const p of ['bridge', 'host-local', 'loopback', 'portmap']) symlinkSync(join(REFERENCE_PLUGINS, p), join(this.binDir, p))
    this.containerd = new Containerd({ dir: join(this.dir, 'containerd'), cniBinDir: this.binDir, cniConfDir: this.confDir, sandboxImage: IMAGES.pause })
  }

  /** The primary CNI's conflist, as a cluster CNI would write it. */
  primaryConflist(extra: Record<string, unknown> = {}): string {
    return JSON.stringify({
      cniVersion: '1.0.0', name: 'e2e-pod-network',
      plugins: [{
        type: 'bridge', bridge: this.bridge, isGateway: true, isDefaultGateway: true, ipMasq: false, hairpinMode: true,
        ipam: { type: 'host-local', ranges: [[{ subnet: this.subnet, gateway: this.gateway }], [{ subnet: this.subnet6 }]], dataDir: join(this.dir, 'ipam') },
        ...extra,
      }],
    }, null, 2)
  }

  async start(opts: { agent?: boolean } = {}): Promise<void> {
    this.ca = createCa({ commonName: 'e2e-cluster-ca', validDays: 1 })
    const serving = createServingCert(this.ca, { commonName: 'kube-apiserver', ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'], validDays: 1 })
    const token = `token-${randomUUID()}`
    writeFileSync(this.tokenFile, token)
    writeFileSync(this.caFile, this.ca.certPem)
    this.api = new KubeApiStandIn({ cert: serving.certPem, key: serving.keyPem, tokens: [token], admission: this.opts.admission })
    this.apiUrl = await this.api.listen()
    writeFileSync(this.agentKubeconfig, JSON.stringify({
      apiVersion: 'v1', kind: 'Config', 'current-context': 'e2e',
      clusters: [{ name: 'e2e', cluster: { server: this.apiUrl, 'certificate-authority-data': Buffer.from(this.ca.certPem).toString('base64') } }],
      users: [{ name: 'agent', user: { token } }],
      contexts: [{ name: 'e2e', context: { cluster: 'e2e', user: 'agent' } }],
    }))
    this.guardHost()
    writeFileSync(join(this.confDir, '10-bridge.conflist'), this.primaryConflist())
    await this.containerd.start()
    this.containerd.importImages(testImages())
    this.kubelet = new Kubelet({
      cri: this.containerd.cri,
      podsDir: join(this.dir, 'pods'),
      dns: { servers: this.clusterDns, domain: 'cluster.local' },
      secrets: (ns, name) => {
        const s = this.api.get('secrets', ns, name) as { data?: Record<string, string> } | undefined
        return s ? Object.fromEntries(Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')])) : undefined
      },
      // The kubelet's status manager: write what it saw into the stored pod.
      reportStatus: (pod, status) => {
        const stored = this.api.get('pods', pod.metadata!.namespace, pod.metadata!.name!)
        if (stored && stored.metadata.uid === pod.metadata!.uid) this.api.put('pods', { ...stored, status })
      },
      netnsList: join(this.containerd.dirs.dir, NETNS_LIST),
      serviceAccountToken: (pod, audience, seconds) => this.api.serviceAccountTokens.request(pod.metadata!.namespace!, pod.spec?.serviceAccountName || 'default', { audiences: [audience], expirationSeconds: seconds, pod: { name: pod.metadata!.name!, uid: pod.metadata!.uid! } }),
      // Extended resources in a container's limits: Allocate through the registered plugin.
      devices: async (pod, c) => {
        const out = []
        for (const [resource, qty] of Object.entries(c.resources?.limits ?? {})) {
          if (!resource.includes('/') || resource.startsWith('kubernetes.io/')) continue
          if (!this.deviceManager) throw new Error(`UnexpectedAdmissionError: no device plugin for ${resource} on this node`)
          out.push(...await this.deviceManager.allocate(resource, Number(qty), { podUid: pod.metadata!.uid!, container: c.name }))
        }
        return out
      },
      releaseDevices: (pod) => this.deviceManager?.freePod(pod.metadata!.uid!),
    })
    if (this.opts.tunDevicePlugin) {
      const dir = join(this.dir, 'device-plugins')
      mkdirSync(dir, { recursive: true })
      this.deviceManager = new FakeKubelet(dir)
      await this.deviceManager.start()
    }
    await this.api.create('daemonsets', { metadata: { name: 'ziti-cni-agent', namespace: 'ziti-cni-system' }, spec: {} })
    // "default" is the API server's own (kube-api/lifecycle.ts SYSTEM_NAMESPACES).
    for (const ns of ['apps', 'plain']) {
      await this.api.create('namespaces', { metadata: { name: ns, labels: { 'kubernetes.io/metadata.name': ns, ...(ns === 'apps' ? { 'cni.openziti.io/inject': 'enabled' } : {}) } } })
    }
    this.healthPort = await freePort()
    if (opts.agent !== false) await this.startAgent()
  }

  /**
   * The bridge plugin (isGateway) turns on forwarding; a guard table makes sure nothing a
   * test pod sends ever leaves the test bridge (e.g. a connection that was not intercepted).
   */
  guardHost(): void {
    const nft = `table inet ${this.prefix}_guard {\n\tchain forward {\n\t\ttype filter hook forward priority -10; policy accept;\n\t\tiifname "${this.bridge}" oifname != "${this.bridge}" drop\n\t\tiifname != "${this.bridge}" oifname "${this.bridge}" drop\n\t}\n}\n`
    const r = spawnSync('nft', ['-f', '-'], { input: nft, encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`cannot install the host guard: ${r.stderr}`)
  }

  agentArgs(): string[] {
    const base = [AGENT_BUNDLE, 'run', '--node-name', NODE_NAME, '--kubeconfig', this.agentKubeconfig, '--socket', this.socket,
      '--state-dir', this.stateDir, '--cni-bin-dir', this.binDir, '--cni-conf-dir', this.confDir, '--plugin-binary', PLUGIN_SEA,
      '--plugin-kubeconfig', this.pluginKubeconfig, '--plugin-log-file', this.pluginLog, '--token-file', this.tokenFile, '--ca-file', this.caFile,
      '--api-server', this.apiUrl, '--health-addr', `127.0.0.1:${this.healthPort}`, '--check-interval', '1', '--log-level', 'debug',
      '--daemonset', 'ziti-cni-system/ziti-cni-agent', '--repair', 'delete', '--bpf-object', join(REPO, 'cni-plugin/dist/tproxy.bpf.o')]
    const tun = this.opts.tunDevicePlugin ? ['--tun-device-plugin', '--device-plugin-dir', join(this.dir, 'device-plugins'), '--tun-device-node', join(this.dir, 'dev/net-tun'), '--tun-devices', '16'] : []
    return [...base, ...tun, ...(this.opts.agentArgs ?? [])]
  }

  async startAgent(): Promise<void> {
    const agent = spawn(process.execPath, this.agentArgs(), { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() })
    this.agent = agent
    const collect = (c: Buffer) => { for (const l of c.toString('utf8').split('\n')) if (l) this.agentLog.push(l) }
    agent.stdout!.on('data', collect)
    agent.stderr!.on('data', collect)
    const deadline = Date.now() + 20_000
    while (Date.now() < deadline) {
      if (agent.exitCode !== null) throw new Error(`agent exited with ${agent.exitCode}:\n${this.agentLog.slice(-20).join('\n')}`)
      try {
        const r = await fetch(`http://127.0.0.1:${this.healthPort}/readyz`)
        if (r.status === 200) return
      } catch { /* not yet */ }
      await new Promise((r) => setTimeout(r, 100))
    }
    throw new Error(`agent not ready within 20s:\n${this.agentLog.slice(-20).join('\n')}`)
  }

  async stopAgent(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const agent = this.agent
    if (!agent || agent.exitCode !== null) return
    const exited = new Promise((r) => agent.once('exit', r))
    agent.kill(signal)
    await exited
    this.agent = undefined
  }

  async metrics(): Promise<string> {
    return (await fetch(`http://127.0.0.1:${this.healthPort}/metrics`)).text()
  }

  /** A Secret, as `kubectl create secret generic` would store it. */
  async createSecret(namespace: string, name: string, data: Record<string, string>): Promise<void> {
    const encoded = Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')]))
    this.api.put('secrets', { metadata: { name, namespace }, type: 'Opaque', data: encoded } as never)
  }

  /** Stores a pod (through admission when configured) scheduled on this node. */
  async createPod(manifest: PodManifest): Promise<V1Pod & { metadata: { name: string; namespace: string; uid: string; annotations: Record<string, string> } }> {
    const spec = { ...manifest.spec, nodeName: NODE_NAME }
    return this.api.create('pods', { ...manifest, spec } as never) as never
  }

  /** The kubelet runs the pod: RunPodSandbox (CNI ADD through containerd), then its containers. */
  runPod(pod: V1Pod, opts?: Parameters<Kubelet['runPod']>[1]): Promise<RunningPod> {
    return this.kubelet.runPod(pod, opts)
  }

  /** `kubectl exec` into one of the pod's containers. */
  exec(rp: RunningPod, container: string, cmd: string[], timeoutSeconds = 30) {
    return this.kubelet.exec(rp, container, cmd, timeoutSeconds)
  }

  /** Pod deletion on the node: StopPodSandbox runs CNI DEL through the chain. */
  removePod(rp: RunningPod): Promise<void> {
    return this.kubelet.removePod(rp)
  }

  /** `nft`/`ip` in a pod's netns as root on the node (what an operator would run). */
  inNetns(rp: RunningPod, argv: string[]): { status: number; stdout: string; stderr: string } {
    const r = spawnSync('nsenter', [`--net=${rp.netns}`, ...argv], { encoding: 'utf8' })
    return { status: r.status ?? 1, stdout: r.stdout, stderr: r.stderr }
  }

  hasTable(rp: RunningPod): boolean {
    return this.inNetns(rp, ['nft', 'list', 'table', 'inet', 'ziti_cni']).status === 0
  }

  async teardown(): Promise<void> {
    await this.kubelet?.removeAll().catch(() => {})
    await this.stopAgent().catch(() => {})
    await this.deviceManager?.stop().catch(() => {})
    await this.containerd.stop().catch(() => {})
    spawnSync('ip', ['link', 'del', this.bridge])
    spawnSync('nft', ['delete', 'table', 'inet', `${this.prefix}_guard`])
    await this.api?.close().catch(() => {})
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** Removes leftovers of interrupted runs: containerd instances, their netns, bridges, guards.
 * Nodes whose owning process is still alive (another suite running now) are left alone. */
export function sweepLeftovers(): void {
  const live = new Set<string>()
  for (const d of readdirSync(tmpdir()).filter((n) => n.startsWith(TEMP_PREFIX))) {
    const dir = join(tmpdir(), d)
    const owner = readOwner(dir)
    if (owner && owner.pid !== process.pid && processAlive(owner.pid)) {
      live.add(owner.prefix)
      continue
    }
    if (existsSync(join(dir, 'containerd'))) cleanupInstance(join(dir, 'containerd'))
    removeDirWithMounts(dir)
  }
  const links = spawnSync('ip', ['-o', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' }).stdout ?? ''
  for (const m of links.matchAll(/^\d+: ((zc\d+[0-9a-f]{4})br)[:@]/gm)) if (!live.has(m[2]!)) spawnSync('ip', ['link', 'del', m[1]!])
  const tables = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout ?? ''
  for (const m of tables.matchAll(/^table inet ((zc\d+[0-9a-f]{4})_guard)$/gm)) if (!live.has(m[2]!)) spawnSync('nft', ['delete', 'table', 'inet', m[1]!])
}

const OWNER_FILE = 'owner'

function readOwner(dir: string): { pid: number; prefix: string } | undefined {
  try {
    const [pid, prefix] = readFileSync(join(dir, OWNER_FILE), 'utf8').trim().split(' ')
    return pid && prefix ? { pid: Number(pid), prefix } : undefined
  } catch {
    return undefined
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
