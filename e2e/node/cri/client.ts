// A CRI client (runtime.v1 over gRPC on a unix socket), the way the kubelet talks to containerd.
// Only the calls the node suite makes; messages are plain objects in the proto's field names.
import { credentials, loadPackageDefinition, type Client, type ServiceError } from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'
import { fileURLToPath } from 'node:url'

const PROTO = fileURLToPath(new URL('./runtime-v1.proto', import.meta.url))

export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE'
export interface NamespaceOption { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode }
export interface SecurityProfile { profile_type: 'RuntimeDefault' | 'Unconfined' | 'Localhost'; localhost_ref?: string }
export interface Int64Value { value: number }

export interface PodSandboxConfig {
  metadata: { name: string; uid: string; namespace: string; attempt: number }
  hostname?: string
  log_directory?: string
  dns_config?: { servers: string[]; searches: string[]; options: string[] }
  labels?: Record<string, string>
  annotations?: Record<string, string>
  linux?: {
    cgroup_parent?: string
    security_context?: {
      namespace_options?: NamespaceOption
      run_as_user?: Int64Value
      run_as_group?: Int64Value
      supplemental_groups?: number[]
      seccomp?: SecurityProfile
    }
    sysctls?: Record<string, string>
  }
}

export interface ContainerConfig {
  metadata: { name: string; attempt: number }
  image: { image: string }
  command?: string[]
  args?: string[]
  working_dir?: string
  envs?: Array<{ key: string; value: string }>
  mounts?: Array<{ container_path: string; host_path: string; readonly?: boolean }>
  devices?: Array<{ container_path: string; host_path: string; permissions: string }>
  labels?: Record<string, string>
  annotations?: Record<string, string>
  log_path?: string
  linux?: {
    resources?: { cpu_shares?: number; memory_limit_in_bytes?: number; oom_score_adj?: number }
    security_context?: {
      capabilities?: { add_capabilities: string[]; drop_capabilities: string[]; add_ambient_capabilities?: string[] }
      privileged?: boolean
      namespace_options?: NamespaceOption
      run_as_user?: Int64Value
      run_as_group?: Int64Value
      readonly_rootfs?: boolean
      supplemental_groups?: number[]
      no_new_privs?: boolean
      masked_paths?: string[]
      readonly_paths?: string[]
      seccomp?: SecurityProfile
    }
  }
}

export type ContainerState = 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN'
export interface ContainerStatus {
  id: string
  metadata: { name: string; attempt: number }
  state: ContainerState
  started_at: number
  finished_at: number
  exit_code: number
  reason: string
  message: string
  log_path: string
}
export interface SandboxStatus {
  status: { id: string; state: 'SANDBOX_READY' | 'SANDBOX_NOTREADY'; network?: { ip: string; additional_ips: Array<{ ip: string }> } }
  info: Record<string, string>
}

export class CriError extends Error {
  override readonly name = 'CriError'
  readonly code: number
  readonly details: string
  constructor(method: string, e: ServiceError) {
    super(`CRI ${method}: ${e.details || e.message}`)
    this.code = e.code
    this.details = e.details
  }
}

type Call = (req: object, opts: { deadline: Date }, cb: (e: ServiceError | null, res: unknown) => void) => void

export class CriClient {
  private readonly client: Client & Record<string, Call>

  constructor(socket: string) {
    const def = loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true, arrays: true })
    const pkg = loadPackageDefinition(def) as unknown as { runtime: { v1: { RuntimeService: new (addr: string, creds: ReturnType<typeof credentials.createInsecure>, opts: object) => Client } } }
    // Large ExecSync outputs and a kubelet-like message size limit.
    this.client = new pkg.runtime.v1.RuntimeService(`unix://${socket}`, credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    }) as never
  }

  private call<T>(method: string, req: object, timeoutMs = 120_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client[method]!.call(this.client, req, { deadline: new Date(Date.now() + timeoutMs) }, (e, res) => (e ? reject(new CriError(method, e)) : resolve(res as T)))
    })
  }

  version(): Promise<{ runtime_name: string; runtime_version: string; runtime_api_version: string }> {
    return this.call('Version', { version: 'v1' }, 2_000)
  }

  async runPodSandbox(config: PodSandboxConfig): Promise<string> {
    return (await this.call<{ pod_sandbox_id: string }>('RunPodSandbox', { config, runtime_handler: '' })).pod_sandbox_id
  }

  async stopPodSandbox(id: string): Promise<void> {
    await this.call('StopPodSandbox', { pod_sandbox_id: id })
  }

  async removePodSandbox(id: string): Promise<void> {
    await this.call('RemovePodSandbox', { pod_sandbox_id: id })
  }

  podSandboxStatus(id: string, verbose = false): Promise<SandboxStatus> {
    return this.call('PodSandboxStatus', { pod_sandbox_id: id, verbose })
  }

  async createContainer(sandboxId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig): Promise<string> {
    return (await this.call<{ container_id: string }>('CreateContainer', { pod_sandbox_id: sandboxId, config, sandbox_config: sandboxConfig })).container_id
  }

  async startContainer(id: string): Promise<void> {
    await this.call('StartContainer', { container_id: id })
  }

  async stopContainer(id: string, timeoutSeconds: number): Promise<void> {
    await this.call('StopContainer', { container_id: id, timeout: timeoutSeconds }, (timeoutSeconds + 30) * 1000)
  }

  async listContainers(sandboxId?: string): Promise<Array<{ id: string; metadata: { name: string; attempt: number }; state: ContainerState }>> {
    return (await this.call<{ containers: never[] }>('ListContainers', { filter: sandboxId ? { pod_sandbox_id: sandboxId } : {} })).containers
  }

  async containerStatus(id: string): Promise<ContainerStatus> {
    return (await this.call<{ status: ContainerStatus }>('ContainerStatus', { container_id: id })).status
  }

  /** Runs a command in a running container with that container's user, capabilities and seccomp. */
  async execSync(id: string, cmd: string[], timeoutSeconds = 30): Promise<{ code: number; stdout: string; stderr: string }> {
    const r = await this.call<{ stdout: Buffer; stderr: Buffer; exit_code: number }>('ExecSync', { container_id: id, cmd, timeout: timeoutSeconds }, (timeoutSeconds + 15) * 1000)
    return { code: r.exit_code, stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8') }
  }

  close(): void {
    this.client.close()
  }
}
