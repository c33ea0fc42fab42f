// From the services a pod's identity may dial (as the controller lists them, with their
// intercept.v1 and proxy.v1 configs) to proxy-mode interception entries. Pure. Everything
// proxy mode cannot express becomes a warning naming the service and the reason: an
// admission warning reaches `kubectl` and the API server's audit log, a silent drop reaches
// no one.
import { formatAddress, isDnsName, parseCidr, type Proto } from '@ziti-cni/shared'
import type { DialableService } from './controller.ts'

export interface AutoEntry {
  /** A hostname (gets a hostAlias) or an IPv4 address (DNATed as is). */
  host: string
  isIp: boolean
  port: number
  proto: Proto
  service: string
}

export interface AutoServices {
  entries: AutoEntry[]
  /** Listener ports fixed by a service's proxy.v1 (it replaces the command line's port). */
  fixedPorts: Map<string, number>
  warnings: string[]
}

export interface AutoLimits {
  /** Most ports one service may intercept (each is a DNAT entry). */
  maxPortsPerService: number
  /** Most DNAT entries for the whole pod (the intent's limit). */
  maxEntries: number
}

interface InterceptV1 { protocols?: unknown; addresses?: unknown; portRanges?: unknown }
interface ProxyV1 { port?: unknown; protocols?: unknown; binding?: unknown }

/** Bindings that leave a listener reachable on 127.0.0.1, where the DNAT sends the app. */
const LOOPBACK_BINDINGS = new Set(['0.0.0.0', '127.0.0.1', 'lo', 'localhost'])

