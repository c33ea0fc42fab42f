// The kubelet's part, over CRI: a stored (admitted) pod becomes a sandbox and containers the way
// kuberuntime makes them, nothing more. Mapping (pure, `sandboxConfig` / `containerConfig`):
// metadata, hostname, DNS (dnsPolicy ClusterFirst), the managed /etc/hosts with hostAliases,
// emptyDir volumes, env (values, Secret keys, field refs, $(VAR) expansion), and per container
// runAsUser/runAsGroup, capabilities add/drop, no_new_privs from allowPrivilegeEscalation: false,
// readOnlyRootFilesystem, seccomp and the default masked/read-only /proc paths. Start order:
// init containers one by one (a native sidecar, restartPolicy Always, only gates the next one
// on its startup probe), then the app containers. No capability, uid or mount beyond that.
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { appendFileSync, chmodSync, mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import type { V1Container, V1Pod } from '@kubernetes/client-node'
import type { ContainerConfig, ContainerStatus, CriClient, PodSandboxConfig, SecurityProfile } from '../cri/client.ts'
import { removeDirWithMounts } from './mounts.ts'

// k8s.io/kubernetes pkg/securitycontext/util.go (ProcMount Default).
export const DEFAULT_MASKED_PATHS = ['/proc/asound', '/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap']
export const DEFAULT_READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger']

export interface ClusterDns { servers: string[]; domain: string }

export type SecretLookup = (namespace: string, name: string) => Record<string, string> | undefined

/** What the kubelet resolved for a container before CreateContainer. */
export interface ContainerInputs {
  env: Array<{ key: string; value: string }>
  mounts: Array<{ container_path: string; host_path: string; readonly?: boolean }>
  devices?: Array<{ container_path: string; host_path: string; permissions: string }>
  attempt: number
  logPath: string
}

/** Kubelet's seccomp choice: the container's profile, else the pod's, else Unconfined. */
function seccomp(pod: V1Pod, c: V1Container): SecurityProfile {
  const p = c.securityContext?.seccompProfile ?? pod.spec?.securityContext?.seccompProfile
  if (p?.type === 'RuntimeDefault') return { profile_type: 'RuntimeDefault' }
  if (p?.type === 'Localhost') return { profile_type: 'Localhost', localhost_ref: p.localhostProfile ?? '' }
  return { profile_type: 'Unconfined' }
}

export function sandboxConfig(pod: V1Pod, dns: ClusterDns, logDirectory: string): PodSandboxConfig {
  const m = pod.metadata!
  const ns = m.namespace!
  const psc = pod.spec?.securityContext
  const policy = pod.spec?.dnsPolicy ?? 'ClusterFirst'
  const dnsConfig = policy === 'None'
    ? { servers: pod.spec?.dnsConfig?.nameservers ?? [], searches: pod.spec?.dnsConfig?.searches ?? [], options: (pod.spec?.dnsConfig?.options ?? []).map((o) => (o.value ? `${o.name}:${o.value}` : o.name!)) }
    : { servers: dns.servers, searches: [`${ns}.svc.${dns.domain}`, `svc.${dns.domain}`, dns.domain], options: ['ndots:5'] }
  return {
    metadata: { name: m.name!, uid: m.uid!, namespace: ns, attempt: 0 },
    hostname: pod.spec?.hostname ?? m.name!,
    log_directory: logDirectory,
    dns_config: dnsConfig,
    labels: { ...m.labels, 'io.kubernetes.pod.name': m.name!, 'io.kubernetes.pod.namespace': ns, 'io.kubernetes.pod.uid': m.uid! },
    annotations: { ...m.annotations },
    linux: {
      security_context: {
        namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' },
        ...(psc?.runAsUser !== undefined ? { run_as_user: { value: psc.runAsUser } } : {}),
        ...(psc?.runAsGroup !== undefined ? { run_as_group: { value: psc.runAsGroup } } : {}),
        supplemental_groups: psc?.supplementalGroups ?? [],
        seccomp: psc?.seccompProfile?.type === 'RuntimeDefault' ? { profile_type: 'RuntimeDefault' } : { profile_type: 'Unconfined' },
      },
      sysctls: Object.fromEntries((psc?.sysctls ?? []).map((s) => [s.name, s.value])),
    },
  }
}

/** Kubernetes quantity (as used for memory limits) in bytes. */
export function quantityBytes(q: string): number {
  const m = /^(\d+)(Ki|Mi|Gi|k|M|G)?$/.exec(q)
  if (!m) throw new Error(`unsupported quantity ${q}`)
  const mult: Record<string, number> = { '': 1, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, k: 1e3, M: 1e6, G: 1e9 }
  return Number(m[1]) * mult[m[2] ?? '']!
}

/** $(VAR) expansion in command and args, as the kubelet does ($$ escapes). */
export function expand(s: string, env: Map<string, string>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (all, name: string | undefined) => (all === '$$' ? '$' : env.get(name!) ?? all))
}

