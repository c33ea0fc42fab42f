// The interception intent, schema v1: what the webhook writes into the pod and the CNI
// programs. Strict both ways: the parser accepts exactly the documented shape, and the
// serializer writes one canonical spelling (sorted, compact, fixed key order).
import { ValidationError } from './errors.ts'
import { cidrsOverlap, compareCidrs, formatAddress, formatCidr, parseAddress, parseCidr, parseInterfaceAddress, type Cidr } from './ip.ts'
import { ANNOTATION_INTERCEPTION } from './keys.ts'
import { LIMITS } from './limits.ts'
import { parsePort, type Proto } from './annotations.ts'

export const INTENT_VERSION = 1

export interface DnatEntry {
  /**
   * What the app dials: a canonical address (a hostAlias, or a service's IP), or a canonical
   * CIDR with a shorter prefix (a service's intercept.v1 range).
   */
  dst: string
  proto: Proto
  port: number
  /** Last port of a range `port`-`portTo` (absent: the single port). */
  portTo?: number
  /** Local proxy port (the sidecar's listener on 127.0.0.1). */
  to: number
}

/** `host:port[-portTo]/proto`, as warnings, drift reports and errors write an entry. */
export function formatDnatTarget(d: Pick<DnatEntry, 'dst' | 'port' | 'portTo' | 'proto'>): string {
  return `${d.dst}:${d.port}${d.portTo !== undefined ? `-${d.portTo}` : ''}/${d.proto}`
}

/**
 * Egress lockdown (`cni.openziti.io/egress: ziti-only`): the app's egress is deny-by-default.
 * Loopback (so the proxy DNAT and the tproxy datapaths), the tun, replies, the sidecar's uid
 * and these stay open; everything else the app sends out of the pod is dropped (EPERM).
 */
export interface Egress {
  /** The cluster DNS: TCP and UDP port 53 to these addresses. */
  dns: string[]
  /** Destinations allowed on any port. */
  cidrs: string[]
  /** Destination ports ("443", "8000-8100") allowed to any address. */
  ports: string[]
}

interface IntentBase {
  v: 1
  /** The sidecar's uid: its own traffic is never captured. */
  uid: number
  /** The sidecar's known listener ports: never let in from outside, even when declared. */
  fence: number[]
  /** Absent: egress is not locked down. */
  egress?: Egress
}

export interface ProxyIntent extends IntentBase {
  mode: 'proxy'
  dnat: DnatEntry[]
}

export interface TproxyIntent extends IntentBase {
  mode: 'tproxy'
  cidrs: string[]
  proto: Proto[]
  /** Catch-all transparent listener port. */
  to: number
  /** DNS capture port; undefined disables DNS capture. */
  dns: number | undefined
  excludeCidrs: string[]
  /** "22" or "8000-8100". */
  excludePorts: string[]
  /**
   * nftables: TPROXY to a transparent listener (the tunneler needs CAP_NET_RAW).
   * ebpf: the CIDRs become local addresses and a tc program assigns marked packets to a plain
   * listener: no capability at all, but excluded traffic inside the CIDRs cannot leave.
   */
  datapath: Datapath
}

export type Datapath = 'nftables' | 'ebpf'

/**
 * tun: the CNI creates a tun device in the pod netns owned by the sidecar's uid (only), with the
 * tunneler's address and routes, and the sidecar (no capability) attaches to it by name; its
 * userspace stack carries every flow into the device, DNS included.
 */
export interface TunIntent {
  v: 1
  mode: 'tun'
  /**
   * Owner of the device: only this uid may attach (TUNSETIFF's owner check). No group: a gid
   * is shared by whoever the pod spec puts in it (supplementalGroups, fsGroup).
   */
  uid: number
  /** Device name, e.g. ziti0. */
  dev: string
  /** The device's address and prefix: the connected route into the tun, e.g. 100.64.0.1/10. */
  addr: string
  /** More CIDRs routed into the device (intercept addresses outside `addr`'s network). */
  routes: string[]
  egress?: Egress
}

export type Intent = ProxyIntent | TproxyIntent | TunIntent

