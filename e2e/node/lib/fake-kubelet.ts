// The kubelet's device manager, as far as a device plugin sees it, over the real gRPC API
// (v1beta1, cni-plugin/src/deviceplugin/v1beta1.proto). Each behaviour follows
// kubernetes/kubernetes pkg/kubelet/cm/devicemanager (master, read through the code index):
// - Register (plugin/v1beta1/server.go Register): the version must be supported, the resource
//   an extended resource name (pkg/apis/core/v1/helper IsExtendedResourceName); then the
//   kubelet dials the plugin's endpoint (client.go dial: blocking, 10 s) and calls
//   GetDevicePluginOptions (manager.go PluginConnected) *before* it answers: a plugin that
//   does not serve yet gets an error back, not a silent success.
// - It then reads ListAndWatch (client.go Run); each answer replaces the resource's devices
//   (genericDeviceUpdateCallback). When the stream ends, for whatever reason, every device of
//   the resource becomes Unhealthy (PluginDisconnected -> markResourceUnhealthy) and the stop
//   time starts the 5-minute grace period (types.go endpointStopGracePeriod). Keyed by the
//   resource name, flaw included: an old stream of a re-registered plugin that ends later
//   marks the new one's devices Unhealthy too, until the plugin sends an update.
// - Allocate at pod admission picks Healthy devices not allocated to another pod
//   (manager.go devicesToAllocate); allocations are per pod and container (pod_devices.go)
//   and are freed when the pod is no longer active (UpdateAllocatedDevices).
// - Allocations and registered devices are checkpointed to <dir>/kubelet_internal_checkpoint
//   (checkpoint/checkpoint.go, the v2 layout). On start the kubelet removes every file in the
//   dir but the checkpoint (removeContents), reads the checkpoint back: allocations survive,
//   and each registered resource is known with no device until its plugin registers again
//   (readCheckpoint). The checksum here is FNV-1a over the data's JSON; the kubelet's hashes
//   a dump of the Go struct, so the two files are not interchangeable.
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { deviceplugin, API_VERSION } from '../../../cni-plugin/src/deviceplugin/tun-plugin.ts'

interface Device { ID: string; health: string }
type Callback<T> = (e: grpc.ServiceError | null, r: T) => void
interface PluginClient extends grpc.Client {
  GetDevicePluginOptions(req: object, opts: grpc.CallOptions, cb: Callback<unknown>): void
  ListAndWatch(req: object): grpc.ClientReadableStream<{ devices: Device[] }>
  Allocate(req: object, opts: grpc.CallOptions, cb: Callback<{ container_responses: Array<{ devices: DeviceSpec[] }> }>): void
}
interface Endpoint { endpoint: string; client: PluginClient; stream?: grpc.ClientReadableStream<unknown>; stoppedAt?: number }
export interface DeviceSpec { container_path: string; host_path: string; permissions: string }
/** Who holds a device: the pod (by uid) and its container. */
export interface DeviceOwner { podUid: string; container: string }

export const CHECKPOINT = 'kubelet_internal_checkpoint'
/** types.go endpointStopGracePeriod. */
export const ENDPOINT_STOP_GRACE_MS = 5 * 60_000

// k8s.io/apimachinery pkg/util/validation: IsQualifiedName and IsDNS1123Subdomain.
const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/

/**
 * pkg/apis/core/v1/helper IsExtendedResourceName: not native (it has a `/` and is not in
 * `kubernetes.io/`), no `requests.` prefix, and `requests.<name>` is a qualified name.
 */
export function isExtendedResourceName(name: string): boolean {
  if (!name.includes('/') || name.includes('kubernetes.io/') || name.startsWith('requests.')) return false
  const quota = `requests.${name}`
  const parts = quota.split('/')
  if (parts.length !== 2) return false
  const [prefix, local] = parts as [string, string]
  return prefix.length > 0 && prefix.length <= 253 && DNS1123_SUBDOMAIN.test(prefix) && local.length > 0 && local.length <= 63 && QUALIFIED_NAME.test(local)
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5
  for (const b of Buffer.from(s)) h = Math.imul(h ^ b, 0x01000193) >>> 0
  return h
}

interface CheckpointData {
  PodDeviceEntries: Array<{ PodUID: string; ContainerName: string; ResourceName: string; DeviceIDs: Record<string, string[]>; AllocResp: string }>
  RegisteredDevices: Record<string, string[]>
}

