// Representative intents for the golden and kernel tests. Each one is rendered to
// golden/<name>.nft (the transaction) and golden/<name>.ip (the policy-routing argv).
import type { AttachmentFacts, Intent } from '../src/index.ts'

function tenThousandCidrs(): string[] {
  const out: string[] = []
  for (let i = 0; i < 10000; i++) out.push(`10.${Math.floor(i / 256)}.${i % 256}.0/24`)
  return out
}

const base = { v: 1 as const, uid: 2171 }

export const FIXTURES: Record<string, Intent> = {
  'proxy-two-services': {
    ...base, mode: 'proxy',
    dnat: [
      { dst: '100.64.0.2', proto: 'tcp', port: 5432, to: 15100 },
      { dst: '100.64.0.3', proto: 'tcp', port: 443, to: 15101 },
    ],
    fence: [15100, 15101],
  },
  'proxy-udp-dualstack': {
    ...base, mode: 'proxy',
    dnat: [
      { dst: '100.64.0.2', proto: 'udp', port: 53, to: 15100 },
      { dst: 'fd00:ffff::2', proto: 'tcp', port: 443, to: 15101 },
      { dst: 'fd00:ffff::3', proto: 'udp', port: 514, to: 15102 },
    ],
    fence: [15100, 15101, 15102],
  },
  'proxy-one-service': {
    ...base, mode: 'proxy', uid: 65532,
    dnat: [{ dst: '198.18.0.2', proto: 'tcp', port: 80, to: 15100 }],
    fence: [15100],
  },
  'tproxy-default': {
    ...base, mode: 'tproxy', datapath: 'nftables', cidrs: ['100.64.0.0/10'], proto: ['tcp', 'udp'], to: 15001, dns: 15053,
    excludeCidrs: [], excludePorts: [], fence: [15001, 15053],
  },
  'tproxy-exclusions': {
    ...base, mode: 'tproxy', datapath: 'nftables', cidrs: ['10.0.0.0/8', '100.64.0.0/10', '172.16.0.0/12'], proto: ['tcp'], to: 15001,
    dns: undefined, excludeCidrs: ['10.96.0.0/12', '100.64.0.1/32'], excludePorts: ['22', '8000-8100'],
    fence: [15001],
  },
  'tproxy-dualstack': {
    ...base, mode: 'tproxy', datapath: 'nftables', cidrs: ['100.64.0.0/10', 'fd00:ffff::/64'], proto: ['tcp', 'udp'], to: 15001,
    dns: 15053, excludeCidrs: ['fd00:ffff::1/128'], excludePorts: ['9090'], fence: [15001, 15053],
  },
  'tproxy-ipv6-only': {
    ...base, mode: 'tproxy', datapath: 'nftables', cidrs: ['2001:db8::/32'], proto: ['udp'], to: 15001, dns: undefined,
    excludeCidrs: [], excludePorts: [], fence: [15001],
  },
  'tproxy-ebpf-dualstack': {
    ...base, mode: 'tproxy', datapath: 'ebpf', cidrs: ['100.64.0.0/10', 'fd00:ffff::/64'], proto: ['tcp', 'udp'], to: 15001,
    dns: undefined, excludeCidrs: [], excludePorts: [], fence: [15001],
  },
  'tproxy-ebpf-exclusions': {
    ...base, mode: 'tproxy', datapath: 'ebpf', cidrs: ['100.64.0.0/10', 'fd00:ffff::/64'], proto: ['tcp', 'udp'], to: 15001,
    dns: undefined, excludeCidrs: ['100.64.0.1/32', 'fd00:ffff::1/128'], excludePorts: ['22', '8000-8100'], fence: [15001],
  },
  'tproxy-10000-cidrs': {
    ...base, mode: 'tproxy', datapath: 'nftables', cidrs: tenThousandCidrs(), proto: ['tcp', 'udp'], to: 15001, dns: 15053,
    excludeCidrs: [], excludePorts: [], fence: [15001, 15053],
  },
  'proxy-ranges': {
    ...base, mode: 'proxy',
    dnat: [
      { dst: '10.9.0.0/24', proto: 'tcp', port: 8000, portTo: 8015, to: 15101 },
      { dst: '10.9.0.0/24', proto: 'udp', port: 514, to: 15102 },
      { dst: '10.9.1.7', proto: 'tcp', port: 443, to: 15101 },
      { dst: '100.64.0.2', proto: 'tcp', port: 5432, to: 15100 },
    ],
    fence: [15100, 15101, 15102],
  },
  'proxy-egress-ziti-only': {
    ...base, mode: 'proxy',
    dnat: [{ dst: '100.64.0.2', proto: 'tcp', port: 5432, to: 15100 }],
    fence: [15100],
    egress: { dns: ['10.96.0.10', 'fd00:10:96::a'], cidrs: ['10.0.5.0/24', '2001:db8::/32'], ports: ['443', '8000-8100'] },
  },
  'tproxy-ebpf-egress': {
    ...base, mode: 'tproxy', datapath: 'ebpf', cidrs: ['100.64.0.0/10'], proto: ['tcp', 'udp'], to: 15001,
    dns: undefined, excludeCidrs: [], excludePorts: [], fence: [15001],
    egress: { dns: ['10.96.0.10'], cidrs: [], ports: [] },
  },
  'tun-egress': { v: 1, mode: 'tun', uid: 2171, dev: 'ziti0', addr: '100.64.0.1/10', routes: [], egress: { dns: ['10.96.0.10'], cidrs: [], ports: [] } },
  'tun-default': { v: 1, mode: 'tun', uid: 2171, dev: 'ziti0', addr: '100.64.0.1/10', routes: [] },
  'tun-routes': { v: 1, mode: 'tun', uid: 2171, dev: 'ziti0', addr: '100.64.0.1/10', routes: ['10.99.0.0/16', '192.0.2.0/24'] },
}

/**
 * What the agent learns from the pod spec for some fixtures: the fence lets these in (a port
 * that is one of the sidecar's listeners, 15001 here, never).
 */
export const FIXTURE_FACTS: Record<string, AttachmentFacts> = {
  'proxy-two-services': { ingress: [{ proto: 'tcp', port: 8080 }, { proto: 'udp', port: 5353 }] },
  'tproxy-dualstack': { ingress: [{ proto: 'tcp', port: 8080 }, { proto: 'tcp', port: 15001 }] },
  'tun-routes': { ingress: [{ proto: 'tcp', port: 8080 }] },
}