export function containerConfig(pod: V1Pod, c: V1Container, inputs: ContainerInputs): ContainerConfig {
  const sc = c.securityContext
  const psc = pod.spec?.securityContext
  const envMap = new Map(inputs.env.map((e) => [e.key, e.value]))
  const memory = c.resources?.limits?.memory
  return {
    metadata: { name: c.name, attempt: inputs.attempt },
    image: { image: c.image! },
    ...(c.command ? { command: c.command.map((s) => expand(s, envMap)) } : {}),
    ...(c.args ? { args: c.args.map((s) => expand(s, envMap)) } : {}),
    ...(c.workingDir ? { working_dir: c.workingDir } : {}),
    envs: inputs.env,
    mounts: inputs.mounts,
    devices: inputs.devices ?? [],
    labels: { 'io.kubernetes.container.name': c.name, 'io.kubernetes.pod.name': pod.metadata!.name!, 'io.kubernetes.pod.namespace': pod.metadata!.namespace!, 'io.kubernetes.pod.uid': pod.metadata!.uid! },
    annotations: {},
    log_path: inputs.logPath,
    linux: {
      resources: { ...(memory ? { memory_limit_in_bytes: quantityBytes(memory) } : {}) },
      security_context: {
        capabilities: { add_capabilities: sc?.capabilities?.add ?? [], drop_capabilities: sc?.capabilities?.drop ?? [] },
        privileged: sc?.privileged ?? false,
        namespace_options: { network: 'POD', pid: pod.spec?.shareProcessNamespace ? 'POD' : 'CONTAINER', ipc: 'POD' },
        ...((sc?.runAsUser ?? psc?.runAsUser) !== undefined ? { run_as_user: { value: (sc?.runAsUser ?? psc?.runAsUser)! } } : {}),
        ...((sc?.runAsGroup ?? psc?.runAsGroup) !== undefined ? { run_as_group: { value: (sc?.runAsGroup ?? psc?.runAsGroup)! } } : {}),
        readonly_rootfs: sc?.readOnlyRootFilesystem ?? false,
        supplemental_groups: psc?.supplementalGroups ?? [],
        // pkg/securitycontext AddNoNewPrivileges: only an explicit allowPrivilegeEscalation: false.
        no_new_privs: sc?.allowPrivilegeEscalation === false,
        masked_paths: sc?.privileged ? [] : DEFAULT_MASKED_PATHS,
        readonly_paths: sc?.privileged ? [] : DEFAULT_READONLY_PATHS,
        seccomp: seccomp(pod, c),
      },
    },
  }
}

/** The kubelet's managed /etc/hosts (pkg/kubelet/kubelet_pods.go managedHostsFileContent). */
export function hostsFile(pod: V1Pod, podIps: string[]): string {
  const hostname = pod.spec?.hostname ?? pod.metadata!.name!
  const lines = [
    '# Kubernetes-managed hosts file.',
    '127.0.0.1\tlocalhost',
    '::1\tlocalhost ip6-localhost ip6-loopback',
    'fe00::0\tip6-localnet',
    'fe00::0\tip6-mcastprefix',
    'fe00::1\tip6-allnodes',
    'fe00::2\tip6-allrouters',
    ...podIps.map((ip) => `${ip}\t${hostname}`),
  ]
  const aliases = pod.spec?.hostAliases ?? []
  if (aliases.length) {
    lines.push('', '# Entries added by HostAliases.')
    for (const a of aliases) lines.push(`${a.ip}\t${(a.hostnames ?? []).join('\t')}`)
  }
  return lines.join('\n') + '\n'
}

