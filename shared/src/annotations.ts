// Parsers for the user-written pod annotations. Each error names the key, the entry
// (1-based, with its text) and the problem, so a rejected pod says exactly what to fix.
import { ValidationError } from './errors.ts'
import { compareCidrs, parseCidr, type Cidr } from './ip.ts'
import {
  ANNOTATION_DATAPATH,
  ANNOTATION_DNS_CAPTURE,
  ANNOTATION_EGRESS,
  ANNOTATION_EGRESS_ALLOW,
  ANNOTATION_ENROLLMENT_SECRET,
  ANNOTATION_EXCLUDE_CIDRS,
  ANNOTATION_EXCLUDE_PORTS,
  ANNOTATION_IDENTITY_SECRET,
  ANNOTATION_INTERCEPT_CIDRS,
  ANNOTATION_MODE,
  ANNOTATION_SERVICES,
} from './keys.ts'
import { LIMITS } from './limits.ts'

export type Mode = 'proxy' | 'tproxy' | 'tun'
export type Proto = 'tcp' | 'udp'
export const MODES: readonly Mode[] = ['proxy', 'tproxy', 'tun']

export interface ServiceEntry {
  host: string
  port: number
  proto: Proto
  service: string
}

export interface PortRange {
  from: number
  to: number
}