const KEYS = {
  tun: ['v', 'mode', 'uid', 'dev', 'addr', 'routes', 'egress'],
  proxy: ['v', 'mode', 'uid', 'dnat', 'fence', 'egress'],
  tproxy: ['v', 'mode', 'uid', 'cidrs', 'proto', 'to', 'dns', 'excludeCidrs', 'excludePorts', 'datapath', 'fence', 'egress'],
} as const
const DNAT_KEYS = ['dst', 'proto', 'port', 'portTo', 'to'] as const
const EGRESS_KEYS = ['dns', 'cidrs', 'ports'] as const
/** Cluster DNS addresses (a resolv.conf holds at most 3 nameservers; a few more for dual stack). */
const MAX_EGRESS_DNS = 8
const DNAT_REQUIRED = ['dst', 'proto', 'port', 'to'] as const
const MAX_UID = 2147483647

class Checker {
  fail(path: string, problem: string): never {
    throw new ValidationError(ANNOTATION_INTERCEPTION, `field ${path}: ${problem}`)
  }

  object(path: string, v: unknown, allowed: readonly string[], required: readonly string[]): Record<string, unknown> {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(path, 'must be an object')
    const o = v as Record<string, unknown>
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) this.fail(path === '$' ? JSON.stringify(k) : `${path}.${k}`, 'unknown field')
    }
    for (const k of required) if (!(k in o)) this.fail(path === '$' ? k : `${path}.${k}`, 'is required')
    return o
  }

  array(path: string, v: unknown, min: number, max: number): unknown[] {
    if (!Array.isArray(v)) this.fail(path, 'must be an array')
    if (v.length < min) this.fail(path, `must have at least ${min} entr${min === 1 ? 'y' : 'ies'}`)
    if (v.length > max) this.fail(path, `has ${v.length} entries, more than the limit of ${max}`)
    return v
  }

  integer(path: string, v: unknown, min: number, max: number): number {
    if (typeof v !== 'number' || !Number.isInteger(v)) this.fail(path, 'must be an integer')
    if (v < min || v > max) this.fail(path, `${v} is out of range ${min}-${max}`)
    return v
  }

  port(path: string, v: unknown): number {
    return this.integer(path, v, 1, 65535)
  }

  proto(path: string, v: unknown): Proto {
    if (v !== 'tcp' && v !== 'udp') this.fail(path, 'must be "tcp" or "udp"')
    return v
  }

  string(path: string, v: unknown): string {
    if (typeof v !== 'string') this.fail(path, 'must be a string')
    return v
  }

  /** A canonical address, or a canonical CIDR shorter than a host route. */
  dnatDst(path: string, v: unknown): string {
    const s = this.string(path, v)
    if (!s.includes('/')) return this.address(path, s)
    const c = parseCidr(s, false)
    if (typeof c === 'string') this.fail(path, c)
    if (formatCidr(c) !== s) this.fail(path, `"${s}" is not canonical (expected "${formatCidr(c)}")`)
    if (c.prefix === (c.family === 4 ? 32 : 128)) this.fail(path, `write the host route ${s} as the address ${formatAddress(c)}`)
    return s
  }

  address(path: string, v: unknown): string {
    const s = this.string(path, v)
    const a = parseAddress(s)
    if (typeof a === 'string') this.fail(path, a)
    const canon = formatAddress(a)
    if (canon !== s) this.fail(path, `"${s}" is not canonical (expected "${canon}")`)
    return s
  }

  cidrs(path: string, v: unknown, min: number, max: number, disjoint: boolean): string[] {
    const list = this.array(path, v, min, max).map((x, i): [Cidr, string] => {
      const s = this.string(`${path}[${i}]`, x)
      const c = parseCidr(s, false)
      if (typeof c === 'string') this.fail(`${path}[${i}]`, c)
      if (formatCidr(c) !== s) this.fail(`${path}[${i}]`, `"${s}" is not canonical (expected "${formatCidr(c)}")`)
      return [c, s]
    })
    const sorted = [...list].sort((a, b) => compareCidrs(a[0], b[0]))
    for (let i = 1; i < sorted.length; i++) {
      const [prev, cur] = [sorted[i - 1]!, sorted[i]!]
      if (compareCidrs(prev[0], cur[0]) === 0) this.fail(path, `${cur[1]} is listed twice`)
      if (disjoint && cidrsOverlap(prev[0], cur[0])) this.fail(path, `${prev[1]} and ${cur[1]} overlap`)
    }
    return sorted.map(([, s]) => s)
  }

  ports(path: string, v: unknown, min: number, max: number): number[] {
    const list = this.array(path, v, min, max).map((x, i) => this.port(`${path}[${i}]`, x))
    const sorted = [...list].sort((a, b) => a - b)
    sorted.forEach((p, i) => { if (i > 0 && sorted[i - 1] === p) this.fail(path, `port ${p} is listed twice`) })
    return sorted
  }

  egress(path: string, v: unknown): Egress {
    const o = this.object(path, v, EGRESS_KEYS, [])
    const dns = o.dns === undefined ? [] : this.array(`${path}.dns`, o.dns, 0, MAX_EGRESS_DNS).map((x, i) => this.address(`${path}.dns[${i}]`, x))
    if (new Set(dns).size !== dns.length) this.fail(`${path}.dns`, 'lists an address twice')
    return {
      dns: [...dns].sort(),
      cidrs: o.cidrs === undefined ? [] : this.cidrs(`${path}.cidrs`, o.cidrs, 0, LIMITS.excludeCidrs, false),
      ports: o.ports === undefined ? [] : this.portRanges(`${path}.ports`, o.ports),
    }
  }

  portRanges(path: string, v: unknown): string[] {
    const list = this.array(path, v, 0, LIMITS.excludePorts).map((x, i) => {
      const at = `${path}[${i}]`
      const s = this.string(at, x)
      const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(s)
      if (!m) this.fail(at, `"${s}" is not a port or a range "from-to"`)
      const from = parsePort(m[1]!)
      const to = m[2] === undefined ? from : parsePort(m[2])
      if (typeof from === 'string') this.fail(at, from)
      if (typeof to === 'string') this.fail(at, to)
      if (to < from) this.fail(at, `range ${s} is reversed`)
      const canon = from === to ? String(from) : `${from}-${to}`
      if (canon !== s) this.fail(at, `"${s}" is not canonical (expected "${canon}")`)
      return { from, to, s }
    })
    const sorted = [...list].sort((a, b) => a.from - b.from || a.to - b.to)
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.from <= sorted[i - 1]!.to) this.fail(path, `${sorted[i - 1]!.s} and ${sorted[i]!.s} overlap`)
    }
    return sorted.map((r) => r.s)
  }
}

