// A kubelet device plugin (API v1beta1, kubernetes/kubelet pkg/apis/deviceplugin/v1beta1) that
// hands tun-mode sidecars `/dev/net/tun`. The device node it gives is a private one, `c 10:200`
// owned by the sidecar's uid/gid with mode 0600 (containerd copies a device's host mode and
// owner into the container): the sidecar can open it, nothing else in the pod can, and the
// host's own /dev/net/tun stays as it is. Opening /dev/net/tun grants nothing by itself: the
// kernel lets a process attach only to a device it owns (TUNSETIFF's owner check), and the CNI
// created the pod's device for the sidecar's uid.
//
// Lifecycle as the kubelet expects it: serve on <dir>/<socket>, then Register on
// <dir>/kubelet.sock. What the kubelet does (pkg/kubelet/cm/devicemanager, read at
// kubernetes/kubernetes master): Register checks the version and that the resource is an
// extended resource name, then dials our socket (10 s, blocking) and calls
// GetDevicePluginOptions before it answers (plugin/v1beta1/server.go Register,
// handler.go connectClient, client.go Connect/dial); an error there fails Register. It then
// reads our ListAndWatch stream; when that stream ends for any reason (we stop, the agent
// restarts, the connection breaks) it marks every device of the resource Unhealthy at once
// (allocatable drops to 0: no new pod gets one) and keeps the resource for
// endpointStopGracePeriod, 5 minutes, before it drops it from the node's capacity
// (manager.go PluginDisconnected, markResourceUnhealthy, GetCapacity; types.go). Pods
// already running keep their devices: allocations live in the kubelet's checkpoint
// (kubelet_internal_checkpoint), keyed by device ID, so our IDs are stable (tun-0..N-1).
// A new Register replaces the endpoint and the first ListAndWatch answer makes the devices
// healthy again. It never reconnects by itself: the plugin must register again. So:
// - when a ListAndWatch stream ends while we are serving, we register again (next tick);
// - when the kubelet restarts it deletes every socket in the dir but its checkpoint and
//   recreates kubelet.sock (manager.go Start, removeContents): we watch for either and serve
//   and register again;
// - across an agent restart the devices are Unhealthy from our exit until we register
//   again, which the agent does first thing at start; nothing a plugin can do shortens that.
import { execFileSync } from 'node:child_process'
import { chmodSync, chownSync, lstatSync, mkdirSync, rmSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'
import type { Logger } from 'pino'

export const API_VERSION = 'v1beta1'
const TUN_MAJOR = 10
const TUN_MINOR = 200
/** Linux new_encode_dev for small numbers, as stat() reports rdev. */
const TUN_RDEV = (TUN_MAJOR << 8) | TUN_MINOR

// Next to this module in the sources, next to agent.mjs in the bundle (build.ts copies it).
const PROTO = new URL('./v1beta1.proto', import.meta.url).pathname

type ServiceCtor = grpc.ServiceClientConstructor & { service: grpc.ServiceDefinition }
interface Api { Registration: ServiceCtor; DevicePlugin: ServiceCtor }

let api: Api | undefined
export function deviceplugin(): Api {
  if (!api) {
    const def = loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true, arrays: true })
    api = (grpc.loadPackageDefinition(def) as unknown as { v1beta1: Api }).v1beta1
  }
  return api
}

export interface TunPluginOptions {
  /** The kubelet's device-plugin dir (kubelet.sock lives there). */
  dir: string
  resource: string
  /** Our socket's file name inside `dir`. */
  socketName: string
  /** The private device node handed to containers. */
  deviceNode: string
  uid: number
  gid: number
  /** How many pods on the node may hold one at once (the scheduler counts these). */
  devices: number
  /** How often to look for a restarted kubelet, ms. */
  watchMs?: number
  log: Logger
}

export class TunDevicePlugin {
  private readonly o: TunPluginOptions
  private readonly log: Logger
  private server: grpc.Server | undefined
  private readonly streams = new Set<grpc.ServerWritableStream<unknown, unknown>>()
  private kubeletIno: number | undefined
  private timer: NodeJS.Timeout | undefined
  private healthy = false
  /** True while we end streams ourselves (stop, serve again): no re-registration for those. */
  private closing = false
  private ticking = false
  registrations = 0

  constructor(o: TunPluginOptions) {
    this.o = o
    this.log = o.log.child({ component: 'device-plugin', resource: o.resource })
  }

  get socket(): string {
    return join(this.o.dir, this.o.socketName)
  }

  /** `c 10:200`, 0600, owned by the sidecar; recreated when missing or not what it should be. */
  ensureDeviceNode(): void {
    const p = this.o.deviceNode
    let ok = false
    try {
      const s = lstatSync(p)
      ok = s.isCharacterDevice() && s.rdev === TUN_RDEV && s.uid === this.o.uid && s.gid === this.o.gid && (s.mode & 0o777) === 0o600
      if (!ok) rmSync(p, { force: true })
    } catch { /* absent */ }
    if (ok) return
    mkdirSync(dirname(p), { recursive: true, mode: 0o755 })
    // No mknod in node's fs API: coreutils' mknod, argv only.
    execFileSync('mknod', ['-m', '0600', p, 'c', String(TUN_MAJOR), String(TUN_MINOR)])
    chmodSync(p, 0o600)
    chownSync(p, this.o.uid, this.o.gid)
    this.log.info({ node: p, owner: `${this.o.uid}:${this.o.gid}` }, 'created the private tun device node')
  }

