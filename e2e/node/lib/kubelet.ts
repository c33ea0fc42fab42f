// The kubelet's part, over CRI: a stored (admitted) pod becomes a sandbox and containers the way
// kuberuntime makes them, nothing more. Mapping (pure, `sandboxConfig` / `containerConfig`):
// metadata, hostname, DNS (dnsPolicy ClusterFirst), the managed /etc/hosts with hostAliases,
// emptyDir volumes, env (values, Secret keys, field refs, $(VAR) expansion), and per container
// runAsUser/runAsGroup, capabilities add/drop, no_new_privs from allowPrivilegeEscalation: false,
// readOnlyRootFilesystem, seccomp and the default masked/read-only /proc paths. Devices are
// allocated at admission, before the sandbox; the pod worker (see `Kubelet`) starts and
// restarts containers. No capability, uid or mount beyond that.
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
  /** The pod as it was when it failed (its containers and statuses then; the worker goes on). */
  readonly pod: RunningPod
  constructor(msg: string, pod: RunningPod) {
    super(msg)
    this.pod = pod
  }
}

/** The kubelet's admit handlers refused the pod: no sandbox was made (pod phase Failed). */
export class PodAdmissionError extends Error {
  override readonly name = 'PodAdmissionError'
}

/** pkg/kubelet/kubelet.go: backOffPeriod 10 s, MaxContainerBackOff 300 s. */
export const CONTAINER_BACKOFF = { initialMs: 10_000, maxMs: 300_000 }

/**
 * A pod sync that failed (RunPodSandbox: a CNI ADD that failed, e.g. closed while the agent
 * is down) is tried again after the pod worker's back-off: kubelet.go backOffPeriod = 10 s,
 * jittered by workerBackOffPeriodJitterFactor 0.5 (pkg/kubelet/pod_workers.go completeWork:
 * `p.workQueue.Enqueue(uid, wait.Jitter(p.backOffPeriod, workerBackOffPeriodJitterFactor))`).
 */
export const SYNC_BACKOFF_MS = 10_000

/** wait.Jitter (apimachinery pkg/util/wait/backoff.go): d plus up to factor × d. */
export function jitter(ms: number, factor = 0.5, rand: () => number = Math.random): number {
  return Math.round(ms + rand() * factor * ms)
}

/**
 * Whether an exited container is started again (pkg/kubelet/container/helpers.go
 * ShouldContainerBeRestarted, used by kuberuntime_manager.go computePodActions): Always
 * restarts it, OnFailure only after a non-zero exit, Never not at all.
 */
export function shouldRestart(policy: string | undefined, exitCode: number): boolean {
  if (policy === 'Never') return false
  if (policy === 'OnFailure') return exitCode !== 0
  return true
}

/**
 * Pure: how long the kubelet waits before restarting a container that has already been
 * restarted `restarts` times (kuberuntime_manager.go doBackOff over flowcontrol.Backoff: no
 * entry yet, so the first restart is at once; then 10 s, doubling, capped at 5 minutes).
 */
export function restartDelay(restarts: number, b: { initialMs: number; maxMs: number } = CONTAINER_BACKOFF): number {
  return restarts <= 0 ? 0 : Math.min(b.initialMs * 2 ** (restarts - 1), b.maxMs)
}

type K8sState = { running: { startedAt: string } } | { terminated: { exitCode: number; reason: string; message?: string; startedAt: string; finishedAt: string; containerID: string } } | { waiting: { reason: string; message: string } }

