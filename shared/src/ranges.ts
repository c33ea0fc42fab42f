// Address-range sanity. The ranges ziti-cni takes over inside a pod (proxy aliases and service
// addresses, tproxy intercept CIDRs, the tun device's network and routes) must not hold the
// pod's own addresses, nor the cluster's pod and Service networks: EKS custom networking often
// puts pods in 100.64.0.0/10 (CGNAT space for secondary VPC CIDRs), which is also the Ziti DNS
// range every default here uses. Traffic to the pod itself, or to its peers, would then be
// intercepted or routed into the tun. Pure: ranges in, the first clash out, worded for the
// operator (both ranges and the key that changes them).
import { cidrContains, cidrsOverlap, formatCidr, parseAddress, parseCidr, parseInterfaceAddress, type Cidr } from './ip.ts'
import type { Intent } from './intent.ts'

export interface NamedRange {
  cidr: Cidr
  /** What it is, e.g. "the tproxy intercept range". */
  what: string
  /** Where it is set, e.g. "annotation cni.openziti.io/intercept-cidrs or webhook config tproxy.defaultCidrs". */
  key: string
}

const cidr = (text: string): Cidr => parseCidr(text) as Cidr

/** The ranges an intent takes over inside the pod, with the key that sets each. */
export function interceptRanges(intent: Intent): NamedRange[] {
  switch (intent.mode) {
    case 'proxy':
      // Single addresses only (aliases, a service's own IP): a service's intercept range is
      // taken over on its ports alone, and the service owner chose it.
      return intent.dnat.filter((d) => !d.dst.includes('/')).map((d) => ({
        cidr: cidr(d.dst), what: 'a proxy alias address', key: 'webhook config proxy.aliasRange (or the Ziti service\'s intercept address)',
      }))
    case 'tproxy':
      return intent.cidrs.map((c) => ({ cidr: cidr(c), what: 'the tproxy intercept range', key: 'annotation cni.openziti.io/intercept-cidrs or webhook config tproxy.defaultCidrs' }))
    case 'tun': {
      const net = (parseInterfaceAddress(intent.addr) as { network: Cidr }).network
      return [
        { cidr: net, what: 'the tun device\'s network', key: 'webhook config tun.addr' },
        ...intent.routes.map((r) => ({ cidr: cidr(r), what: 'a route into the tun device', key: 'annotation cni.openziti.io/intercept-cidrs or webhook config tun.routes' })),
      ]
    }
  }
}

/**
 * ADD: the pod's own addresses (the primary plugin's prevResult) against what its intent takes
 * over. Returns the refusal, or undefined. Unparseable addresses are the primary's business.
 */
export function podAddressClash(intent: Intent, podIps: string[]): string | undefined {
  const ranges = interceptRanges(intent)
  for (const ip of podIps) {
    const a = parseAddress(ip)
    if (typeof a === 'string') continue
    const r = ranges.find((x) => cidrContains(x.cidr, a))
    if (r) return `the pod's address ${ip} (from the primary CNI's result) lies inside ${r.what} ${formatCidr(r.cidr)}: the pod's own traffic would be taken over. Move it with ${r.key}, or give pods addresses outside it`
  }
  return undefined
}

/**
 * Webhook start: the configured ranges against the cluster's (pod and Service networks, the
 * cluster DNS). Every clash, each naming both ranges and both keys.
 */
export function rangeClashes(ours: NamedRange[], cluster: NamedRange[]): string[] {
  const out: string[] = []
  for (const o of ours) {
    for (const c of cluster) {
      if (cidrsOverlap(o.cidr, c.cidr)) out.push(`${o.key}: ${o.what} ${formatCidr(o.cidr)} overlaps ${c.what} ${formatCidr(c.cidr)} (${c.key}); pods could not reach it. Choose a range outside it`)
    }
  }
  return out
}