export interface SecretRef {
  name: string
  /** Undefined: the webhook's configured default key. */
  key: string | undefined
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/
const SERVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/
const SECRET_KEY = /^[-._a-zA-Z0-9]{1,253}$/

function checkSize(key: string, value: string): void {
  if (value.length > LIMITS.annotationBytes) {
    throw new ValidationError(key, `value is ${value.length} bytes, more than the limit of ${LIMITS.annotationBytes}`)
  }
}

/** Splits a comma-separated list; blank entries are an error, not silently skipped. */
function entries(key: string, value: string, max: number): string[] {
  checkSize(key, value)
  const list = value.split(',').map((s) => s.trim())
  if (list.length === 1 && list[0] === '') throw new ValidationError(key, 'value is empty')
  if (list.length > max) throw new ValidationError(key, `${list.length} entries, more than the limit of ${max}`)
  list.forEach((e, i) => {
    if (e === '') throw new ValidationError(key, 'empty entry (stray comma?)', { index: i + 1, text: e })
  })
  return list
}

export function parsePort(text: string): number | string {
  if (!/^[0-9]+$/.test(text)) return `port "${text}" is not a number`
  const n = Number(text)
  if (text.length > 5 || n < 1 || n > 65535) return `port ${text} is out of range 1-65535`
  return n
}

export function isDnsName(host: string): boolean {
  return host.length <= 253 && host.split('.').every((l) => DNS_LABEL.test(l))
}

export function parseMode(value: string): Mode {
  const v = value.trim()
  if ((MODES as readonly string[]).includes(v)) return v as Mode
  throw new ValidationError(ANNOTATION_MODE, `unknown mode ${JSON.stringify(v)} (expected ${MODES.slice(0, -1).join(', ')} or ${MODES.at(-1)})`)
}

/** `host:port[/tcp|/udp]=service, ...` */
export function parseServices(value: string): ServiceEntry[] {
  const key = ANNOTATION_SERVICES
  const seen = new Map<string, number>()
  return entries(key, value, LIMITS.services).map((text, i) => {
    const at = { index: i + 1, text }
    const fail = (problem: string): never => { throw new ValidationError(key, problem, at) }
    const eq = text.indexOf('=')
    if (eq < 0) fail('missing "=<ziti service>" (expected host:port[/udp]=service)')
    const target = text.slice(0, eq).trim()
    const service = text.slice(eq + 1).trim()
    if (!SERVICE_NAME.test(service)) {
      fail(`Ziti service name ${JSON.stringify(service)} is invalid (letters, digits, ".", "_", "-"; at most 128)`)
    }
    let proto: Proto = 'tcp'
    let hostPort = target
    const slash = target.lastIndexOf('/')
    if (slash >= 0) {
      const p = target.slice(slash + 1)
      if (p !== 'tcp' && p !== 'udp') fail(`protocol ${JSON.stringify(p)} is invalid (expected tcp or udp)`)
      proto = p as Proto
      hostPort = target.slice(0, slash)
    }
    const colon = hostPort.lastIndexOf(':')
    if (colon < 0) fail('missing ":<port>" (expected host:port[/udp]=service)')
    const host = hostPort.slice(0, colon)
    if (!isDnsName(host)) fail(`hostname ${JSON.stringify(host)} is not a lowercase DNS name`)
    const port = parsePort(hostPort.slice(colon + 1))
    if (typeof port === 'string') fail(port)
    const id = `${host}:${port}/${proto}`
    const dup = seen.get(id)
    if (dup !== undefined) fail(`${id} is already listed in entry ${dup}`)
    seen.set(id, i + 1)
    return { host, port: port as number, proto, service }
  })
}

/** Comma-separated CIDRs (a bare address is a host route); sorted, duplicates merged. */
export function parseCidrList(key: string, value: string, max: number = LIMITS.cidrs): Cidr[] {
  const list = entries(key, value, max).map((text, i) => {
    const c = parseCidr(text)
    if (typeof c === 'string') throw new ValidationError(key, c, { index: i + 1, text })
    return c
  })
  list.sort(compareCidrs)
  return list.filter((c, i) => i === 0 || compareCidrs(c, list[i - 1]!) !== 0)
}

export function parseInterceptCidrs(value: string): Cidr[] {
  return parseCidrList(ANNOTATION_INTERCEPT_CIDRS, value)
}

export function parseExcludeCidrs(value: string): Cidr[] {
  return parseCidrList(ANNOTATION_EXCLUDE_CIDRS, value, LIMITS.excludeCidrs)
}

/** `22, 8000-8100` */
export function parsePortRanges(key: string, value: string): PortRange[] {
  return entries(key, value, LIMITS.excludePorts).map((text, i) => {
    const at = { index: i + 1, text }
    const [a, b, ...rest] = text.split('-').map((s) => s.trim())
    if (rest.length > 0) throw new ValidationError(key, 'expected a port or a range "from-to"', at)
    const from = parsePort(a!)
    if (typeof from === 'string') throw new ValidationError(key, from, at)
    const to = b === undefined ? from : parsePort(b)
    if (typeof to === 'string') throw new ValidationError(key, to, at)
    if (to < from) throw new ValidationError(key, `range ${from}-${to} is reversed`, at)
    return { from, to }
  })
}

export function parseExcludePorts(value: string): PortRange[] {
  return parsePortRanges(ANNOTATION_EXCLUDE_PORTS, value)
}

export function parseBool(key: string, value: string): boolean {
  const v = value.trim()
  if (v === 'true') return true
  if (v === 'false') return false
  throw new ValidationError(key, `${JSON.stringify(v)} is not a boolean (expected true or false)`)
}

export function parseDatapath(value: string): 'nftables' | 'ebpf' {
  const v = value.trim()
  if (v === 'nftables' || v === 'ebpf') return v
  throw new ValidationError(ANNOTATION_DATAPATH, `unknown datapath ${JSON.stringify(v)} (expected nftables or ebpf)`)
}

export type EgressMode = 'open' | 'ziti-only'

export function parseEgress(value: string): EgressMode {
  const v = value.trim()
  if (v === 'open' || v === 'ziti-only') return v
  throw new ValidationError(ANNOTATION_EGRESS, `unknown egress mode ${JSON.stringify(v)} (expected ziti-only or open)`)
}

/** Exceptions to the egress lockdown: `10.0.0.0/8, 192.0.2.7, 443, 8000-8100`. */
export function parseEgressAllow(value: string): { cidrs: Cidr[]; ports: PortRange[] } {
  const cidrs: Cidr[] = []
  const ports: PortRange[] = []
  entries(ANNOTATION_EGRESS_ALLOW, value, LIMITS.excludeCidrs).forEach((text, i) => {
    if (/^[0-9]+(-[0-9]+)?$/.test(text)) ports.push(...parsePortRanges(ANNOTATION_EGRESS_ALLOW, text).map((r) => r))
    else {
      const c = parseCidr(text)
      if (typeof c === 'string') throw new ValidationError(ANNOTATION_EGRESS_ALLOW, `${c} (expected a CIDR, an address, a port or a range "from-to")`, { index: i + 1, text })
      cidrs.push(c)
    }
  })
  return { cidrs, ports }
}

export function parseDnsCapture(value: string): boolean {
  return parseBool(ANNOTATION_DNS_CAPTURE, value)
}

/** `<secret>[/<key>]` for identity-secret and enrollment-secret. */
export function parseSecretRef(key: typeof ANNOTATION_IDENTITY_SECRET | typeof ANNOTATION_ENROLLMENT_SECRET, value: string): SecretRef {
  checkSize(key, value)
  const v = value.trim()
  const slash = v.indexOf('/')
  const name = slash < 0 ? v : v.slice(0, slash)
  const k = slash < 0 ? undefined : v.slice(slash + 1)
  if (name === '') throw new ValidationError(key, 'secret name is empty')
  if (!isDnsName(name)) throw new ValidationError(key, `secret name ${JSON.stringify(name)} is not a valid Kubernetes name`)
  if (k !== undefined && !SECRET_KEY.test(k)) {
    throw new ValidationError(key, `secret key ${JSON.stringify(k)} is invalid (letters, digits, "-", "_", ".")`)
  }
  return { name, key: k }
}

export function formatPortRange(r: PortRange): string {
  return r.from === r.to ? String(r.from) : `${r.from}-${r.to}`
}