/** Validates a decoded JSON value against schema v1; returns the canonical (sorted) intent. */
export function validateIntent(value: unknown): Intent {
  const c = new Checker()
  // The version decides everything else, so it is checked before any other field.
  const top = c.object('$', value, [...new Set([...KEYS.tproxy, ...KEYS.proxy, ...KEYS.tun])], ['v'])
  if (top.v !== INTENT_VERSION) {
    c.fail('v', `unsupported intent version ${JSON.stringify(top.v)} (this build understands ${INTENT_VERSION})`)
  }
  c.object('$', value, [...new Set([...KEYS.tproxy, ...KEYS.proxy, ...KEYS.tun])], ['mode'])
  if (top.mode !== 'proxy' && top.mode !== 'tproxy' && top.mode !== 'tun') c.fail('mode', 'must be "proxy", "tproxy" or "tun"')
  if (top.mode === 'tun') return withEgress(c, top, validateTun(c, c.object('$', value, KEYS.tun, ['uid', 'dev', 'addr'])))
  const mode = top.mode as 'proxy' | 'tproxy'
  const required = mode === 'proxy' ? ['uid', 'dnat', 'fence'] : ['uid', 'cidrs', 'proto', 'to', 'fence']
  const o = c.object('$', value, KEYS[mode], required)
  const uid = c.integer('uid', o.uid, 1, MAX_UID)
  const fence = c.ports('fence', o.fence, 1, LIMITS.fence)
  const fenced = (path: string, port: number) => {
    if (!fence.includes(port)) c.fail(path, `listener port ${port} is not in fence`)
  }

  if (mode === 'proxy') {
    const dnat = c.array('dnat', o.dnat, 1, LIMITS.services).map((x, i): DnatEntry => {
      const at = `dnat[${i}]`
      const e = c.object(at, x, DNAT_KEYS, DNAT_REQUIRED)
      const entry: DnatEntry = {
        dst: c.dnatDst(`${at}.dst`, e.dst),
        proto: c.proto(`${at}.proto`, e.proto),
        port: c.port(`${at}.port`, e.port),
        to: c.port(`${at}.to`, e.to),
      }
      if (e.portTo !== undefined) {
        entry.portTo = c.port(`${at}.portTo`, e.portTo)
        if (entry.portTo <= entry.port) c.fail(`${at}.portTo`, `must be greater than port ${entry.port} (write a single port without portTo)`)
      }
      fenced(`${at}.to`, entry.to)
      return entry
    })
    // One map element per entry: two that share an address and a port for one protocol would be
    // an ambiguous (and, for nft's interval maps, rejected) pair.
    const spans = dnat.map((d) => ({ d, dst: parseCidr(d.dst) as Cidr, plo: d.port, phi: d.portTo ?? d.port }))
    for (let a = 0; a < spans.length; a++) {
      for (let b = a + 1; b < spans.length; b++) {
        const x = spans[a]!, y = spans[b]!
        if (x.d.proto !== y.d.proto || !cidrsOverlap(x.dst, y.dst) || !(x.plo <= y.phi && y.plo <= x.phi)) continue
        const same = compareCidrs(x.dst, y.dst) === 0 && x.plo === y.plo && x.phi === y.phi
        c.fail(`dnat[${b}]`, same ? `${formatDnatTarget(y.d)} is mapped twice` : `${formatDnatTarget(y.d)} overlaps ${formatDnatTarget(x.d)}`)
      }
    }
    return withEgress(c, o, { v: 1, mode, uid, dnat: sortDnat(dnat), fence })
  }

  const proto = c.array('proto', o.proto, 1, 2).map((p, i) => c.proto(`proto[${i}]`, p))
  if (new Set(proto).size !== proto.length) c.fail('proto', 'lists a protocol twice')
  proto.sort()
  const to = c.port('to', o.to)
  fenced('to', to)
  const dns = o.dns === undefined ? undefined : c.port('dns', o.dns)
  if (dns !== undefined) {
    fenced('dns', dns)
    if (dns === to) c.fail('dns', `must differ from the catch-all port ${to}`)
  }
  if (o.datapath !== undefined && o.datapath !== 'nftables' && o.datapath !== 'ebpf') c.fail('datapath', 'must be "nftables" or "ebpf"')
  const datapath = (o.datapath ?? 'nftables') as Datapath
  if (datapath === 'ebpf' && o.dns !== undefined) {
    // Measured: with any nat chain in the netns (DNS capture is a DNAT), packets that
    // bpf_sk_assign handed to the catch-all are refused instead.
    c.fail('datapath', 'ebpf cannot be combined with DNS capture (its DNAT stops bpf_sk_assign delivery); use datapath nftables')
  }
  return withEgress(c, o, {
    v: 1,
    mode,
    uid,
    datapath,
    cidrs: c.cidrs('cidrs', o.cidrs, 1, LIMITS.cidrs, true),
    proto,
    to,
    dns,
    excludeCidrs: o.excludeCidrs === undefined ? [] : c.cidrs('excludeCidrs', o.excludeCidrs, 0, LIMITS.excludeCidrs, false),
    excludePorts: o.excludePorts === undefined ? [] : c.portRanges('excludePorts', o.excludePorts),
    fence,
  })
}