  private devices() {
    const health = this.healthy ? 'Healthy' : 'Unhealthy'
    return { devices: Array.from({ length: this.o.devices }, (_, i) => ({ ID: `tun-${i}`, health })) }
  }

  private checkHealth(): void {
    let healthy = false
    try {
      this.ensureDeviceNode()
      healthy = true
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'cannot provide the tun device node')
    }
    if (healthy !== this.healthy) {
      this.healthy = healthy
      for (const s of this.streams) s.write(this.devices())
    }
  }

  async start(): Promise<void> {
    this.checkHealth()
    await this.serveAndRegister()
    this.timer = setInterval(() => void this.watch(), this.o.watchMs ?? 2000)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    await this.closeServer()
  }

  private async closeServer(): Promise<void> {
    this.closing = true
    for (const s of this.streams) s.end()
    this.streams.clear()
    const server = this.server
    this.server = undefined
    if (server) await new Promise<void>((r) => server.tryShutdown(() => r()))
    rmSync(this.socket, { force: true })
    this.closing = false
  }

  /** The kubelet lost our stream: it marked our devices Unhealthy and waits for a Register. */
  private streamEnded(call: grpc.ServerWritableStream<unknown, unknown>): void {
    if (!this.streams.delete(call) || this.closing || !this.server) return
    this.log.warn('the kubelet\'s ListAndWatch stream ended: registering again')
    this.kubeletIno = undefined // the next tick registers
  }

  private async serveAndRegister(): Promise<void> {
    await this.closeServer()
    const server = new grpc.Server()
    server.addService(deviceplugin().DevicePlugin.service, {
      GetDevicePluginOptions: (_: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { pre_start_required: false, get_preferred_allocation_available: false }),
      ListAndWatch: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        this.streams.add(call)
        call.on('cancelled', () => this.streamEnded(call))
        call.on('close', () => this.streamEnded(call))
        call.write(this.devices())
      },
      GetPreferredAllocation: (_: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { container_responses: [] }),
      PreStartContainer: (_: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, {}),
      Allocate: (call: grpc.ServerUnaryCall<{ container_requests: Array<{ devices_ids: string[] }> }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        try {
          this.ensureDeviceNode()
        } catch (e) {
          cb({ code: grpc.status.UNAVAILABLE, details: `no tun device node: ${(e as Error).message}` })
          return
        }
        const responses = call.request.container_requests.map((r) => {
          this.log.info({ devices: r.devices_ids }, 'allocated /dev/net/tun')
          return { devices: [{ container_path: '/dev/net/tun', host_path: this.o.deviceNode, permissions: 'rw' }], envs: {}, mounts: [], annotations: {}, cdi_devices: [] }
        })
        cb(null, { container_responses: responses })
      },
    })
    mkdirSync(this.o.dir, { recursive: true })
    rmSync(this.socket, { force: true })
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${this.socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())))
    this.server = server
    await this.register()
  }

  private async register(): Promise<void> {
    const kubelet = join(this.o.dir, 'kubelet.sock')
    try {
      this.kubeletIno = statSync(kubelet).ino
    } catch {
      this.kubeletIno = undefined
      this.log.warn({ kubelet }, 'no kubelet socket yet; will register when it appears')
      return
    }
    const client = new (deviceplugin().Registration)(`unix://${kubelet}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Register: (req: unknown, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void) => void }
    try {
      await new Promise<void>((resolve, reject) => client.Register(
        { version: API_VERSION, endpoint: this.o.socketName, resource_name: this.o.resource, options: { pre_start_required: false, get_preferred_allocation_available: false } },
        { deadline: Date.now() + 5000 },
        (e) => (e ? reject(e) : resolve()),
      ))
      this.registrations++
      this.log.info({ endpoint: this.socket }, 'registered with the kubelet')
    } catch (e) {
      this.kubeletIno = undefined // try again on the next tick
      this.log.warn({ err: (e as Error).message }, 'registration with the kubelet failed; retrying')
    } finally {
      client.close()
    }
  }

  /** A restarted kubelet deletes our socket and makes a new kubelet.sock: serve and register again. */
  private async watch(): Promise<void> {
    if (this.ticking) return // a registration can outlast a tick
    this.ticking = true
    try { await this.tick() } finally { this.ticking = false }
  }

  private async tick(): Promise<void> {
    this.checkHealth()
    let ino: number | undefined
    try { ino = statSync(join(this.o.dir, 'kubelet.sock')).ino } catch { ino = undefined }
    let ours = true
    try { statSync(this.socket) } catch { ours = false }
    if (!ours) {
      this.log.info('our socket is gone (kubelet restarted): serving again')
      await this.serveAndRegister()
    } else if (ino !== undefined && ino !== this.kubeletIno) {
      this.log.info(this.kubeletIno === undefined ? 'registering with the kubelet' : 'the kubelet socket changed: registering again')
      await this.register()
    }
  }
}
