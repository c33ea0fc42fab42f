// The pure renderer: intent in, the exact `nft -f` transaction and policy-routing state out.
// Same intent, same bytes. The transaction creates-then-deletes the table before defining
// it, so applying it replaces whatever was there in one atomic step (nft 1.0.6 has no
// `destroy`).
import { formatCidr, parseAddress, parseCidr, parseInterfaceAddress, type Cidr } from './ip.ts'
import type { Egress, Intent, ProxyIntent, TproxyIntent, TunIntent } from './intent.ts'
import type { IngressPort } from './ingress.ts'
import { EBPF_BYPASS_MARK, EBPF_BYPASS_RULE_PRIORITY, EBPF_MARK_TAG, LOCAL_RULE_PRIORITY, NFT_FAMILY, NFT_TABLE, TPROXY_FWMARK, TPROXY_ROUTE_TABLE, TPROXY_RULE_PRIORITY } from './keys.ts'

export interface RouteSpec {
  family: 4 | 6
  /**
   * A `local … dev lo` route. nftables datapath: `default` in the policy table, so marked
   * packets loop back into PREROUTING. ebpf datapath: each intercept CIDR in table local,
   * so the catch-all's replies from those addresses are from local addresses.
   */
  dst: string
  table: number | 'local'
  /**
   * ebpf datapath: the pod's own address of that family as the route's preferred source. A
   * local route otherwise makes the kernel pick the destination itself as the source, and the
   * tunneler could not tell the client from the service address (peer == original dst).
   */
  src?: string
}

export interface RuleSpec {
  family: 4 | 6
  fwmark: number
  table: number | 'main'
  priority: number
}

/** tun mode: the device the CNI creates in the pod netns, and what is routed into it. */
export interface TunSpec {
  dev: string
  /** The only owner: no group, so no other uid can attach whatever groups it is given. */
  uid: number
  /** Address with prefix: its network is the connected route into the device. */
  addr: string
  routes: string[]
}

export interface Plan {
  mode: Intent['mode']
  /** tun mode: create and configure this device (DEL deletes it). */
  tun?: TunSpec
  /** ebpf datapath: attach the tc program (section `tc` of the agent's object) to lo ingress. */
  bpf: { dev: 'lo'; section: 'tc' } | undefined
  /** One `nft -f -` transaction that replaces the table. */
  nft: string
  routes: RouteSpec[]
  rules: RuleSpec[]
  /**
   * ebpf datapath: move the `lookup local` rule from priority 0 to this one, per family, so the
   * bypass rules come first (undone by DEL).
   */
  localRulePriority?: number
  /** Per-netns sysctls ADD sets (and DEL resets to `reset`). */
  sysctls: Array<{ name: string; value: string; reset: string }>
}

const MARK = `0x${TPROXY_FWMARK.toString(16).padStart(8, '0')}`
const TABLE_REF = `${NFT_FAMILY} ${NFT_TABLE}`

/**
 * The same transaction for a namespace that has no table yet: `create` fails (atomically,
 * "File exists") when the table is there, and skips the delete, whose RCU grace period
 * costs ~16 ms per ADD. Callers fall back to the replacing form on that failure.
 */
export function createOnly(nft: string): string {
  const replaceHeader = `table ${TABLE_REF}\ndelete table ${TABLE_REF}\n`
  if (!nft.startsWith(replaceHeader)) throw new Error('not a ziti-cni replace transaction')
  return `create table ${TABLE_REF}\n${nft.slice(replaceHeader.length)}`
}

/** The transaction that removes the table (and only it) if present. */
export function renderDeleteTable(): string {
  return `table ${TABLE_REF}\ndelete table ${TABLE_REF}\n`
}

/** What the renderer needs to know about the attachment (from the primary plugin's result). */
export interface AttachmentFacts {
  /** The pod's addresses on this interface (no prefix length). */
  podIps?: string[]
  /** What the pod's own containers declare as inbound (podIngress): all the fence lets in. */
  ingress?: IngressPort[]
}

export function renderPlan(intent: Intent, facts: AttachmentFacts = {}): Plan {
  if (intent.mode === 'tun') return renderTun(intent, facts)
  return intent.mode === 'proxy' ? renderProxy(intent, facts) : renderTproxy(intent, facts)
}

/**
 * `ip` argv that create the tun device: owned by the sidecar (only it may attach without
 * CAP_NET_ADMIN), addressed (the connected route), up, and the extra routes into it. With no
 * tunneler attached the device has no carrier and its routes are `linkdown`.
 */