export class PodStartError extends Error {
  override readonly name = 'PodStartError'
  readonly pod: RunningPod
  constructor(msg: string, pod: RunningPod) {
    super(msg)
    this.pod = pod
  }
}

export interface RunningPod {
  pod: V1Pod
  sandboxId: string
  sandboxConfig: PodSandboxConfig
  /** The pod netns path containerd made (/var/run/netns/cni-<uuid>). */
  netns: string
  ip: string
  /** Every pod IP the runtime reported (the IPv4 first, then IPv6 on this node). */
  ips: string[]
  dir: string
  containers: Map<string, string>
  statuses: Map<string, ContainerStatus>
}

export interface KubeletOptions {
  cri: CriClient
  podsDir: string
  dns: ClusterDns
  secrets: SecretLookup
  /** Pod status updates (the kubelet's status manager), e.g. into the API stand-in. */
  reportStatus?: (pod: V1Pod, status: object) => void
  /** Appended with each sandbox's netns path, for a hard cleanup. */
  netnsList?: string
  /** Devices the device plugins allocated for a container (resource limits -> CRI devices). */
  devices?: (pod: V1Pod, c: V1Container) => Promise<ContainerInputs['devices']>
  /** A projected serviceAccountToken source: the kubelet's TokenRequest bound to the pod. */
  serviceAccountToken?: (pod: V1Pod, audience: string, expirationSeconds: number) => string
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export class Kubelet {
  readonly opts: KubeletOptions
  readonly cri: CriClient
  private readonly pods = new Set<RunningPod>()
  constructor(opts: KubeletOptions) {
    this.opts = opts
    this.cri = opts.cri
  }

  private env(pod: V1Pod, c: V1Container, ip: string): Array<{ key: string; value: string }> {
    const out = new Map<string, string>()
    for (const e of c.env ?? []) {
      if (e.value !== undefined) { out.set(e.name, expand(e.value, out)); continue }
      const ref = e.valueFrom?.secretKeyRef
      if (ref) {
        const secret = this.opts.secrets(pod.metadata!.namespace!, ref.name!)
        const value = secret?.[ref.key]
        if (value === undefined) {
          if (ref.optional) continue
          throw new Error(`CreateContainerConfigError: container ${c.name}: ${secret ? `couldn't find key ${ref.key} in Secret ${pod.metadata!.namespace}/${ref.name}` : `secret "${ref.name}" not found`}`)
        }
        out.set(e.name, value)
        continue
      }
      const field = e.valueFrom?.fieldRef?.fieldPath
      if (field) {
        const values: Record<string, string> = { 'metadata.name': pod.metadata!.name!, 'metadata.namespace': pod.metadata!.namespace!, 'metadata.uid': pod.metadata!.uid!, 'spec.nodeName': pod.spec?.nodeName ?? '', 'status.podIP': ip }
        if (values[field] === undefined) throw new Error(`fieldRef ${field} is not supported by the harness`)
        out.set(e.name, values[field]!)
      }
    }
    return [...out].map(([key, value]) => ({ key, value }))
  }

  private volumes(pod: V1Pod, dir: string): Map<string, string> {
    const paths = new Map<string, string>()
    for (const v of pod.spec?.volumes ?? []) {
      // pkg/volume/projected: one serviceAccountToken source, written with the volume's mode.
      const sat = v.projected?.sources?.length === 1 ? v.projected.sources[0]!.serviceAccountToken : undefined
      if (sat && this.opts.serviceAccountToken) {
        const p = join(dir, 'volumes', 'kubernetes.io~projected', v.name)
        mkdirSync(p, { recursive: true })
        writeFileSync(join(p, sat.path), this.opts.serviceAccountToken(pod, sat.audience ?? '', sat.expirationSeconds ?? 3600), { mode: v.projected!.defaultMode ?? 0o644 })
        paths.set(v.name, p)
        continue
      }
      if (!v.emptyDir) throw new Error(`volume ${v.name}: only emptyDir is supported by the harness`)
      const p = join(dir, 'volumes', 'kubernetes.io~empty-dir', v.name)
      mkdirSync(p, { recursive: true })
      if (v.emptyDir.medium === 'Memory') {
        const size = v.emptyDir.sizeLimit ? `,size=${quantityBytes(v.emptyDir.sizeLimit)}` : ''
        const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `mode=0777${size}`, 'tmpfs', p], { encoding: 'utf8' })
        if (r.status !== 0) throw new Error(`emptyDir ${v.name}: ${r.stderr}`)
      }
      // pkg/volume/emptydir: the directory is world-writable (fsGroup would chown it).
      chmodSync(p, 0o777)
      paths.set(v.name, p)
    }
    return paths
  }