/** What the status manager reports for one container: state, lastState, restartCount. */
interface ContainerRecord { restarts: number; state: K8sState | undefined; lastState: K8sState | undefined; id: string; started: boolean }

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
  /** The runtime's status of each container's latest attempt. */
  statuses: Map<string, ContainerStatus>
  /** restartCount, state and lastState per container, as the pod status carries them. */
  records: Map<string, ContainerRecord>
  /** Devices allocated at admission, per container. */
  devices: Map<string, ContainerInputs['devices']>
  phase: string
  stopped: boolean
  /** Containers held in back-off: not restarted until released (holdRestarts). */
  held: Set<string>
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
  /** Devices the device plugins allocate for a container at admission (resource limits -> CRI devices). */
  devices?: (pod: V1Pod, c: V1Container) => Promise<ContainerInputs['devices']>
  /** A pod is gone: its devices go back (the device manager's UpdateAllocatedDevices). */
  releaseDevices?: (pod: V1Pod) => void
  /** Container restart back-off (the kubelet's 10 s doubling to 5 min). */
  restartBackoff?: { initialMs: number; maxMs: number }
  /** The pod worker's period after a failed sync, e.g. RunPodSandbox (the kubelet's 10 s, jittered by up to half). */
  syncBackoffMs?: number
  /** A projected serviceAccountToken source: the kubelet's TokenRequest bound to the pod. */
  serviceAccountToken?: (pod: V1Pod, audience: string, expirationSeconds: number) => string
}

export interface RunPodOptions {
  startupCapMs?: number
  /** How long an init container may run before runPod stops waiting for it. */
  initTimeoutMs?: number
  /**
   * When runPod gives up. 'first-failure' (the default): it rejects at the first failed
   * attempt, with the pod as it was then. 'running': it waits through restarts until the pod
   * runs or `deadlineMs` passes. Either way the pod's worker goes on restarting with back-off,
   * as the kubelet does, until removePod.
   */
  until?: 'first-failure' | 'running'
  deadlineMs?: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const nsToIso = (ns: number) => new Date(Math.floor(ns / 1e6)).toISOString().replace(/\.\d+Z$/, 'Z')

interface Waiter { settled: boolean; resolve: (rp: RunningPod) => void; reject: (e: Error) => void; failFast: boolean }

/**
 * The kubelet's part, per pod: admission (devices), the sandbox, then a pod worker that runs
 * init containers in order, restarting a failed one with back-off (CrashLoopBackOff,
 * restartCount, lastState, as kuberuntime's computePodActions does for restartPolicy
 * Always/OnFailure; Never fails the pod), native sidecars (restartPolicy Always) that gate the
 * next init container on their startup probe and are restarted whenever they exit, and app
 * containers started together, each with its own startup probe (pkg/kubelet/prober: one
 * worker per container, so no container waits on another's probe). App containers that exit
 * are restarted by the pod's restartPolicy with the same back-off.
 */
export class Kubelet {
  readonly opts: KubeletOptions
  readonly cri: CriClient
  private readonly pods = new Set<RunningPod>()
  /** RunPodSandbox attempts that failed and were tried again ('running' mode). */
  sandboxRetries = 0
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
    const config = containerConfig(rp.pod, c, { env: this.env(rp.pod, c, rp.ip), mounts, devices: rp.devices.get(c.name), attempt, logPath: `${c.name}/${attempt}.log` })
    const id = await this.cri.createContainer(rp.sandboxId, config, rp.sandboxConfig)
    rp.containers.set(c.name, id)
    return id
  }

