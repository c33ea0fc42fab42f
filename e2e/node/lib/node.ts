// One "node" for the node-level suites: an API server stand-in, the real agent (built bundle)
// with its real installer, a CNI conf dir with a bridge+host-local primary list, and a
// runtime that creates a fresh netns per pod. Everything lives under one temp dir and one
// name prefix so teardown (and an interrupted run) can remove all of it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createCa, createServingCert, type KeyPair } from '../../../webhook/src/tls/certs.ts'
import { KubeApiStandIn } from './kube-api.ts'
import { CniCallError, CniRuntime, type Attachment } from './runtime.ts'
import { cleanEnv } from './processes.ts'

export const REPO = fileURLToPath(new URL('../../../', import.meta.url))
export const PLUGIN_SEA = join(REPO, 'cni-plugin/dist/ziti-cni')
export const AGENT_BUNDLE = join(REPO, 'cni-plugin/dist/agent.mjs')
export const REFERENCE_PLUGINS = '/usr/lib/cni'
export const NODE_NAME = 'e2e-node'

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

export interface NodeOptions {
  /** Short unique prefix for netns, bridge and subnet (keeps parallel suites apart). */
  id: number
  admission?: { url: string; ca: string }
}

export interface PodSandbox extends Attachment {
  netns: string
  ip: string
  result: unknown
  /** Per-plugin ADD time in ms, as the runtime saw it. */
  timings: Record<string, number>
}

export class TestNode {
  readonly dir: string
  readonly prefix: string
  readonly bridge: string
  readonly subnet: string
  readonly gateway: string
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
  runtime: CniRuntime
  agent: ChildProcess | undefined
  agentLog: string[] = []
  private sandboxes = new Set<string>()

  readonly opts: NodeOptions

  constructor(opts: NodeOptions) {
    this.opts = opts
    this.dir = mkdtempSync(join(tmpdir(), 'zcni-e2e-'))
    this.prefix = `zc${opts.id}${randomBytes(2).toString('hex')}`
    this.bridge = `${this.prefix}br`
    this.subnet = `10.${200 + (opts.id % 50)}.${Math.floor(Math.random() * 250)}.0/24`
    this.gateway = this.subnet.replace(/0\/24$/, '1')
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
    this.runtime = new CniRuntime(this.confDir, [this.binDir, REFERENCE_PLUGINS])
  }

  /** The primary CNI's conflist, as a cluster CNI would write it. */
  primaryConflist(extra: Record<string, unknown> = {}): string {
    return JSON.stringify({
      cniVersion: '1.0.0', name: 'e2e-pod-network',
      plugins: [{
        type: 'bridge', bridge: this.bridge, isGateway: true, isDefaultGateway: true, ipMasq: false, hairpinMode: true,
        ipam: { type: 'host-local', ranges: [[{ subnet: this.subnet, gateway: this.gateway }]], dataDir: join(this.dir, 'ipam') },
        ...extra,
      }],
    }, null, 2)
  }

