// From the user's annotations and the webhook config to the interception intent (schema v1)
// plus what the sidecar needs to match it: hostAliases, proxy listeners, env.
import {
  ANNOTATION_DATAPATH, ANNOTATION_DNS_CAPTURE, ANNOTATION_EGRESS, ANNOTATION_EGRESS_ALLOW, parseEgress, parseEgressAllow, parsePortRanges, type Egress, type EgressMode, ANNOTATION_IDENTITY, AUTO, ANNOTATION_EXCLUDE_CIDRS, ANNOTATION_EXCLUDE_PORTS, ANNOTATION_INTERCEPT_CIDRS, ANNOTATION_MODE, ANNOTATION_SERVICES,
  ValidationError, cidrContains, cidrsOverlap, formatAddress, formatCidr, formatPortRange, mergeCidrs, nthAddress, parseAddress, parseDatapath, parseDnsCapture, parseExcludeCidrs, parseExcludePorts,
  parseCidr, parseInterceptCidrs, parseInterfaceAddress, parseMode, parseServices, type Cidr, type Intent, type Mode, type Proto,
} from '@ziti-cni/shared'
import type { V1HostAlias } from '@kubernetes/client-node'
import { NFTABLES_REFUSED, type DnsPath, type WebhookConfig } from '../config.ts'
import type { AutoEntry, AutoServices } from '../ziti/services.ts'

export interface ProxyListener { service: string; proto: Proto; port: number }

export interface InterceptionPlan {
  mode: Mode
  intent: Intent
  /** Hostname -> IP for proxy mode (merged into spec.hostAliases). */
  aliases: Array<{ ip: string; hostname: string }>
  /** Proxy mode: one listener per (Ziti service, protocol). */
  listeners: ProxyListener[]
  /** Ports the sidecar listens on (checked against the app's containerPorts). */
  ports: number[]
  /** tproxy: the tunneler's DNS address inside the intercept range, when the pod uses it. */
  dnsServer?: string
  /**
   * `dns: forward`: the cluster DNS the tunneler forwards other names to; the pod then lists
   * the tunneler alone (a second nameserver races it under musl: README "Compatibility").
   */
  dnsUpstream?: string[]
  /** Whether DNS was asked for explicitly (an error if the pod has its own DNS settings). */
  dnsExplicit?: boolean
  /** What the plan could not include, for the admission response. */
  warnings?: string[]
}

/** Annotations that belong to one mode only: named in the refusal when another mode gets them. */
const ONLY_IN: Record<string, Mode[]> = {
  [ANNOTATION_SERVICES]: ['proxy'],
  [ANNOTATION_INTERCEPT_CIDRS]: ['tproxy', 'tun'],
  [ANNOTATION_EXCLUDE_CIDRS]: ['tproxy'],
  [ANNOTATION_EXCLUDE_PORTS]: ['tproxy'],
  [ANNOTATION_DNS_CAPTURE]: ['tproxy', 'tun'],
  [ANNOTATION_DATAPATH]: ['tproxy'],
}

/** `namespace`: the pod's (the admission request's), for its egress floor (egressFloor). */
export function planInterception(annotations: Record<string, string>, existingAliases: V1HostAlias[], cfg: WebhookConfig, auto?: AutoServices, namespace?: string): InterceptionPlan {
  const mode = annotations[ANNOTATION_MODE] !== undefined ? parseMode(annotations[ANNOTATION_MODE]) : cfg.defaultMode
  for (const [key, modes] of Object.entries(ONLY_IN)) {
    if (annotations[key] !== undefined && !modes.includes(mode)) throw new ValidationError(key, `only applies to ${modes.join(' and ')} mode, but the pod's mode is ${mode}`)
  }
  const plan = mode === 'tun' ? planTun(annotations, cfg) : mode === 'proxy' ? planProxy(annotations, existingAliases, cfg, auto) : planTproxy(annotations, cfg)
  const egress = planEgress(annotations, cfg, namespace)
  if (egress) plan.intent.egress = egress
  return plan
}