  /** Polls until the container exits (its final status), the pod is removed, or the timeout. */
  private async waitExit(rp: RunningPod, id: string, timeoutMs = Infinity, pollMs = 100): Promise<ContainerStatus | 'timeout' | 'stopped'> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      if (rp.stopped) return 'stopped'
      const s = await this.cri.containerStatus(id).catch(() => undefined)
      if (!s) return 'stopped'
      if (s.state === 'CONTAINER_EXITED') return s
      if (Date.now() > deadline) return 'timeout'
      await sleep(pollMs)
    }
  }

  /** A startup probe (exec only; the injected ones run inside the pod): ok, or why not. */
  private async startupProbe(rp: RunningPod, c: V1Container, id: string, capMs: number): Promise<{ ok: true } | { ok: false; why: string }> {
    const probe = c.startupProbe
    if (!probe) return { ok: true }
    if (!probe.exec?.command) throw new Error(`container ${c.name}: only exec probes are supported by the harness`)
    const period = (probe.periodSeconds ?? 10) * 1000
    const limit = Math.min(capMs, period * (probe.failureThreshold ?? 3))
    const started = Date.now()
    let last = ''
    for (;;) {
      if (rp.stopped) return { ok: false, why: 'the pod was removed' }
      const st = await this.cri.containerStatus(id)
      if (st.state === 'CONTAINER_EXITED') return { ok: false, why: `container ${c.name} exited with ${st.exit_code} before its startup probe passed:\n${this.logs(rp, c.name).slice(-2000)}` }
      const r = await this.cri.execSync(id, probe.exec.command, probe.timeoutSeconds ?? 1).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }))
      if (r.code === 0) return { ok: true }
      last = (r.stdout + r.stderr).trim()
      if (Date.now() - started > limit) return { ok: false, why: `container ${c.name}: startup probe failed for ${Date.now() - started} ms: ${last}\n${this.logs(rp, c.name).slice(-2000)}` }
      await sleep(period)
    }
  }

  /** The log of a container's attempt (default: its latest), CRI log format: time stream tag text. */
  logs(rp: RunningPod, name: string, attempt = rp.records.get(name)?.restarts ?? 0): string {
    const p = join(rp.dir, 'logs', name, `${attempt}.log`)
    if (!existsSync(p)) return ''
    return readFileSync(p, 'utf8').split('\n').map((l) => l.split(' ').slice(3).join(' ')).join('\n')
  }

  /** The kubelet's admit handler: devices for every container, before any sandbox (manager.go Allocate). */
  private async admit(pod: V1Pod): Promise<Map<string, ContainerInputs['devices']>> {
    const devices = new Map<string, ContainerInputs['devices']>()
    try {
      for (const c of [...pod.spec?.initContainers ?? [], ...pod.spec?.containers ?? []]) devices.set(c.name, await this.opts.devices?.(pod, c))
    } catch (e) {
      this.opts.releaseDevices?.(pod)
      this.opts.reportStatus?.(pod, { phase: 'Failed', reason: 'UnexpectedAdmissionError', message: `Allocate failed: ${(e as Error).message}` })
      throw new PodAdmissionError(`pod ${pod.metadata?.namespace}/${pod.metadata?.name} not admitted: ${(e as Error).message}`)
    }
    return devices
  }

  /**
   * Runs the pod: admission (devices), the sandbox (CNI ADD through containerd's chain), then
   * the pod worker. A CNI failure rejects with containerd's error, as a kubelet sees it.
   */
  async runPod(pod: V1Pod, opts: RunPodOptions = {}): Promise<RunningPod> {
    const devices = await this.admit(pod)
    const dir = join(this.opts.podsDir, pod.metadata!.uid!)
    mkdirSync(join(dir, 'logs'), { recursive: true })
    const config = sandboxConfig(pod, this.opts.dns, join(dir, 'logs'))
    // 'running': a failed sandbox (CNI ADD) is retried after the pod worker's back-off until
    // the deadline, the devices staying allocated meanwhile, as the kubelet does.
    const failFast = (opts.until ?? 'first-failure') === 'first-failure'
    const giveUpAt = Date.now() + (opts.deadlineMs ?? 120_000)
    let sandboxId: string
    for (;;) {
      try {
        sandboxId = await this.cri.runPodSandbox(config)
        break
      } catch (e) {
        const wait = jitter(this.opts.syncBackoffMs ?? SYNC_BACKOFF_MS)
        if (failFast || Date.now() + wait > giveUpAt) {
          this.opts.releaseDevices?.(pod)
          throw e
        }
        this.sandboxRetries++
        await sleep(wait)
      }
    }
    const status = await this.cri.podSandboxStatus(sandboxId, true)
    const info = JSON.parse(status.info.info ?? '{}') as { runtimeSpec?: { linux?: { namespaces?: Array<{ type: string; path?: string }> } } }
    const netns = info.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path ?? ''
    if (this.opts.netnsList && netns) appendFileSync(this.opts.netnsList, `${netns}\n`)
    const ips = [status.status.network?.ip ?? '', ...(status.status.network?.additional_ips ?? []).map((i) => i.ip)].filter(Boolean)
    const rp: RunningPod = { pod, sandboxId, sandboxConfig: config, netns, ip: ips[0] ?? '', ips, dir, containers: new Map(), statuses: new Map(), records: new Map(), devices, phase: 'Pending', stopped: false, held: new Set() }
    this.pods.add(rp)
    writeFileSync(join(dir, 'etc-hosts'), hostsFile(pod, ips))
    chmodSync(join(dir, 'etc-hosts'), 0o644)
    const volumes = this.volumes(pod, dir)
    return new Promise<RunningPod>((resolve, reject) => {
      const w: Waiter = { settled: false, resolve, reject, failFast }
      if (!w.failFast) {
        const t = setTimeout(() => this.settle(w, new PodStartError(`pod ${pod.metadata!.name} not running after ${opts.deadlineMs ?? 120_000} ms`, snapshot(rp))), Math.max(0, giveUpAt - Date.now()))
        t.unref()
      }
      this.worker(rp, volumes, opts, w).catch((e: Error) => this.settle(w, e))
    })
  }

  private settle(w: Waiter, result: RunningPod | Error): void {
    if (w.settled) return
    w.settled = true
    if (result instanceof Error) w.reject(result)
    else w.resolve(result)
  }

  /** A failed attempt: runPod rejects now in 'first-failure' mode. */
  private failed(w: Waiter, e: Error): void {
    if (w.failFast) this.settle(w, e)
  }

  private report(rp: RunningPod, phase = rp.phase): void {
    rp.phase = phase
    const status = (c: V1Container) => {
      const r = rp.records.get(c.name)!
      return {
        name: c.name, image: c.image, imageID: '', containerID: r.id ? `containerd://${r.id}` : undefined,
        ready: r.started && !!r.state && 'running' in r.state, started: r.started, restartCount: r.restarts,
        state: r.state ?? { waiting: { reason: 'PodInitializing', message: '' } }, lastState: r.lastState ?? {},
      }
    }
    this.opts.reportStatus?.(rp.pod, {
      phase, podIP: rp.ip, podIPs: rp.ips.map((ip) => ({ ip })),
      initContainerStatuses: (rp.pod.spec?.initContainers ?? []).filter((c) => rp.records.has(c.name)).map(status),
      containerStatuses: (rp.pod.spec?.containers ?? []).filter((c) => rp.records.has(c.name)).map(status),
    })
  }

  private record(rp: RunningPod, name: string): ContainerRecord {
    let r = rp.records.get(name)
    if (!r) { r = { restarts: 0, state: undefined, lastState: undefined, id: '', started: false }; rp.records.set(name, r) }
    return r
  }

  /** Starts the next attempt of a container; records it as running. */
  private async startAttempt(rp: RunningPod, c: V1Container, volumes: Map<string, string>): Promise<string> {
    const r = this.record(rp, c.name)
    const id = await this.create(rp, c, volumes, r.restarts)
    await this.cri.startContainer(id)
    r.id = id
    r.state = { running: { startedAt: new Date().toISOString().replace(/\.\d+Z$/, 'Z') } }
    rp.statuses.set(c.name, await this.cri.containerStatus(id))
    this.report(rp)
    return id
  }

  /** An attempt ended: terminated state, then CrashLoopBackOff for the back-off, then the next attempt. */
  private async backOff(rp: RunningPod, c: V1Container, st: ContainerStatus): Promise<void> {
    const r = this.record(rp, c.name)
    rp.statuses.set(c.name, st)
    r.started = false
    const terminated = terminatedState(st)
    r.state = terminated
    this.report(rp)
    const delay = restartDelay(r.restarts, this.opts.restartBackoff)
    if (delay > 0) {
      const m = rp.pod.metadata!
      r.lastState = terminated
      r.state = { waiting: { reason: 'CrashLoopBackOff', message: `back-off ${Math.round(delay / 1000)}s restarting failed container=${c.name} pod=${m.name}_${m.namespace}(${m.uid})` } }
      this.report(rp)
      const until = Date.now() + delay
      while (!rp.stopped && Date.now() < until) await sleep(Math.min(200, until - Date.now()))
    }
    // The next attempt: restartCount + 1, the failed one becomes lastState.
    r.lastState = terminated
    r.restarts++
  }

  /** Runs a container until its startup probe passes, restarting it with back-off when it fails. */
  private async startUntilStarted(rp: RunningPod, c: V1Container, volumes: Map<string, string>, opts: RunPodOptions, w: Waiter): Promise<string | undefined> {
    for (;;) {
      if (rp.stopped) return undefined
      const id = await this.startAttempt(rp, c, volumes)
      const probe = await this.startupProbe(rp, c, id, opts.startupCapMs ?? 30_000)
      if (probe.ok) { this.record(rp, c.name).started = true; this.report(rp); return id }
      if (rp.stopped) return undefined
      // The kubelet kills a container whose startup probe failed, then restarts it.
      await this.cri.stopContainer(id, 0).catch(() => {})
      const st = await this.cri.containerStatus(id)
      this.failed(w, new PodStartError(probe.why, snapshot(rp)))
      await this.backOff(rp, c, st)
    }
  }

  /**
   * Keeps a container in back-off when it next exits, as a crash-looping one sits in
   * CrashLoopBackOff (up to 5 minutes a time): a test's window with that container gone.
   */
  holdRestarts(rp: RunningPod, container: string): void {
    this.live(rp).held.add(container)
  }

  /**
   * A container that exits is started again, with back-off, for as long as the pod lives and
   * its policy says so (ShouldContainerBeRestarted): native sidecars always, app containers by
   * the pod's restartPolicy (computePodActions). One that stays terminated is reported so;
   * once every app container has, the pod is Succeeded if all exited 0, else Failed
   * (kubelet_pods.go getPhase).
   */
  private async supervise(rp: RunningPod, c: V1Container, volumes: Map<string, string>, id: string, opts: RunPodOptions, w: Waiter, policy: string): Promise<void> {
    for (;;) {
      const st = await this.waitExit(rp, id, Infinity, 1000)
      if (typeof st === 'string') return
      const r = this.record(rp, c.name)
      if (!shouldRestart(policy, st.exit_code)) {
        rp.statuses.set(c.name, st)
        r.started = false
        r.state = terminatedState(st)
        this.report(rp, this.phaseAfterExit(rp))
        return
      }
      if (rp.held.has(c.name)) {
        rp.statuses.set(c.name, st)
        r.started = false
        r.lastState = terminatedState(st)
        r.state = { waiting: { reason: 'CrashLoopBackOff', message: `back-off 5m0s restarting failed container=${c.name}` } }
        this.report(rp)
        while (!rp.stopped && rp.held.has(c.name)) await sleep(500)
        if (rp.stopped) return
      }
      await this.backOff(rp, c, st)
      const next = await this.startUntilStarted(rp, c, volumes, opts, w)
      if (!next) return
      id = next
    }
  }

  /** Running while an app container runs or will run again; then Succeeded or Failed. */
  private phaseAfterExit(rp: RunningPod): RunningPod['phase'] {
    const apps = (rp.pod.spec?.containers ?? []).map((c) => rp.records.get(c.name)?.state)
    if (!apps.every((st) => st && 'terminated' in st)) return rp.phase
    return apps.every((st) => (st as { terminated: { exitCode: number } }).terminated.exitCode === 0) ? 'Succeeded' : 'Failed'
  }

  private async worker(rp: RunningPod, volumes: Map<string, string>, opts: RunPodOptions, w: Waiter): Promise<void> {
    const pod = rp.pod
    for (const c of pod.spec?.initContainers ?? []) {
      if (c.restartPolicy === 'Always') {
        const id = await this.startUntilStarted(rp, c, volumes, opts, w)
        if (!id) return
        void this.supervise(rp, c, volumes, id, opts, w, 'Always').catch(() => {})
        continue
      }
      for (;;) {
        const id = await this.startAttempt(rp, c, volumes)
        let st = await this.waitExit(rp, id, opts.initTimeoutMs ?? 30_000)
        if (st === 'timeout') {
          this.failed(w, new Error(`init container ${c.name} still running after ${opts.initTimeoutMs ?? 30_000} ms`))
          st = await this.waitExit(rp, id)
        }
        if (st === 'stopped' || st === 'timeout') return
        if (st.exit_code === 0) {
          rp.statuses.set(c.name, st)
          const r = this.record(rp, c.name)
          r.state = { terminated: { exitCode: 0, reason: 'Completed', startedAt: nsToIso(st.started_at), finishedAt: nsToIso(st.finished_at), containerID: `containerd://${st.id}` } }
          this.report(rp)
          break
        }
        rp.statuses.set(c.name, st)
        this.failed(w, new PodStartError(`init container ${c.name} exited with ${st.exit_code}: ${this.logs(rp, c.name).trim().slice(-2000)}`, snapshot(rp)))
        if (pod.spec?.restartPolicy === 'Never') {
          this.record(rp, c.name).state = { terminated: { exitCode: st.exit_code, reason: st.reason || 'Error', startedAt: nsToIso(st.started_at), finishedAt: nsToIso(st.finished_at), containerID: `containerd://${st.id}` } }
          this.report(rp, 'Failed')
          this.settle(w, new PodStartError(`pod ${pod.metadata!.name} failed: init container ${c.name} exited with ${st.exit_code} and restartPolicy is Never`, snapshot(rp)))
          return
        }
        await this.backOff(rp, c, st)
        if (rp.stopped) return
      }
    }
    // App containers start together; each has its own startup probe.
    const started = await Promise.all((pod.spec?.containers ?? []).map((c) => this.startUntilStarted(rp, c, volumes, opts, w)))
    if (rp.stopped || started.some((id) => !id)) return
    this.report(rp, 'Running')
    this.settle(w, rp)
    const policy = pod.spec?.restartPolicy ?? 'Always'
    ;(pod.spec?.containers ?? []).forEach((c, i) => void this.supervise(rp, c, volumes, started[i]!, opts, w, policy).catch(() => {}))
  }

  /** `kubectl exec`: runs as the container's user with its capabilities, seccomp and no_new_privs. */
  async exec(rp: RunningPod, container: string, cmd: string[], timeoutSeconds = 30): Promise<{ code: number; stdout: string; stderr: string }> {
    const id = this.live(rp).containers.get(container)
    if (!id) throw new Error(`pod ${rp.pod.metadata!.name} has no container ${container}`)
    return this.cri.execSync(id, cmd, timeoutSeconds)
  }

  /** The live pod behind a snapshot (a PodStartError's). */
  private live(rp: RunningPod): RunningPod {
    for (const p of this.pods) if (p.sandboxId === rp.sandboxId) return p
    return rp
  }

  /** Pod deletion: the worker stops, StopPodSandbox (CNI DEL through the chain), RemovePodSandbox, volumes, devices. */
  async removePod(rp: RunningPod): Promise<void> {
    const live = this.live(rp)
    live.stopped = true
    this.pods.delete(live)
    try {
      await this.cri.stopPodSandbox(live.sandboxId)
      await this.cri.removePodSandbox(live.sandboxId)
    } finally {
      this.opts.releaseDevices?.(live.pod)
    }
    this.cleanDir(live.dir)
  }

  private cleanDir(dir: string): void {
    removeDirWithMounts(dir)
  }

  async removeAll(): Promise<void> {
    for (const rp of [...this.pods]) await this.removePod(rp).catch(() => this.cleanDir(rp.dir))
  }
}

function terminatedState(st: ContainerStatus): K8sState {
  return { terminated: { exitCode: st.exit_code, reason: st.reason || (st.exit_code === 0 ? 'Completed' : 'Error'), ...(st.message ? { message: st.message } : {}), startedAt: nsToIso(st.started_at), finishedAt: nsToIso(st.finished_at), containerID: `containerd://${st.id}` } }
}

function snapshot(rp: RunningPod): RunningPod {
  return { ...rp, containers: new Map(rp.containers), statuses: new Map(rp.statuses), records: new Map([...rp.records].map(([k, v]) => [k, { ...v }])) }
}