export function tunCommands(t: TunSpec): string[][] {
  return [
    ['-4', 'tuntap', 'add', 'dev', t.dev, 'mode', 'tun', 'user', String(t.uid)],
    ['-4', 'addr', 'add', t.addr, 'dev', t.dev],
    ['-4', 'link', 'set', 'dev', t.dev, 'up'],
    ...t.routes.map((r) => ['-4', 'route', 'replace', r, 'dev', t.dev]),
  ]
}

/** Deleting the device takes its address and routes with it. */
export function tunDeleteCommands(t: Pick<TunSpec, 'dev'>): string[][] {
  return [['-4', 'tuntap', 'del', 'dev', t.dev, 'mode', 'tun']]
}

function renderTun(intent: TunIntent, facts: AttachmentFacts): Plan {
  const w = new Writer()
  const net = formatCidr((parseInterfaceAddress(intent.addr) as { network: Cidr }).network)
  // Nothing for the tun's ranges may leave by another interface: should the device vanish or
  // its linkdown routes be ignored (ignore_routes_with_linkdown), the traffic is dropped, not
  // sent to the pod network.
  w.set('tun_dst4', 'ipv4_addr', [net, ...intent.routes], true)
  w.block('chain tun_guard_output', [
    'type filter hook output priority filter; policy accept;',
    `ip daddr @tun_dst4 oifname != "${intent.dev}" drop`,
  ])
  // What the tunneler writes into the device is its own (replies, hosted services): let in.
  fenceBlock(w, intent.uid, [], facts.ingress ?? [], intent.dev)
  if (intent.egress) egressBlock(w, intent.uid, intent.egress, intent.dev)
  return { mode: 'tun', tun: { dev: intent.dev, uid: intent.uid, addr: intent.addr, routes: [...intent.routes] }, nft: w.done(), routes: [], rules: [], bpf: undefined, sysctls: [] }
}

/** Route/rule state as `ip` argv (no shell), for the agent and for humans. */
export function ipCommands(plan: Pick<Plan, 'routes' | 'rules'>): string[][] {
  return [
    ...plan.routes.map((r) => [`-${r.family}`, 'route', 'replace', 'local', r.dst, 'dev', 'lo', 'table', String(r.table), ...(r.src ? ['src', r.src] : [])]),
    ...plan.rules.map((r) => [`-${r.family}`, 'rule', 'add', 'fwmark', `0x${r.fwmark.toString(16)}`, 'lookup', String(r.table), 'priority', String(r.priority)]),
  ]
}

class Writer {
  private lines: string[] = [`table ${TABLE_REF}`, `delete table ${TABLE_REF}`, `table ${TABLE_REF} {`]
  block(head: string, body: string[]): void {
    this.lines.push(`\t${head} {`, ...body.map((l) => `\t\t${l}`), '\t}')
  }
  set(name: string, type: string, elements: string[], interval = false): void {
    const body = [`type ${type}`]
    if (interval) body.push('flags interval')
    body.push(...elementLines(elements))
    this.block(`set ${name}`, body)
  }
  done(): string {
    return [...this.lines, '}', ''].join('\n')
  }
}

/** One element per line keeps golden diffs readable even with 10,000 CIDRs. */
function elementLines(elements: string[]): string[] {
  if (elements.length === 1) return [`elements = { ${elements[0]} }`]
  return [`elements = {`, ...elements.map((e, i) => `\t${e}${i < elements.length - 1 ? ',' : ''}`), '}']
}

/**
 * The fence, independent of port numbers (README "Datapath"; measured on the kernel): from
 * any interface but lo (and the tun), only replies to the pod's own connections, ICMP and the
 * ports the pod's containers declare get in, so a listener the tunneler opens later (a
 * dynamic proxy.v1 port, a service granted after admission) is unreachable from outside
 * whatever its port. A declared port is never one of the sidecar's known listeners. Behind
 * it, nothing owned by the sidecar's uid may answer a connection that came from outside
 * (TCP SYN-ACKs from request socks carry the listener's uid, measured): if the tunneler ever
 * binds a declared port, TCP still never completes. UDP to such a port would be delivered;
 * only the input rule stops that, hence both.
 */