/** The platform's egress floor for a namespace, and the config key it comes from. */
export interface EgressFloor { mode: EgressMode; key: string; allowCidrs: Cidr[]; allowPorts: string[] }

/**
 * Pure: the namespace's entry in `egress.namespaces`, else the cluster's `egress.default`, with
 * the exceptions of both. The key names the config entry, so it also tells apart the cache
 * entries of namespaces whose floor differs.
 */
export function egressFloor(cfg: WebhookConfig, namespace: string | undefined): EgressFloor {
  const ns = namespace !== undefined ? cfg.egress.namespaces[namespace] : undefined
  if (!ns) return { mode: cfg.egress.default, key: 'egress.default', allowCidrs: cfg.egress.allowCidrs, allowPorts: cfg.egress.allowPorts }
  return { mode: ns.default, key: `egress.namespaces.${namespace}`, allowCidrs: [...cfg.egress.allowCidrs, ...ns.allowCidrs], allowPorts: [...cfg.egress.allowPorts, ...ns.allowPorts] }
}

/**
 * `egress: ziti-only` (the pod's annotation, or the platform's floor): the cluster DNS and the
 * exceptions of the config and the annotation, merged into the canonical lists the schema
 * wants. A pod may tighten the floor, never loosen it: under a ziti-only floor `egress: open`
 * and pod exceptions (`egress-allow`) are refused, naming the config entry that set it.
 */
function planEgress(annotations: Record<string, string>, cfg: WebhookConfig, namespace: string | undefined): Egress | undefined {
  const floor = egressFloor(cfg, namespace)
  const asked = annotations[ANNOTATION_EGRESS] !== undefined ? parseEgress(annotations[ANNOTATION_EGRESS]!) : undefined
  const podAllow = annotations[ANNOTATION_EGRESS_ALLOW]
  if (floor.mode === 'ziti-only') {
    const where = namespace !== undefined && floor.key !== 'egress.default' ? `namespace ${namespace}` : 'this cluster'
    if (asked === 'open') throw new ValidationError(ANNOTATION_EGRESS, `the platform locks the egress of ${where} (webhook config ${floor.key}: ziti-only); a pod may tighten its egress, never open it`)
    if (podAllow !== undefined) throw new ValidationError(ANNOTATION_EGRESS_ALLOW, `the platform locks the egress of ${where} (webhook config ${floor.key}: ziti-only); a pod cannot add exceptions to it (the platform adds them: ${floor.key === 'egress.default' ? 'egress.allowCidrs/allowPorts' : `${floor.key}.allowCidrs/allowPorts`})`)
  }
  const mode = asked ?? floor.mode
  if (mode === 'open') {
    if (podAllow !== undefined) throw new ValidationError(ANNOTATION_EGRESS_ALLOW, `only applies with ${ANNOTATION_EGRESS}: ziti-only, but the pod's egress is open`)
    return undefined
  }
  const allow = podAllow !== undefined ? parseEgressAllow(podAllow) : { cidrs: [], ports: [] }
  const ports = [...floor.allowPorts.flatMap((p) => parsePortRanges(floor.key === 'egress.default' ? 'egress.allowPorts' : `${floor.key}.allowPorts`, p)), ...allow.ports].sort((a, b) => a.from - b.from)
  const merged: typeof ports = []
  for (const r of ports) {
    const last = merged.at(-1)
    if (last && r.from <= last.to + 1) last.to = Math.max(last.to, r.to)
    else merged.push({ ...r })
  }
  return {
    dns: [...new Set(cfg.egress.clusterDns.map((a) => formatAddress(parseAddress(a) as Exclude<ReturnType<typeof parseAddress>, string>)))],
    cidrs: mergeCidrs([...floor.allowCidrs, ...allow.cidrs]).map(formatCidr),
    ports: merged.map(formatPortRange),
  }
}

/**
 * tun: the CNI makes the device (owned by the sidecar) and routes the intercept ranges into
 * it; the tunneler attaches with no capability and answers DNS inside the device.
 */