  async start(): Promise<void> {
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
    await this.api.create('daemonsets', { metadata: { name: 'ziti-cni-agent', namespace: 'ziti-cni-system' }, spec: {} })
    for (const ns of ['default', 'apps', 'plain']) {
      await this.api.create('namespaces', { metadata: { name: ns, labels: { 'kubernetes.io/metadata.name': ns, ...(ns === 'apps' ? { 'cni.openziti.io/inject': 'enabled' } : {}) } } })
    }
    this.healthPort = await freePort()
    await this.startAgent()
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
    return [AGENT_BUNDLE, 'run', '--node-name', NODE_NAME, '--kubeconfig', this.agentKubeconfig, '--socket', this.socket,
      '--state-dir', this.stateDir, '--cni-bin-dir', this.binDir, '--cni-conf-dir', this.confDir, '--plugin-binary', PLUGIN_SEA,
      '--plugin-kubeconfig', this.pluginKubeconfig, '--plugin-log-file', this.pluginLog, '--token-file', this.tokenFile, '--ca-file', this.caFile,
      '--api-server', this.apiUrl, '--health-addr', `127.0.0.1:${this.healthPort}`, '--check-interval', '1', '--log-level', 'debug',
      '--daemonset', 'ziti-cni-system/ziti-cni-agent', '--repair', 'delete', '--bpf-object', join(REPO, 'cni-plugin/dist/tproxy.bpf.o')]
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

  async stopAgent(): Promise<void> {
    const agent = this.agent
    if (!agent || agent.exitCode !== null) return
    const exited = new Promise((r) => agent.once('exit', r))
    agent.kill('SIGTERM')
    await exited
    this.agent = undefined
  }

  async metrics(): Promise<string> {
    return (await fetch(`http://127.0.0.1:${this.healthPort}/metrics`)).text()
  }

  /** Stores a pod (through admission when configured) scheduled on this node. */
  async createPod(manifest: { apiVersion?: string; kind?: string; metadata: { name: string; namespace: string; annotations?: Record<string, string> }; spec?: object }): Promise<Record<string, any>> {
    const spec = { ...manifest.spec, nodeName: NODE_NAME }
    return this.api.create('pods', { ...manifest, spec } as never) as Promise<Record<string, any>>
  }

  /** Like the kubelet: netns, /etc/hosts from hostAliases, then CNI ADD through the chain. */
  async runSandbox(pod: Record<string, any>, opts: { resolvConf?: string } = {}): Promise<PodSandbox> {
    const netns = `${this.prefix}-${randomBytes(3).toString('hex')}`
    const r = spawnSync('ip', ['netns', 'add', netns])
    if (r.status !== 0) throw new Error(`ip netns add: ${r.stderr}`)
    this.sandboxes.add(netns)
    // `ip netns exec` bind-mounts /etc/netns/<name>/* over /etc: our kubelet-written files.
    const etc = `/etc/netns/${netns}`
    mkdirSync(etc, { recursive: true })
    const aliases = (pod.spec?.hostAliases ?? []) as Array<{ ip: string; hostnames: string[] }>
    writeFileSync(join(etc, 'hosts'), ['# Kubernetes-managed hosts file.', '127.0.0.1\tlocalhost', ...aliases.map((a) => `\n# Entries added by HostAliases.\n${a.ip}\t${a.hostnames.join('\t')}`)].join('\n') + '\n')
    if (opts.resolvConf) writeFileSync(join(etc, 'resolv.conf'), opts.resolvConf)
    const a: Attachment = {
      containerId: randomBytes(32).toString('hex'), netnsPath: `/var/run/netns/${netns}`, ifName: 'eth0',
      pod: { namespace: pod.metadata.namespace, name: pod.metadata.name, uid: pod.metadata.uid },
    }
    let result: unknown
    let timings: Record<string, number> = {}
    try {
      ({ result, timings } = await this.runtime.add(a))
    } catch (e) {
      // Keep the netns for inspection; the caller removes it (failedNetns) as a runtime would.
      if (e instanceof CniCallError) e.netns = netns
      throw e
    }
    const ip = ((result as { ips?: Array<{ address: string }> }).ips?.[0]?.address ?? '').split('/')[0]!
    return { ...a, netns, ip, result, timings }
  }

  async removeSandbox(s: PodSandbox, opts: { netnsFirst?: boolean } = {}): Promise<void> {
    if (opts.netnsFirst) this.deleteNetns(s.netns)
    await this.runtime.del(s)
    this.deleteNetns(s.netns)
  }

  deleteNetns(netns: string): void {
    spawnSync('ip', ['netns', 'del', netns])
    rmSync(`/etc/netns/${netns}`, { recursive: true, force: true })
    this.sandboxes.delete(netns)
  }

  async teardown(): Promise<void> {
    await this.stopAgent().catch(() => {})
    for (const ns of [...this.sandboxes]) this.deleteNetns(ns)
    spawnSync('ip', ['link', 'del', this.bridge])
    spawnSync('nft', ['delete', 'table', 'inet', `${this.prefix}_guard`])
    await this.api?.close().catch(() => {})
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** Removes leftovers of interrupted runs: netns and bridges with our prefix, /etc/netns dirs. */
export function sweepLeftovers(): void {
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? ''
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0]
    if (name && /^zc\d+[0-9a-f]{4}-/.test(name)) {
      spawnSync('ip', ['netns', 'del', name])
      rmSync(`/etc/netns/${name}`, { recursive: true, force: true })
    }
  }
  const links = spawnSync('ip', ['-o', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' }).stdout ?? ''
  for (const m of links.matchAll(/^\d+: (zc\d+[0-9a-f]{4}br)[:@]/gm)) spawnSync('ip', ['link', 'del', m[1]!])
  const tables = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout ?? ''
  for (const m of tables.matchAll(/^table inet (zc\d+[0-9a-f]{4}_guard)$/gm)) spawnSync('nft', ['delete', 'table', 'inet', m[1]!])
}