function fenceBlock(w: Writer, uid: number, listeners: number[], ingress: IngressPort[], tunDev?: string): void {
  const open = ingress.filter((p) => !listeners.includes(p.port))
  if (open.length) w.set('ingress', 'inet_proto . inet_service', open.map((p) => `${p.proto} . ${p.port}`))
  w.block('chain fence_input', [
    'type filter hook input priority filter; policy accept;',
    'iifname "lo" accept',
    ...(tunDev ? [`iifname "${tunDev}" accept`] : []),
    'ct state established,related accept',
    'meta l4proto { icmp, ipv6-icmp } accept',
    ...(open.length ? ['meta l4proto . th dport @ingress accept'] : []),
    'drop',
  ])
  w.block('chain fence_output', [
    'type filter hook output priority filter; policy accept;',
    `oifname != "lo" meta skuid ${uid} ct direction reply drop`,
  ])
  // A pod netns forwards IPv4 (it inherits the node's ip_forward=1): a neighbour that routes
  // the tun's networks to this pod would have its packets forwarded into the tun and dialed
  // with this pod's identity (measured: e2e/node/redteam-sidecar.test.ts). Nothing but the
  // pod's own sockets may send into the tun.
  if (tunDev) w.block('chain fence_forward', ['type filter hook forward priority filter; policy accept;', `oifname "${tunDev}" drop`])
}

/**
 * The egress lockdown (README "Datapath"): what the app sends out of the pod is dropped unless
 * it goes to lo (every Ziti intercept: the proxy DNAT and both tproxy datapaths re-route to
 * lo before this hook), into the tun, is a reply or a connection already allowed, comes from
 * the sidecar's uid (its controller and routers), is IPv6 neighbour discovery, DNS to the
 * cluster DNS, or an exception. TCP is reset (connect() fails with ECONNREFUSED at once;
 * measured: an ICMPv6 admin-prohibited never reached the local socket); anything else is
 * dropped, which fails the app's send with EPERM.
 */
function egressBlock(w: Writer, uid: number, e: Egress, tunDev?: string, steered: string[] = []): void {
  const fam = splitFamilies(e.cidrs)
  const dns = { 4: e.dns.filter((a) => !a.includes(':')), 6: e.dns.filter((a) => a.includes(':')) }
  for (const f of [4, 6] as const) {
    if (dns[f].length) w.set(`egress_dns${f}`, f === 4 ? 'ipv4_addr' : 'ipv6_addr', dns[f])
    if (fam[f].length) w.set(`egress_allow${f}`, f === 4 ? 'ipv4_addr' : 'ipv6_addr', fam[f], true)
  }
  if (e.ports.length) w.set('egress_ports', 'inet_service', e.ports, true)
  const ip = (f: 4 | 6) => (f === 4 ? 'ip' : 'ip6')
  w.block('chain egress_output', [
    'type filter hook output priority filter; policy accept;',
    'oifname "lo" accept',
    // oifname is the route before the nat/route chains re-routed the packet (measured): the
    // proxy DNAT is recognised by its loopback destination, the TPROXY steering by its mark.
    'ip daddr 127.0.0.0/8 accept',
    'ip6 daddr ::1 accept',
    ...steered,
    ...(tunDev ? [`oifname "${tunDev}" accept`] : []),
    `meta skuid ${uid} accept`,
    'ct state established,related accept',
    // Multicast with TTL 0 is only looped back, never sent (measured): the validator's fence probe.
    'ip daddr 224.0.0.0/4 ip ttl 0 accept',
    'icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report } accept',
    ...([4, 6] as const).filter((f) => dns[f].length).map((f) => `${ip(f)} daddr @egress_dns${f} meta l4proto { tcp, udp } th dport 53 accept`),
    ...([4, 6] as const).filter((f) => fam[f].length).map((f) => `${ip(f)} daddr @egress_allow${f} accept`),
    ...(e.ports.length ? ['meta l4proto { tcp, udp } th dport @egress_ports accept'] : []),
    // A dropped SYN would leave connect() to time out; the rejection says why at once.
    'meta l4proto tcp reject with tcp reset',
    'drop',
  ])
}