function withEgress<T extends Intent>(c: Checker, o: Record<string, unknown>, intent: T): T {
  if (o.egress !== undefined) intent.egress = c.egress('egress', o.egress)
  return intent
}

/** The canonical spelling: empty lists omitted. */
function egressJson(e: Egress | undefined): { egress?: Record<string, string[]> } {
  if (!e) return {}
  return { egress: { ...(e.dns.length ? { dns: e.dns } : {}), ...(e.cidrs.length ? { cidrs: e.cidrs } : {}), ...(e.ports.length ? { ports: e.ports } : {}) } }
}

/** Linux interface names: at most 15 bytes (IFNAMSIZ - 1); ours are plain. */
const TUN_DEV = /^[a-z][a-z0-9]{0,14}$/

/** Why `dev` cannot be the tun device's name, or undefined when it can. */
export function tunDeviceProblem(dev: string): string | undefined {
  if (!TUN_DEV.test(dev)) return `"${dev}" is not a device name (a-z then a-z0-9, at most 15)`
  if (dev === 'lo' || dev.startsWith('eth')) return `"${dev}" is the pod's own interface name`
  return undefined
}

function validateTun(c: Checker, o: Record<string, unknown>): TunIntent {
  const uid = c.integer('uid', o.uid, 1, MAX_UID)
  const dev = c.string('dev', o.dev)
  const devProblem = tunDeviceProblem(dev)
  if (devProblem) c.fail('dev', devProblem)
  // The address keeps its host bits (it is the device's own address, with the prefix of its route).
  const addr = c.string('addr', o.addr)
  const parsed = parseInterfaceAddress(addr)
  if (typeof parsed === 'string' || parsed.address.family !== 4) c.fail('addr', typeof parsed === 'string' ? parsed : 'must be an IPv4 address (the tunnelers\' DNS range is IPv4)')
  const { address, network: net } = parsed
  if (net.prefix < 8 || net.prefix > 30) c.fail('addr', `prefix /${net.prefix} must be 8-30`)
  if (`${formatAddress(address)}/${net.prefix}` !== addr) c.fail('addr', `"${addr}" is not canonical (expected "${formatAddress(address)}/${net.prefix}")`)
  const routes = o.routes === undefined ? [] : c.cidrs('routes', o.routes, 0, LIMITS.cidrs, true)
  for (const r of routes) {
    const rc = parseCidr(r, false) as Cidr
    if (rc.family !== 4) c.fail('routes', `${r}: IPv6 routes are not supported in tun mode`)
    if (cidrsOverlap(rc, net)) c.fail('routes', `${r} overlaps the device's own network ${formatCidr(net)}`)
  }
  return { v: 1, mode: 'tun', uid, dev, addr, routes }
}

