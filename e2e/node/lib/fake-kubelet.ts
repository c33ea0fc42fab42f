// The kubelet's device manager, as far as a device plugin sees it, over the real gRPC API
// (v1beta1, cni-plugin/src/deviceplugin/v1beta1.proto): the Registration service on
// <dir>/kubelet.sock; on Register it dials the plugin's endpoint, reads its options, keeps
// its ListAndWatch stream, and Allocate is called for a container that asks for the resource
// (pkg/kubelet/cm/devicemanager/manager.go). A restart removes every socket in the dir and
// recreates kubelet.sock, as the kubelet's device manager does when it starts.
import { readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { deviceplugin, API_VERSION } from '../../../cni-plugin/src/deviceplugin/tun-plugin.ts'

interface Device { ID: string; health: string }
type Callback<T> = (e: grpc.ServiceError | null, r: T) => void
interface PluginClient extends grpc.Client {
  GetDevicePluginOptions(req: object, cb: Callback<unknown>): void
  ListAndWatch(req: object): grpc.ClientReadableStream<{ devices: Device[] }>
  Allocate(req: object, opts: grpc.CallOptions, cb: Callback<{ container_responses: Array<{ devices: DeviceSpec[] }> }>): void
}
interface Plugin { endpoint: string; resource: string; client: PluginClient; devices: Device[]; allocated: Set<string>; stream?: grpc.ClientReadableStream<unknown> }
export interface DeviceSpec { container_path: string; host_path: string; permissions: string }

export class FakeKubelet {
  readonly dir: string
  private server: grpc.Server | undefined
  readonly plugins = new Map<string, Plugin>()
  readonly registrations: Array<{ version: string; endpoint: string; resource_name: string }> = []

  constructor(dir: string) {
    this.dir = dir
  }

  async start(): Promise<void> {
    // Device manager start: every socket in the dir is removed, then kubelet.sock is served.
    for (const f of readdirSync(this.dir)) if (f.endsWith('.sock')) rmSync(join(this.dir, f), { force: true })
    const server = new grpc.Server()
    server.addService(deviceplugin().Registration.service, {
      Register: (call: grpc.ServerUnaryCall<{ version: string; endpoint: string; resource_name: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        const r = call.request
        this.registrations.push(r)
        if (r.version !== API_VERSION) { cb({ code: grpc.status.INVALID_ARGUMENT, details: `unsupported version ${r.version}` }); return }
        cb(null, {})
        void this.connect(r.resource_name, r.endpoint)
      },
    })
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${join(this.dir, 'kubelet.sock')}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())))
    this.server = server
  }

  async stop(): Promise<void> {
    for (const p of this.plugins.values()) { p.stream?.cancel(); p.client.close() }
    this.plugins.clear()
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
    const old = this.plugins.get(resource)
    if (old) { old.stream?.cancel(); old.client.close() }
    const client = new (deviceplugin().DevicePlugin)(`unix://${join(this.dir, endpoint)}`, grpc.credentials.createInsecure()) as unknown as Plugin['client']
    const plugin: Plugin = { endpoint, resource, client, devices: [], allocated: new Set() }
    this.plugins.set(resource, plugin)
    await new Promise<void>((resolve, reject) => client.GetDevicePluginOptions({}, (e: Error | null) => (e ? reject(e) : resolve())))
    const stream = client.ListAndWatch({})
    plugin.stream = stream
    stream.on('data', (d: { devices: Device[] }) => { plugin.devices = d.devices })
    stream.on('error', () => { /* cancelled on stop, or the plugin went away */ })
  }

  /** Waits until the resource is registered with at least one healthy device. */
  async ready(resource: string, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms
    while (!(this.plugins.get(resource)?.devices.some((d) => d.health === 'Healthy'))) {
      if (Date.now() > deadline) throw new Error(`no healthy ${resource} device within ${ms} ms (registrations: ${JSON.stringify(this.registrations)})`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  /** What the kubelet does for a container with `resource: count` in its limits. */
  async allocate(resource: string, count: number): Promise<DeviceSpec[]> {
    const p = this.plugins.get(resource)
    if (!p) throw new Error(`UnexpectedAdmissionError: resource ${resource} is not registered`)
    const free = p.devices.filter((d) => d.health === 'Healthy' && !p.allocated.has(d.ID)).slice(0, count)
    if (free.length < count) throw new Error(`OutOf${resource}: ${free.length} of ${count} available`)
    const res = await new Promise<{ container_responses: Array<{ devices: DeviceSpec[] }> }>((resolve, reject) =>
      p.client.Allocate({ container_requests: [{ devices_ids: free.map((d) => d.ID) }] }, { deadline: Date.now() + 5000 }, (e, r) => (e ? reject(e) : resolve(r))))
    for (const d of free) p.allocated.add(d.ID)
    return res.container_responses[0]?.devices ?? []
  }
}