function renderProxy(intent: ProxyIntent, facts: AttachmentFacts): Plan {
  const w = new Writer()
  const byFamily = (f: 4 | 6) => intent.dnat.filter((d) => (parseCidr(d.dst) as Cidr).family === f)
  // Exact keys need a plain map; a range (a CIDR, a port span) needs an interval map.
  const mapBlock = (f: 4 | 6, entries: typeof intent.dnat) => [
    `type ${f === 4 ? 'ipv4' : 'ipv6'}_addr . inet_proto . inet_service : inet_service`,
    ...(entries.some((d) => d.dst.includes('/') || d.portTo !== undefined) ? ['flags interval'] : []),
    ...elementLines(entries.map((d) => `${d.dst} . ${d.proto} . ${d.port}${d.portTo !== undefined ? `-${d.portTo}` : ''} : ${d.to}`)),
  ]
  const v4 = byFamily(4)
  const v6 = byFamily(6)
  if (v4.length) w.block('map dnat4', mapBlock(4, v4))
  if (v6.length) w.block('map dnat6', mapBlock(6, v6))
  const rules = ['type nat hook output priority -100; policy accept;', `meta skuid ${intent.uid} return`]
  if (v4.length) rules.push('meta nfproto ipv4 meta l4proto { tcp, udp } dnat ip to 127.0.0.1 : ip daddr . meta l4proto . th dport map @dnat4')
  if (v6.length) rules.push('meta nfproto ipv6 meta l4proto { tcp, udp } dnat ip6 to [::1] : ip6 daddr . meta l4proto . th dport map @dnat6')
  w.block('chain proxy_output', rules)
  // `ziti tunnel proxy` answers UDP with WriteTo on its unconnected 0.0.0.0 listener
  // (openziti/ziti tunnel/udp_vconn/conn.go:150): the reply's source would be the pod IP, which
  // conntrack cannot map back to the DNATed flow, and a connected client drops it. With the
  // flow's source rewritten to loopback, the listener replies to 127.0.0.1 from 127.0.0.1, the
  // reply matches the conntrack entry, and the app sees it come from the address it dialled.
  const udpListeners = [...new Set(intent.dnat.filter((d) => d.proto === 'udp').map((d) => d.to))].sort((a, b) => a - b)
  if (udpListeners.length) {
    w.set('udp_listeners', 'inet_service', udpListeners.map(String))
    const snat = ['type nat hook postrouting priority srcnat; policy accept;']
    if (v4.length) snat.push('ct status dnat meta nfproto ipv4 ip daddr 127.0.0.1 udp dport @udp_listeners snat ip to 127.0.0.1')
    if (v6.length) snat.push('ct status dnat meta nfproto ipv6 ip6 daddr ::1 udp dport @udp_listeners snat ip6 to ::1')
    w.block('chain proxy_postrouting', snat)
  }
  fenceBlock(w, intent.uid, intent.fence, facts.ingress ?? [])
  if (intent.egress) egressBlock(w, intent.uid, intent.egress)
  return { mode: 'proxy', nft: w.done(), routes: [], rules: [], bpf: undefined, sysctls: [] }
}

function splitFamilies(cidrs: string[]): Record<4 | 6, string[]> {
  const out: Record<4 | 6, string[]> = { 4: [], 6: [] }
  for (const s of cidrs) out[(parseCidr(s) as Cidr).family].push(s)
  return out
}

