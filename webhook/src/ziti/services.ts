// From the services a pod's identity may dial (as the controller lists them, with their
// intercept.v1 and proxy.v1 configs) to proxy-mode interception entries. Pure. Everything
// proxy mode cannot express becomes a warning naming the service and the reason: an
// admission warning reaches `kubectl` and the API server's audit log, a silent drop reaches
// no one.
import { cidrsOverlap, formatAddress, formatCidr, formatDnatTarget, isDnsName, parseCidr, type Cidr, type Proto } from '@ziti-cni/shared'
import type { DialableService } from './controller.ts'

export interface AutoEntry {
  /** A hostname (gets a hostAlias), or an IPv4 address or CIDR (DNATed as is). */
  host: string
  isIp: boolean
  port: number
  /** Last port of a range (absent: one port). */
  portTo?: number
  proto: Proto
  service: string
}

/** `host:port[-portTo]/proto`: how warnings and drift reports name an entry (as the intent's errors do). */
export function entryTarget(e: Pick<AutoEntry, 'host' | 'port' | 'portTo' | 'proto'>): string {
  return formatDnatTarget({ dst: e.host, port: e.port, portTo: e.portTo, proto: e.proto })
}

export interface AutoServices {
  entries: AutoEntry[]
  /** Listener ports fixed by a service's proxy.v1 (it replaces the command line's port). */
  fixedPorts: Map<string, number>
  warnings: string[]
}

export interface AutoLimits {
  /**
   * Most ports one service may intercept. Proxy mode carries no destination port to the
   * hosting side (every port reaches the same service connection), so a wide range is refused
   * with a warning rather than silently flattened.
   */
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
  const claimed: AutoEntry[] = []
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

    // Port ranges, merged: each becomes one interval element of the DNAT map.
    const ranges = (Array.isArray(intercept.portRanges) ? intercept.portRanges as Array<{ low?: unknown; high?: unknown }> : [])
      .map((r) => ({ low: Number(r?.low), high: Number(r?.high) }))
      .filter((r) => Number.isInteger(r.low) && Number.isInteger(r.high) && r.low >= 1 && r.high <= 65535 && r.low <= r.high)
      .sort((a, b) => a.low - b.low)
    const merged: Array<{ low: number; high: number }> = []
    for (const r of ranges) {
      const last = merged.at(-1)
      if (last && r.low <= last.high + 1) last.high = Math.max(last.high, r.high)
      else merged.push({ ...r })
    }
    const portCount = merged.reduce((n, r) => n + r.high - r.low + 1, 0)
    if (portCount > limits.maxPortsPerService) { warn(s.name, `its intercept.v1 port ranges cover ${portCount} ports, more than ${limits.maxPortsPerService}: proxy mode sends every port to one service connection, and the hosting side cannot tell them apart (webhook config controller.maxPortsPerService)`); continue }
    if (merged.length === 0) { warn(s.name, 'its intercept.v1 has no port range within 1-65535'); continue }

    const hosts: Array<{ host: string; isIp: boolean }> = []
    for (const a of Array.isArray(intercept.addresses) ? intercept.addresses as unknown[] : []) {
      if (typeof a !== 'string') continue
      const address = a.trim().toLowerCase()
      if (address.startsWith('*')) { warnings.push(`ziti-cni: Ziti service "${s.name}": address ${a} is not intercepted: a wildcard domain cannot be a hostAlias; use tun mode or name the hosts`); continue }
      const cidr = parseCidr(address)
      if (typeof cidr !== 'string') {
        if (cidr.family !== 4) { warnings.push(`ziti-cni: Ziti service "${s.name}": address ${a} is not intercepted: the proxy tunneler listens on IPv4 only`); continue }
        const host = cidr.prefix === 32 ? formatAddress(cidr) : formatCidr(cidr)
        if (!hosts.some((h) => h.host === host)) hosts.push({ host, isIp: true })
        continue
      }
      if (!isDnsName(address)) { warnings.push(`ziti-cni: Ziti service "${s.name}": address ${a} is not intercepted: not a DNS name, an IPv4 address or an IPv4 CIDR`); continue }
      if (!hosts.some((h) => h.host === address)) hosts.push({ host: address, isIp: false })
    }
    if (hosts.length === 0) { warn(s.name, 'none of its intercept.v1 addresses can be intercepted in proxy mode'); continue }

    const mine: AutoEntry[] = []
    for (const h of hosts) for (const r of merged) for (const proto of protos) {
      const e: AutoEntry = { host: h.host, isIp: h.isIp, port: r.low, ...(r.high > r.low ? { portTo: r.high } : {}), proto, service: s.name }
      const other = [...claimed, ...mine].find((c) => overlaps(c, e))
      if (other) { warnings.push(`ziti-cni: Ziti service "${s.name}": ${entryTarget(e)} is not intercepted: it overlaps ${entryTarget(other)} of "${other.service}"`); continue }
      mine.push(e)
    }
    if (mine.length === 0) continue
    if (entries.length + mine.length > limits.maxEntries) { warn(s.name, `the pod would have more than ${limits.maxEntries} intercepted address:port pairs`); continue }
    claimed.push(...mine)
    entries.push(...mine)
    if (fixed !== undefined) { fixedPorts.set(s.name, fixed); portOwner.set(fixed, s.name) }
  }
  return { entries, fixedPorts, warnings }
}

/** Same protocol, intersecting addresses (a hostname only with itself) and intersecting ports. */
function overlaps(a: AutoEntry, b: AutoEntry): boolean {
  if (a.proto !== b.proto || a.isIp !== b.isIp) return false
  if (!(a.port <= (b.portTo ?? b.port) && b.port <= (a.portTo ?? a.port))) return false
  return a.isIp ? cidrsOverlap(parseCidr(a.host) as Cidr, parseCidr(b.host) as Cidr) : a.host === b.host
}