function planTun(annotations: Record<string, string>, cfg: WebhookConfig): InterceptionPlan {
  if (!cfg.tun.image) {
    throw new ValidationError(ANNOTATION_MODE, 'tun needs a tunneler image that attaches to a pre-provisioned device (webhook config tun.image; README "tun mode"), and none is configured')
  }
  const net = (parseInterfaceAddress(cfg.tun.addr) as { network: Cidr }).network
  const asked = annotations[ANNOTATION_INTERCEPT_CIDRS] !== undefined ? parseInterceptCidrs(annotations[ANNOTATION_INTERCEPT_CIDRS]!) : cfg.tun.routes
  const routes: string[] = []
  for (const c of mergeCidrs(asked)) {
    if (c.family !== 4) throw new ValidationError(ANNOTATION_INTERCEPT_CIDRS, `${formatCidr(c)}: tun mode routes IPv4 only (the tunnelers' DNS range is IPv4)`)
    if (cidrContains(net, c)) continue // already the device's own network
    if (cidrsOverlap(net, c)) throw new ValidationError(ANNOTATION_INTERCEPT_CIDRS, `${formatCidr(c)} partly overlaps the tun's network ${formatCidr(net)}`)
    routes.push(formatCidr(c))
  }
  const dnsAsked = annotations[ANNOTATION_DNS_CAPTURE] !== undefined ? parseDnsCapture(annotations[ANNOTATION_DNS_CAPTURE]!) : undefined
  const useDns = dnsAsked ?? true
  const intent: Intent = { v: 1, mode: 'tun', uid: cfg.sidecarUid, dev: cfg.tun.dev, addr: cfg.tun.addr, routes }
  return { mode: 'tun', intent, aliases: [], listeners: [], ports: [], ...(useDns ? dnsPlan(cfg.tun.dnsServer, cfg.tun.dns, cfg, dnsAsked) : {}) }
}

/** The tunneler's DNS part of a tun or tproxy plan (the cluster DNS as read now: it is followed). */
function dnsPlan(dnsServer: string, path: DnsPath, cfg: WebhookConfig, asked: boolean | undefined): Pick<InterceptionPlan, 'dnsServer' | 'dnsUpstream' | 'dnsExplicit'> {
  return { dnsServer, ...(path === 'forward' ? { dnsUpstream: [...cfg.tproxy.clusterDns] } : {}), dnsExplicit: asked === true }
}

/** Entries for proxy mode: from the services annotation, or from the controller (auto). */
export interface ProxySource {
  entries: AutoEntry[]
  /** Listener ports a service's proxy.v1 fixes. */
  fixedPorts: Map<string, number>
  /** Auto: conflicts become warnings (the controller, not the pod author, chose them). */
  auto: boolean
  /** What the source could not express already (auto services). */
  warnings: string[]
}

function planProxy(annotations: Record<string, string>, existingAliases: V1HostAlias[], cfg: WebhookConfig, auto: AutoServices | undefined): InterceptionPlan {
  const value = annotations[ANNOTATION_SERVICES]
  let source: ProxySource
  if (value !== undefined && value !== AUTO) {
    source = { entries: parseServices(value).map((s) => ({ ...s, isIp: false })), fixedPorts: new Map(), auto: false, warnings: [] }
  } else if (auto) {
    source = { entries: auto.entries, fixedPorts: auto.fixedPorts, auto: true, warnings: auto.warnings }
  } else if (value === AUTO) {
    throw new ValidationError(ANNOTATION_SERVICES, `"auto" is no longer offered: admission never asks the OpenZiti controller what an identity may reach (README "Controller-driven identities"); list the services, or use mode tun, which intercepts every service the identity may dial`)
  } else {
    throw new ValidationError(ANNOTATION_SERVICES, `is required in proxy mode (e.g. "pg.ziti:5432=postgres"), also with ${ANNOTATION_IDENTITY}: auto; mode tun needs no list`)
  }
  return buildProxyPlan(source, existingAliases, cfg)
}