export class FakeKubelet {
  readonly dir: string
  private server: grpc.Server | undefined
  private readonly endpoints = new Map<string, Endpoint>()
  /** Every device the manager knows, per resource, with its health (healthy/unhealthyDevices). */
  private readonly devices = new Map<string, Map<string, string>>()
  /** pod uid -> container -> resource -> device IDs (podDevices). */
  private readonly podDevices = new Map<string, Map<string, Map<string, string[]>>>()
  readonly registrations: Array<{ version: string; endpoint: string; resource_name: string }> = []
  /** Registrations the kubelet refused, with its message. */
  readonly refused: string[] = []

  /** client.go dial's timeout (10 s); tests shorten it. */
  private readonly dialTimeoutMs: number

  constructor(dir: string, opts: { dialTimeoutMs?: number } = {}) {
    this.dir = dir
    this.dialTimeoutMs = opts.dialTimeoutMs ?? 10_000
  }

  async start(): Promise<void> {
    this.readCheckpoint()
    // manager.go Start/removeContents: every file but the checkpoint goes; plugins watch for it.
    for (const f of readdirSync(this.dir)) {
      const p = join(this.dir, f)
      if (f !== CHECKPOINT && !statSync(p).isDirectory()) rmSync(p, { force: true })
    }
    const server = new grpc.Server()
    server.addService(deviceplugin().Registration.service, {
      Register: (call: grpc.ServerUnaryCall<{ version: string; endpoint: string; resource_name: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        const r = call.request
        this.registrations.push(r)
        const refuse = (msg: string) => { this.refused.push(msg); cb({ code: grpc.status.UNKNOWN, details: msg }) }
        // server.go errUnsupportedVersion / errInvalidResourceName.
        if (r.version !== API_VERSION) return refuse(`requested API version "${r.version}" is not supported by kubelet. Supported versions are ["${API_VERSION}"]`)
        if (!isExtendedResourceName(r.resource_name)) return refuse(`the ResourceName "${r.resource_name}" is invalid`)
        this.connect(r.resource_name, r.endpoint).then(() => cb(null, {}), (e: Error) => refuse(`failed to dial device plugin: ${e.message}`))
      },
    })
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${join(this.dir, 'kubelet.sock')}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())))
    this.server = server
  }

  /** The kubelet stops: its streams end (the plugins see that), its socket goes; the checkpoint stays. */
  async stop(): Promise<void> {
    for (const e of this.endpoints.values()) { e.stream?.cancel(); e.client.close() }
    this.endpoints.clear()
    this.devices.clear()
    this.podDevices.clear()
    const s = this.server
    this.server = undefined
    if (s) await new Promise<void>((r) => s.tryShutdown(() => r()))
    rmSync(join(this.dir, 'kubelet.sock'), { force: true })
  }

  async restart(): Promise<void> {
    await this.stop()
    await this.start()
  }

  private async connect(resource: string, endpoint: string): Promise<void> {
    const client = new (deviceplugin().DevicePlugin)(`unix://${join(this.dir, endpoint)}`, grpc.credentials.createInsecure()) as unknown as PluginClient
    try {
      // client.go dial: WithBlock and a 10 s timeout; PluginConnected: GetDevicePluginOptions.
      await new Promise<void>((resolve, reject) => client.waitForReady(Date.now() + this.dialTimeoutMs, (e) => (e ? reject(e) : resolve())))
      await new Promise<void>((resolve, reject) => client.GetDevicePluginOptions({}, { deadline: Date.now() + 10_000 }, (e) => (e ? reject(e) : resolve())))
    } catch (e) {
      client.close()
      throw e
    }
    const ep: Endpoint = { endpoint, client }
    this.endpoints.set(resource, ep) // the newest registration wins (PluginConnected)
    if (!this.devices.has(resource)) this.devices.set(resource, new Map())
    const stream = client.ListAndWatch({})
    ep.stream = stream
    stream.on('data', (d: { devices: Device[] }) => {
      if (!this.server) return // stopped: nothing is recorded any more
      // genericDeviceUpdateCallback: the answer is the whole set.
      this.devices.set(resource, new Map(d.devices.map((x) => [x.ID, x.health])))
      this.writeCheckpoint()
    })
    let ended = false
    const disconnected = () => {
      if (ended) return
      ended = true
      // PluginDisconnected, keyed by the resource name (so also for an old, replaced stream).
      const devs = this.devices.get(resource)
      if (devs) for (const id of devs.keys()) devs.set(id, 'Unhealthy')
      ep.stoppedAt = Date.now()
      client.close()
    }
    stream.on('error', disconnected)
    stream.on('end', disconnected)
    stream.on('close', disconnected)
  }

  /** The connection to a plugin breaks (not a kubelet restart): its stream ends. */
  dropStream(resource: string): void {
    this.endpoints.get(resource)?.stream?.cancel()
  }

  /** Device health as the node status would count it: capacity and allocatable. */
  capacity(resource: string): { capacity: number; healthy: number; allocated: number } {
    const devs = this.devices.get(resource) ?? new Map<string, string>()
    return { capacity: devs.size, healthy: [...devs.values()].filter((h) => h === 'Healthy').length, allocated: this.allocated(resource).size }
  }

  private allocated(resource: string): Set<string> {
    const out = new Set<string>()
    for (const containers of this.podDevices.values()) for (const byRes of containers.values()) for (const id of byRes.get(resource) ?? []) out.add(id)
    return out
  }

  /** Waits until the resource is registered with at least one healthy device. */
  async ready(resource: string, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms
    while (!this.capacity(resource).healthy) {
      if (Date.now() > deadline) throw new Error(`no healthy ${resource} device within ${ms} ms (registrations: ${JSON.stringify(this.registrations)}, refused: ${JSON.stringify(this.refused)})`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  /** What the kubelet does at admission for a container with `resource: count` in its limits. */
  async allocate(resource: string, count: number, owner: DeviceOwner = { podUid: `anonymous-${Math.random()}`, container: 'c' }): Promise<DeviceSpec[]> {
    const ep = this.endpoints.get(resource)
    const devs = this.devices.get(resource)
    if (!ep || !devs) throw new Error(`UnexpectedAdmissionError: resource ${resource} is not registered`)
    const taken = this.allocated(resource)
    const free = [...devs].filter(([id, h]) => h === 'Healthy' && !taken.has(id)).map(([id]) => id).slice(0, count)
    if (free.length < count) throw new Error(`OutOf${resource}: ${free.length} of ${count} available`)
    const res = await new Promise<{ container_responses: Array<{ devices: DeviceSpec[] }> }>((resolve, reject) =>
      ep.client.Allocate({ container_requests: [{ devices_ids: free }] }, { deadline: Date.now() + 5000 }, (e, r) => (e ? reject(e) : resolve(r))))
    const containers = this.podDevices.get(owner.podUid) ?? new Map<string, Map<string, string[]>>()
    const byRes = containers.get(owner.container) ?? new Map<string, string[]>()
    byRes.set(resource, [...(byRes.get(resource) ?? []), ...free])
    containers.set(owner.container, byRes)
    this.podDevices.set(owner.podUid, containers)
    this.writeCheckpoint()
    return res.container_responses[0]?.devices ?? []
  }

  /** UpdateAllocatedDevices: a pod that is no longer active gives its devices back. */
  freePod(podUid: string): void {
    if (this.podDevices.delete(podUid)) this.writeCheckpoint()
  }

  /** The pods that hold devices (podDevices.pods()). */
  podsWithDevices(): string[] {
    return [...this.podDevices.keys()]
  }

  private writeCheckpoint(): void {
    const data: CheckpointData = { PodDeviceEntries: [], RegisteredDevices: {} }
    for (const [podUid, containers] of this.podDevices) {
      for (const [container, byRes] of containers) {
        for (const [resource, ids] of byRes) data.PodDeviceEntries.push({ PodUID: podUid, ContainerName: container, ResourceName: resource, DeviceIDs: { '-1': ids }, AllocResp: '' })
      }
    }
    for (const [resource, devs] of this.devices) data.RegisteredDevices[resource] = [...devs.keys()]
    writeFileSync(join(this.dir, CHECKPOINT), JSON.stringify({ Data: data, Checksum: fnv1a(JSON.stringify(data)) }))
  }

  private readCheckpoint(): void {
    const p = join(this.dir, CHECKPOINT)
    if (!existsSync(p)) return
    let cp: { Data: CheckpointData; Checksum: number }
    try {
      cp = JSON.parse(readFileSync(p, 'utf8')) as typeof cp
      if (fnv1a(JSON.stringify(cp.Data)) !== cp.Checksum) throw new Error('checksum mismatch')
    } catch {
      return // manager.go Start: "Continue after failing to read checkpoint file"
    }
    for (const e of cp.Data.PodDeviceEntries) {
      const containers = this.podDevices.get(e.PodUID) ?? new Map<string, Map<string, string[]>>()
      const byRes = containers.get(e.ContainerName) ?? new Map<string, string[]>()
      byRes.set(e.ResourceName, Object.values(e.DeviceIDs).flat())
      containers.set(e.ContainerName, byRes)
      this.podDevices.set(e.PodUID, containers)
    }
    // readCheckpoint: registered resources come back with no device till their plugin registers.
    for (const resource of Object.keys(cp.Data.RegisteredDevices)) this.devices.set(resource, new Map())
  }
}