function renderTproxy(intent: TproxyIntent, facts: AttachmentFacts): Plan {
  const w = new Writer()
  const intercept = splitFamilies(intent.cidrs)
  const exclude = splitFamilies(intent.excludeCidrs)
  const families = ([4, 6] as const).filter((f) => intercept[f].length > 0)
  const ipOf = (f: 4 | 6) => (f === 4 ? 'ip' : 'ip6')
  for (const f of families) w.set(`intercept${f}`, f === 4 ? 'ipv4_addr' : 'ipv6_addr', intercept[f], true)
  for (const f of families) if (exclude[f].length) w.set(`exclude${f}`, f === 4 ? 'ipv4_addr' : 'ipv6_addr', exclude[f], true)
  if (intent.excludePorts.length) w.set('exclude_ports', 'inet_service', intent.excludePorts, true)
  const protos = `{ ${intent.proto.join(', ')} }`

  const ebpf = intent.datapath === 'ebpf'
  const steer = ['type route hook output priority mangle; policy accept;']
  if (!ebpf) {
    // Mark what the app sends to an intercepted address; the route chain re-routes marked
    // packets through the policy table (local default dev lo) so they re-enter on lo.
    steer.push(`meta skuid ${intent.uid} return`, `meta l4proto != ${protos} return`)
    if (intent.dns !== undefined) steer.push('th dport 53 return')
    if (intent.excludePorts.length) steer.push('th dport @exclude_ports return')
    for (const f of families) if (exclude[f].length) steer.push(`${ipOf(f)} daddr @exclude${f} return`)
    for (const f of families) steer.push(`${ipOf(f)} daddr @intercept${f} meta mark set ${MARK}`)
  } else {
    // The CIDRs are local addresses here: what must still leave (the sidecar's own traffic,
    // excluded CIDRs and ports) is marked for the bypass rule, which looks it up in `main`;
    // what is intercepted is marked with the catch-all port for the tc program.
    const bypass = `0x${EBPF_BYPASS_MARK.toString(16).padStart(8, '0')}`
    const port = `0x${(EBPF_MARK_TAG | intent.to).toString(16).padStart(8, '0')}`
    for (const f of families) steer.push(`meta skuid ${intent.uid} ${ipOf(f)} daddr @intercept${f} meta mark set ${bypass} return`)
    steer.push(`meta l4proto != ${protos} return`)
    for (const f of families) {
      if (intent.excludePorts.length) steer.push(`${ipOf(f)} daddr @intercept${f} th dport @exclude_ports meta mark set ${bypass} return`)
      if (exclude[f].length) steer.push(`${ipOf(f)} daddr @exclude${f} meta mark set ${bypass} return`)
    }
    for (const f of families) steer.push(`${ipOf(f)} daddr @intercept${f} meta mark set ${port}`)
  }
  w.block('chain steer_output', steer)

  if (!ebpf) {
    const divert = ['type filter hook prerouting priority mangle; policy accept;']
    for (const f of families) {
      for (const p of intent.proto) {
        const local = f === 4 ? '127.0.0.1' : '[::1]'
        divert.push(`iifname "lo" meta mark ${MARK} meta nfproto ipv${f} meta l4proto ${p} tproxy ${ipOf(f)} to ${local}:${intent.to} accept`)
      }
    }
    w.block('chain divert_prerouting', divert)
  }

  if (intent.dns !== undefined) {
    w.block('chain dns_output', [
      'type nat hook output priority -100; policy accept;',
      `meta skuid ${intent.uid} return`,
      `meta nfproto ipv4 meta l4proto { tcp, udp } th dport 53 dnat ip to 127.0.0.1:${intent.dns}`,
      `meta nfproto ipv6 meta l4proto { tcp, udp } th dport 53 dnat ip6 to [::1]:${intent.dns}`,
    ])
  }
  fenceBlock(w, intent.uid, intent.fence, facts.ingress ?? [])
  if (intent.egress) egressBlock(w, intent.uid, intent.egress, undefined, ebpf ? [] : [`meta mark ${MARK} accept`])
  if (ebpf) {
    return {
      mode: 'tproxy',
      nft: w.done(),
      routes: families.flatMap((family) => {
        const src = (facts.podIps ?? []).find((ip) => (parseAddress(ip) as { family?: number }).family === family)
        return intercept[family].map((dst) => ({ family, dst, table: 'local' as const, ...(src ? { src } : {}) }))
      }),
      bpf: { dev: 'lo', section: 'tc' },
      rules: families.map((family) => ({ family, fwmark: EBPF_BYPASS_MARK, table: 'main' as const, priority: EBPF_BYPASS_RULE_PRIORITY })),
      localRulePriority: LOCAL_RULE_PRIORITY,
      // The CIDRs are local addresses of the pod, so (measured in the node suite):
      // - by default the pod answers ARP for all of them on eth0, claiming 100.64.0.0/10 on the
      //   pod network; with a hairpin bridge it even answers its own request and sends bypassed
      //   traffic to itself. arp_ignore=1: answer only for addresses configured on eth0.
      // - replies to bypassed traffic come from addresses inside the CIDRs, which IPv4 drops as
      //   martians unless accept_local.
      sysctls: families.includes(4) ? [
        { name: 'net.ipv4.conf.all.arp_ignore', value: '1', reset: '0' },
        { name: 'net.ipv4.conf.all.accept_local', value: '1', reset: '0' },
      ] : [],
    }
  }
  return {
    mode: 'tproxy',
    nft: w.done(),
    routes: families.map((family) => ({ family, dst: family === 4 ? '0.0.0.0/0' : '::/0', table: TPROXY_ROUTE_TABLE })),
    rules: families.map((family) => ({ family, fwmark: TPROXY_FWMARK, table: TPROXY_ROUTE_TABLE, priority: TPROXY_RULE_PRIORITY })),
    bpf: undefined,
    sysctls: [],
  }
}