export function buildProxyPlan(source: ProxySource, existingAliases: V1HostAlias[], cfg: WebhookConfig): InterceptionPlan {
  const warnings = [...source.warnings]
  const entryText = (s: AutoEntry) => `${s.host}:${s.port}${s.portTo !== undefined ? `-${s.portTo}` : ''}${s.proto === 'udp' ? '/udp' : ''}=${s.service}`
  // Names the pod already defines must not be redefined; their IPs are not handed out again.
  const taken = new Map<string, string>()
  for (const a of existingAliases) for (const h of a.hostnames ?? []) taken.set(h, a.ip ?? '')
  const usedIps = new Set(existingAliases.map((a) => a.ip))
  const services = source.entries.filter((s, i) => {
    if (s.isIp || !taken.has(s.host)) return true
    if (!source.auto) throw new ValidationError(ANNOTATION_SERVICES, `hostname ${s.host} is already in spec.hostAliases (as ${taken.get(s.host)})`, { index: i + 1, text: entryText(s) })
    warnings.push(`ziti-cni: Ziti service "${s.service}": ${s.host} is not intercepted: the pod's own spec.hostAliases defines it (as ${taken.get(s.host)})`)
    return false
  })
  if (services.length === 0) throw new ValidationError(ANNOTATION_IDENTITY, `the identity may dial no service that proxy mode can intercept${warnings.length ? `: ${warnings.map((w) => w.replace(/^ziti-cni: /, '')).join('; ')}` : ''}`)

  // A service's own CIDR is never handed out as an alias address.
  const serviceRanges = services.filter((e) => e.isIp && e.host.includes('/')).map((e) => parseCidr(e.host) as Cidr)
  const insideServiceRange = (ip: string) => serviceRanges.some((c) => cidrContains(c, parseCidr(ip) as Cidr))
  // Deterministic: hostnames get addresses in order of first appearance, starting at the
  // range's .2 (the Ziti tunnelers' own first service IP); listeners likewise from portBase.
  const aliases: Array<{ ip: string; hostname: string }> = []
  const ipOf = new Map<string, string>()
  let offset = 2
  for (const s of services) {
    if (s.isIp) { ipOf.set(s.host, s.host); continue }
    if (ipOf.has(s.host)) continue
    let ip: string | undefined
    while (!ip || usedIps.has(ip) || insideServiceRange(ip)) {
      const a = nthAddress(cfg.proxy.aliasRange, offset++)
      if (!a) throw new ValidationError(ANNOTATION_SERVICES, `the alias range ${formatCidr(cfg.proxy.aliasRange)} has no free address left`)
      ip = formatAddress(a)
    }
    ipOf.set(s.host, ip)
    aliases.push({ ip, hostname: s.host })
  }
  // `ziti tunnel proxy` keys its listeners by service name (tunnel/intercept/proxy/proxy.go:132
  // at v2.0.3): one service named for TCP and UDP would get only the last one, unless its
  // proxy.v1 lists both (one Service with both protocols on the proxy.v1 port, :164-183).
  const protoOf = new Map<string, Proto>()
  services.forEach((s, i) => {
    const other = protoOf.get(s.service)
    if (other && other !== s.proto && !source.fixedPorts.has(s.service)) {
      throw new ValidationError(ANNOTATION_SERVICES, `Ziti service "${s.service}" is listed for both tcp and udp; ziti tunnel proxy keeps one listener per service name, so one protocol would be refused. Use a separate Ziti service per protocol`, { index: i + 1, text: entryText(s) })
    }
    protoOf.set(s.service, s.proto)
  })
  const fixed = new Set(source.fixedPorts.values())
  const listeners: ProxyListener[] = []
  const portOf = new Map<string, number>()
  let next = cfg.proxy.portBase
  for (const s of services) {
    const key = `${s.service}/${s.proto}`
    if (portOf.has(key)) continue
    let port = source.fixedPorts.get(s.service)
    if (port === undefined) {
      while (fixed.has(next)) next++
      port = next++
      if (port > 65535) throw new ValidationError(ANNOTATION_SERVICES, 'too many services for the configured proxy.portBase')
    }
    portOf.set(key, port)
    listeners.push({ service: s.service, proto: s.proto, port })
  }
  const intent: Intent = {
    v: 1, mode: 'proxy', uid: cfg.sidecarUid,
    dnat: services.map((s) => ({ dst: ipOf.get(s.host)!, proto: s.proto, port: s.port, ...(s.portTo !== undefined ? { portTo: s.portTo } : {}), to: portOf.get(`${s.service}/${s.proto}`)! })),
    fence: [...new Set(listeners.map((l) => l.port))],
  }
  return { mode: 'proxy', intent, aliases, listeners, ports: intent.fence, warnings }
}