export function autoServices(services: DialableService[], limits: AutoLimits): AutoServices {
  const entries: AutoEntry[] = []
  const fixedPorts = new Map<string, number>()
  const warnings: string[] = []
  const claimed = new Map<string, string>()
  const portOwner = new Map<number, string>()
  const warn = (name: string, why: string) => warnings.push(`ziti-cni: Ziti service "${name}" is not intercepted: ${why}`)
  // Sorted by name: the same grants give the same pod spec, whatever order the API lists them in.
  for (const s of [...services].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const intercept = s.config['intercept.v1'] as InterceptV1 | undefined
    const proxy = s.config['proxy.v1'] as ProxyV1 | undefined
    if (!intercept) { warn(s.name, 'it has no intercept.v1 config (no address or port to intercept)'); continue }
    let protos = (Array.isArray(intercept.protocols) ? intercept.protocols : []).filter((p): p is Proto => p === 'tcp' || p === 'udp')
    let fixed: number | undefined
    if (proxy) {
      if (typeof proxy.binding === 'string' && proxy.binding !== '' && !LOOPBACK_BINDINGS.has(proxy.binding)) {
        warn(s.name, `its proxy.v1 binding "${proxy.binding}" puts the listener where the pod's DNAT (to 127.0.0.1) cannot reach it; use 127.0.0.1 or leave it empty`); continue
      }
      const port = proxy.port
      if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) { warn(s.name, 'its proxy.v1 port is not a port'); continue }
      if (port < 1024) { warn(s.name, `its proxy.v1 port ${port} is privileged and the sidecar runs without capabilities; use a port of 1024 or more`); continue }
      const owner = portOwner.get(port)
      if (owner) { warn(s.name, `its proxy.v1 port ${port} is also the listener of "${owner}"`); continue }
      const served = (Array.isArray(proxy.protocols) ? proxy.protocols : []) as string[]
      const dropped = protos.filter((p) => !served.includes(p))
      if (dropped.length) warnings.push(`ziti-cni: Ziti service "${s.name}": ${dropped.join(', ')} is not intercepted: its proxy.v1 listener serves only ${served.join(', ') || 'nothing'}`)
      protos = protos.filter((p) => served.includes(p))
      fixed = port
    } else if (protos.includes('tcp') && protos.includes('udp')) {
      // `ziti tunnel proxy` keeps one listener per service name, one protocol each
      // (tunnel/intercept/proxy/proxy.go:132); proxy.v1 can list both on one port.
      warnings.push(`ziti-cni: Ziti service "${s.name}": udp is not intercepted: without a proxy.v1 config the proxy tunneler gives a service one protocol (tcp); add proxy.v1 with both protocols`)
      protos = ['tcp']
    }
    if (protos.length === 0) { warn(s.name, 'no protocol is left to intercept'); continue }

    const ports: number[] = []
    let tooWide = false
    for (const r of Array.isArray(intercept.portRanges) ? intercept.portRanges as Array<{ low?: unknown; high?: unknown }> : []) {
      const low = Number(r?.low)
      const high = Number(r?.high)
      if (!Number.isInteger(low) || !Number.isInteger(high) || low < 1 || high > 65535 || low > high) continue
      if (ports.length + (high - low + 1) > limits.maxPortsPerService) { tooWide = true; break }
      for (let p = low; p <= high; p++) if (!ports.includes(p)) ports.push(p)
    }
    if (tooWide) { warn(s.name, `its intercept.v1 port ranges cover more than ${limits.maxPortsPerService} ports; proxy mode maps each port separately (webhook config controller.maxPortsPerService)`); continue }
    if (ports.length === 0) { warn(s.name, 'its intercept.v1 has no port range within 1-65535'); continue }

    const hosts: Array<{ host: string; isIp: boolean }> = []
    for (const a of Array.isArray(intercept.addresses) ? intercept.addresses as unknown[] : []) {
      if (typeof a !== 'string') continue
      const address = a.trim().toLowerCase()
      if (address.startsWith('*')) { warnings.push(`ziti-cni: Ziti service "${s.name}": address ${a} is not intercepted: a wildcard domain cannot be a hostAlias; use tproxy mode or name the hosts`); continue }
      const cidr = parseCidr(address)
      if (typeof cidr !== 'string') {
        const single = cidr.family === 4 ? cidr.prefix === 32 : cidr.prefix === 128
        if (cidr.family !== 4) { warnings.push(`ziti-cni: Ziti service "${s.name}": address ${a} is not intercepted: the proxy tunneler listens on IPv4 only`); continue }
        if (!single) { warnings.push(`ziti-cni: Ziti service "${s.name}": address ${a} is not intercepted: proxy mode maps single addresses, not ranges; use tproxy mode`); continue }
        if (!hosts.some((h) => h.host === formatAddress(cidr))) hosts.push({ host: formatAddress(cidr), isIp: true })
        continue
      }
      if (!isDnsName(address)) { warnings.push(`ziti-cni: Ziti service "${s.name}": address ${a} is not intercepted: not a DNS name or an IPv4 address`); continue }
      if (!hosts.some((h) => h.host === address)) hosts.push({ host: address, isIp: false })
    }
    if (hosts.length === 0) { warn(s.name, 'none of its intercept.v1 addresses can be intercepted in proxy mode'); continue }

    const mine: AutoEntry[] = []
    for (const h of hosts) for (const port of ports) for (const proto of protos) {
      const id = `${h.host}:${port}/${proto}`
      const other = claimed.get(id)
      if (other) { warnings.push(`ziti-cni: Ziti service "${s.name}": ${id} is not intercepted: it is already intercepted for "${other}"`); continue }
      mine.push({ host: h.host, isIp: h.isIp, port, proto, service: s.name })
    }
    if (mine.length === 0) continue
    if (entries.length + mine.length > limits.maxEntries) { warn(s.name, `the pod would have more than ${limits.maxEntries} intercepted address:port pairs`); continue }
    for (const e of mine) claimed.set(`${e.host}:${e.port}/${e.proto}`, s.name)
    entries.push(...mine)
    if (fixed !== undefined) { fixedPorts.set(s.name, fixed); portOwner.set(fixed, s.name) }
  }
  return { entries, fixedPorts, warnings }
}