  private async create(rp: RunningPod, c: V1Container, volumes: Map<string, string>, attempt: number): Promise<string> {
    const termination = join(rp.dir, 'containers', c.name, randomBytes(4).toString('hex'))
    mkdirSync(join(rp.dir, 'containers', c.name), { recursive: true })
    writeFileSync(termination, '')
    chmodSync(termination, 0o666)
    const mounts = [
      ...(c.volumeMounts ?? []).map((vm) => {
        const host = volumes.get(vm.name)
        if (!host) throw new Error(`container ${c.name}: volume ${vm.name} not found`)
        return { container_path: vm.mountPath, host_path: host, readonly: vm.readOnly ?? false }
      }),
      { container_path: '/etc/hosts', host_path: join(rp.dir, 'etc-hosts') },
      { container_path: c.terminationMessagePath ?? '/dev/termination-log', host_path: termination },
    ]
    const devices = await this.opts.devices?.(rp.pod, c)
    const config = containerConfig(rp.pod, c, { env: this.env(rp.pod, c, rp.ip), mounts, devices, attempt, logPath: `${c.name}/${attempt}.log` })
    const id = await this.cri.createContainer(rp.sandboxId, config, rp.sandboxConfig)
    rp.containers.set(c.name, id)
    return id
  }

  /** Polls until the container exits; its final status. */
  private async waitExit(id: string, timeoutMs: number): Promise<ContainerStatus> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const s = await this.cri.containerStatus(id)
      if (s.state === 'CONTAINER_EXITED') return s
      if (Date.now() > deadline) throw new Error(`container ${s.metadata.name} still ${s.state} after ${timeoutMs} ms`)
      await sleep(50)
    }
  }

  /** A startup probe (exec only; the injected ones run inside the pod). */
  private async startupProbe(rp: RunningPod, c: V1Container, id: string, capMs: number): Promise<void> {
    const probe = c.startupProbe
    if (!probe) return
    if (!probe.exec?.command) throw new Error(`container ${c.name}: only exec probes are supported by the harness`)
    const period = (probe.periodSeconds ?? 10) * 1000
    const limit = Math.min(capMs, period * (probe.failureThreshold ?? 3))
    const started = Date.now()
    let last = ''
    for (;;) {
      const st = await this.cri.containerStatus(id)
      if (st.state === 'CONTAINER_EXITED') {
        rp.statuses.set(c.name, st)
        throw new PodStartError(`container ${c.name} exited with ${st.exit_code} before its startup probe passed:\n${this.logs(rp, c.name).slice(-2000)}`, rp)
      }
      const r = await this.cri.execSync(id, probe.exec.command, probe.timeoutSeconds ?? 1).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }))
      if (r.code === 0) return
      last = (r.stdout + r.stderr).trim()
      if (Date.now() - started > limit) throw new PodStartError(`container ${c.name}: startup probe failed for ${Date.now() - started} ms: ${last}\n${this.logs(rp, c.name).slice(-2000)}`, rp)
      await sleep(period)
    }
  }

  /** The container's log as the runtime wrote it (CRI log format: time stream tag text). */
  logs(rp: RunningPod, name: string): string {
    const p = join(rp.dir, 'logs', name, '0.log')
    if (!existsSync(p)) return ''
    return readFileSync(p, 'utf8').split('\n').map((l) => l.split(' ').slice(3).join(' ')).join('\n')
  }

  /**
   * Runs the pod: sandbox (CNI ADD through containerd's chain), init containers in order, then
   * the app containers. A CNI failure rejects with containerd's error, as a kubelet sees it.
   */
  async runPod(pod: V1Pod, opts: { startupCapMs?: number; initTimeoutMs?: number } = {}): Promise<RunningPod> {
    const dir = join(this.opts.podsDir, pod.metadata!.uid!)
    mkdirSync(join(dir, 'logs'), { recursive: true })
    const config = sandboxConfig(pod, this.opts.dns, join(dir, 'logs'))
    const sandboxId = await this.cri.runPodSandbox(config)
    const status = await this.cri.podSandboxStatus(sandboxId, true)
    const info = JSON.parse(status.info.info ?? '{}') as { runtimeSpec?: { linux?: { namespaces?: Array<{ type: string; path?: string }> } } }
    const netns = info.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path ?? ''
    if (this.opts.netnsList && netns) appendFileSync(this.opts.netnsList, `${netns}\n`)
    const ips = [status.status.network?.ip ?? '', ...(status.status.network?.additional_ips ?? []).map((i) => i.ip)].filter(Boolean)
    const rp: RunningPod = { pod, sandboxId, sandboxConfig: config, netns, ip: ips[0] ?? '', ips, dir, containers: new Map(), statuses: new Map() }
    this.pods.add(rp)
    writeFileSync(join(dir, 'etc-hosts'), hostsFile(pod, ips))
    chmodSync(join(dir, 'etc-hosts'), 0o644)
    const volumes = this.volumes(pod, dir)
    const report = (phase: string) => this.opts.reportStatus?.(pod, {
      phase, podIP: rp.ip, podIPs: ips.map((ip) => ({ ip })),
      initContainerStatuses: (pod.spec?.initContainers ?? []).filter((c) => rp.statuses.has(c.name)).map((c) => this.k8sStatus(c, rp.statuses.get(c.name)!)),
    })
    for (const c of pod.spec?.initContainers ?? []) {
      const id = await this.create(rp, c, volumes, 0)
      await this.cri.startContainer(id)
      if (c.restartPolicy === 'Always') {
        await this.startupProbe(rp, c, id, opts.startupCapMs ?? 30_000)
        rp.statuses.set(c.name, await this.cri.containerStatus(id))
        continue
      }
      const st = await this.waitExit(id, opts.initTimeoutMs ?? 30_000)
      rp.statuses.set(c.name, st)
      if (st.exit_code !== 0) {
        report('Pending')
        throw new PodStartError(`init container ${c.name} exited with ${st.exit_code}: ${this.logs(rp, c.name).trim().slice(-2000)}`, rp)
      }
    }
    for (const c of pod.spec?.containers ?? []) {
      const id = await this.create(rp, c, volumes, 0)
      await this.cri.startContainer(id)
      if (c.startupProbe) await this.startupProbe(rp, c, id, opts.startupCapMs ?? 30_000)
    }
    report('Running')
    return rp
  }

  private k8sStatus(c: V1Container, s: ContainerStatus): object {
    return {
      name: c.name, image: c.image, imageID: '', ready: s.state === 'CONTAINER_RUNNING', restartCount: s.metadata.attempt, started: s.state === 'CONTAINER_RUNNING',
      state: s.state === 'CONTAINER_EXITED' ? { terminated: { exitCode: s.exit_code, reason: s.reason || 'Error' } } : { running: {} },
    }
  }

  /** `kubectl exec`: runs as the container's user with its capabilities, seccomp and no_new_privs. */
  async exec(rp: RunningPod, container: string, cmd: string[], timeoutSeconds = 30): Promise<{ code: number; stdout: string; stderr: string }> {
    const id = rp.containers.get(container)
    if (!id) throw new Error(`pod ${rp.pod.metadata!.name} has no container ${container}`)
    return this.cri.execSync(id, cmd, timeoutSeconds)
  }

  /** Pod deletion: StopPodSandbox (CNI DEL through the chain), RemovePodSandbox, volumes. */
  async removePod(rp: RunningPod): Promise<void> {
    this.pods.delete(rp)
    await this.cri.stopPodSandbox(rp.sandboxId)
    await this.cri.removePodSandbox(rp.sandboxId)
    this.cleanDir(rp.dir)
  }

  private cleanDir(dir: string): void {
    removeDirWithMounts(dir)
  }

  async removeAll(): Promise<void> {
    for (const rp of [...this.pods]) await this.removePod(rp).catch(() => this.cleanDir(rp.dir))
  }
}