/** Sort key: family, address, protocol, port (decorate once, then sort). */
function sortDnat(list: DnatEntry[]): DnatEntry[] {
  const keyed = list.map((d) => {
    const a = parseCidr(d.dst) as Cidr
    return { d, family: a.family, value: a.value, prefix: a.prefix }
  })
  keyed.sort((x, y) => x.family - y.family || (x.value === y.value ? 0 : x.value < y.value ? -1 : 1) || y.prefix - x.prefix ||
    (x.d.proto === y.d.proto ? 0 : x.d.proto < y.d.proto ? -1 : 1) || x.d.port - y.d.port)
  return keyed.map((k) => k.d)
}

/** Parses the annotation value. Size is checked before JSON.parse ever sees it. */
export function parseIntent(text: string): Intent {
  if (typeof text !== 'string') throw new ValidationError(ANNOTATION_INTERCEPTION, 'must be a string')
  if (text.length > LIMITS.annotationBytes) {
    throw new ValidationError(ANNOTATION_INTERCEPTION, `value is ${text.length} bytes, more than the limit of ${LIMITS.annotationBytes}`)
  }
  let decoded: unknown
  try {
    decoded = JSON.parse(text)
  } catch (e) {
    throw new ValidationError(ANNOTATION_INTERCEPTION, `not valid JSON (${(e as Error).message})`)
  }
  return validateIntent(decoded)
}

/** Canonical compact JSON: validated, sorted, fixed key order, empty optionals omitted. */
export function serializeIntent(intent: Intent): string {
  const i = validateIntent(intent)
  if (i.mode === 'tun') {
    return JSON.stringify({ v: i.v, mode: i.mode, uid: i.uid, dev: i.dev, addr: i.addr, ...(i.routes.length ? { routes: i.routes } : {}), ...egressJson(i.egress) })
  }
  if (i.mode === 'proxy') {
    return JSON.stringify({
      v: i.v, mode: i.mode, uid: i.uid,
      dnat: i.dnat.map((d) => ({ dst: d.dst, proto: d.proto, port: d.port, ...(d.portTo !== undefined ? { portTo: d.portTo } : {}), to: d.to })),
      fence: i.fence,
      ...egressJson(i.egress),
    })
  }
  const out: Record<string, unknown> = { v: i.v, mode: i.mode, uid: i.uid, cidrs: i.cidrs, proto: i.proto, to: i.to }
  if (i.dns !== undefined) out.dns = i.dns
  if (i.excludeCidrs.length > 0) out.excludeCidrs = i.excludeCidrs
  if (i.excludePorts.length > 0) out.excludePorts = i.excludePorts
  if (i.datapath === 'ebpf') out.datapath = i.datapath
  out.fence = i.fence
  Object.assign(out, egressJson(i.egress))
  const text = JSON.stringify(out)
  if (text.length > LIMITS.annotationBytes) {
    throw new ValidationError(ANNOTATION_INTERCEPTION, `serialized intent is ${text.length} bytes, more than the limit of ${LIMITS.annotationBytes}`)
  }
  return text
}