function planTproxy(annotations: Record<string, string>, cfg: WebhookConfig): InterceptionPlan {
  const get = (k: string) => annotations[k]
  const cidrs = mergeCidrs(get(ANNOTATION_INTERCEPT_CIDRS) !== undefined ? parseInterceptCidrs(get(ANNOTATION_INTERCEPT_CIDRS)!) : cfg.tproxy.defaultCidrs)
  const exclude = get(ANNOTATION_EXCLUDE_CIDRS) !== undefined ? parseExcludeCidrs(get(ANNOTATION_EXCLUDE_CIDRS)!) : []
  const ports = get(ANNOTATION_EXCLUDE_PORTS) !== undefined ? parseExcludePorts(get(ANNOTATION_EXCLUDE_PORTS)!) : []
  if (!cfg.tproxy.image) {
    throw new ValidationError(ANNOTATION_MODE, 'tproxy needs a tunneler that implements the ziti-cni tproxy contract (README), and none is configured (webhook config tproxy.image); no upstream OpenZiti image does today. Use mode proxy with the stock ziti-tunnel')
  }
  const datapath = get(ANNOTATION_DATAPATH) !== undefined ? parseDatapath(get(ANNOTATION_DATAPATH)!) : cfg.tproxy.datapath
  if (datapath === 'nftables') throw new ValidationError(ANNOTATION_DATAPATH, NFTABLES_REFUSED.replace(/^nftables /, 'nftables: '))
  // DNS without a capture rule (a DNAT would stop bpf_sk_assign delivery): the pod's resolver
  // becomes the tunneler's DNS address inside the intercept range, which the datapath already
  // delivers to the catch-all like any other intercepted flow; the cluster DNS follows it.
  const dnsAsked = get(ANNOTATION_DNS_CAPTURE) !== undefined ? parseDnsCapture(get(ANNOTATION_DNS_CAPTURE)!) : undefined
  const useDns = dnsAsked ?? cfg.tproxy.dnsCapture
  const dnsAddr = parseAddress(cfg.tproxy.dnsServer)
  if (useDns && typeof dnsAddr !== 'string' && !cidrs.some((c) => cidrContains(c, dnsAddr))) {
    throw new ValidationError(ANNOTATION_INTERCEPT_CIDRS, `does not contain the tunneler's DNS address ${cfg.tproxy.dnsServer}; add it, or set ${ANNOTATION_DNS_CAPTURE}: "false"`)
  }
  // Overlapping exclude ranges are merged; the schema wants them disjoint.
  const sortedPorts = [...ports].sort((a, b) => a.from - b.from)
  const mergedPorts: typeof ports = []
  for (const r of sortedPorts) {
    const last = mergedPorts.at(-1)
    if (last && r.from <= last.to + 1) last.to = Math.max(last.to, r.to)
    else mergedPorts.push({ ...r })
  }
  const fence = [cfg.tproxy.port]
  const intent: Intent = {
    v: 1, mode: 'tproxy', uid: cfg.sidecarUid,
    datapath, cidrs: cidrs.map(formatCidr), proto: [...cfg.tproxy.protocols], to: cfg.tproxy.port, dns: undefined,
    excludeCidrs: mergeCidrs(exclude).map(formatCidr), excludePorts: mergedPorts.map(formatPortRange), fence,
  }
  return { mode: 'tproxy', intent, aliases: [], listeners: [], ports: fence, ...(useDns ? dnsPlan(cfg.tproxy.dnsServer, cfg.tproxy.dns, cfg, dnsAsked) : {}) }
}
