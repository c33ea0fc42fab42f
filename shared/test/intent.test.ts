import t from 'tap'
import { validationMessage } from './validation-message.ts'
import { LIMITS, parseIntent, serializeIntent, validateIntent } from '../src/index.ts'
import { FIXTURES } from './fixtures.ts'

const message = validationMessage

t.test('the design card examples parse and serialize canonically', async (t) => {
  const proxy = '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}'
  t.equal(serializeIntent(parseIntent(proxy)), proxy)
  const tproxy = '{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10"],"proto":["tcp","udp"],"to":15001,"dns":15053,"fence":[15001,15053]}'
  t.equal(serializeIntent(parseIntent(tproxy)), tproxy)
})

t.test('serialization is canonical: order and spelling are fixed', async (t) => {
  const shuffled = '{"fence":[15101,15100],"dnat":[{"to":15101,"port":443,"proto":"tcp","dst":"100.64.0.3"},{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"uid":2171,"mode":"proxy","v":1}'
  t.equal(serializeIntent(parseIntent(shuffled)), serializeIntent(FIXTURES['proxy-two-services']!))
  for (const [name, intent] of Object.entries(FIXTURES)) {
    const wire = serializeIntent(intent)
    t.equal(serializeIntent(parseIntent(wire)), wire, `${name} round-trips`)
  }
})

t.test('everything else is refused with the field and the problem', async (t) => {
  const p = (o: object) => message(() => validateIntent(o))
  const proxy = { v: 1, mode: 'proxy', uid: 2171, dnat: [{ dst: '100.64.0.2', proto: 'tcp', port: 5432, to: 15100 }], fence: [15100] }
  const tproxy = { v: 1, mode: 'tproxy', uid: 2171, cidrs: ['100.64.0.0/10'], proto: ['tcp'], to: 15001, fence: [15001] }
  const K = 'cni.openziti.io/interception'
  t.equal(p({ ...proxy, v: 2 }), `${K}: field v: unsupported intent version 2 (this build understands 1)`)
  t.equal(p({ ...proxy, extra: true }), `${K}: field "extra": unknown field`)
  t.equal(p({ ...proxy, cidrs: [] }), `${K}: field "cidrs": unknown field`)
  t.equal(p({ ...proxy, mode: 'tap' }), `${K}: field mode: must be "proxy", "tproxy" or "tun"`)
  t.equal(p({ ...proxy, uid: 0 }), `${K}: field uid: 0 is out of range 1-2147483647`)
  t.equal(p({ ...proxy, uid: 1.5 }), `${K}: field uid: must be an integer`)
  t.equal(p({ ...proxy, uid: '2171' }), `${K}: field uid: must be an integer`)
  t.equal(p({ ...proxy, fence: [] }), `${K}: field fence: must have at least 1 entry`)
  t.equal(p({ ...proxy, fence: [15101] }), `${K}: field dnat[0].to: listener port 15100 is not in fence`)
  t.equal(p({ ...proxy, dnat: [{ ...proxy.dnat[0], port: 99999 }] }), `${K}: field dnat[0].port: 99999 is out of range 1-65535`)
  t.equal(p({ ...proxy, dnat: [{ ...proxy.dnat[0], dst: '100.064.0.2' }] }), `${K}: field dnat[0].dst: "100.064.0.2" is not an IPv4 address`)
  t.equal(p({ ...proxy, dnat: [{ ...proxy.dnat[0], dst: 'FD00::2' }] }), `${K}: field dnat[0].dst: "FD00::2" is not canonical (expected "fd00::2")`)
  t.equal(p({ ...proxy, dnat: [{ ...proxy.dnat[0], extra: 1 }] }), `${K}: field dnat[0].extra: unknown field`)
  t.equal(p({ ...proxy, dnat: [proxy.dnat[0], proxy.dnat[0]] }), `${K}: field dnat[1]: 100.64.0.2:5432/tcp is mapped twice`)
  t.equal(p({ ...tproxy, cidrs: ['100.64.0.0/10', '100.64.0.0/16'] }), `${K}: field cidrs: 100.64.0.0/10 and 100.64.0.0/16 overlap`)
  t.equal(p({ ...tproxy, cidrs: ['100.64.0.1/10'] }), `${K}: field cidrs[0]: host bits are set (did you mean 100.64.0.0/10?)`)
  t.equal(p({ ...tproxy, cidrs: ['100.64.0.1'] }), `${K}: field cidrs[0]: missing prefix length (write it as address/length)`)
  t.equal(p({ ...tproxy, cidrs: [] }), `${K}: field cidrs: must have at least 1 entry`)
  t.equal(p({ ...tproxy, proto: ['tcp', 'tcp'] }), `${K}: field proto: lists a protocol twice`)
  t.equal(p({ ...tproxy, dns: 15001 }), `${K}: field dns: must differ from the catch-all port 15001`)
  t.equal(p({ ...tproxy, dns: 15053 }), `${K}: field dns: listener port 15053 is not in fence`)
  t.equal(p({ ...tproxy, excludePorts: ['8100-8000'] }), `${K}: field excludePorts[0]: range 8100-8000 is reversed`)
  t.equal(p({ ...tproxy, excludePorts: ['22', '20-30'] }), `${K}: field excludePorts: 20-30 and 22 overlap`)
  t.equal(p({ ...tproxy, excludePorts: ['022'] }), `${K}: field excludePorts[0]: "022" is not canonical (expected "22")`)
  t.equal(p({ ...tproxy, cidrs: Array.from({ length: LIMITS.cidrs + 1 }, (_, i) => `10.0.0.${i}/32`) }), `${K}: field cidrs: has ${LIMITS.cidrs + 1} entries, more than the limit of ${LIMITS.cidrs}`)
  t.equal(p([]), `${K}: field $: must be an object`)
  t.equal(p({ ...tproxy, datapath: 'xdp' }), `${K}: field datapath: must be "nftables" or "ebpf"`)
  t.equal(p({ ...tproxy, datapath: 'ebpf', dns: 15053, fence: [15001, 15053] }), `${K}: field datapath: ebpf cannot be combined with DNS capture (its DNAT stops bpf_sk_assign delivery); use datapath nftables`)
  t.doesNotThrow(() => validateIntent({ ...tproxy, datapath: 'ebpf', excludePorts: ['22'], excludeCidrs: ['100.64.0.1/32'] }), 'ebpf takes exclusions (a bypass mark and rule, ahead of the local table)')
  t.equal(serializeIntent(validateIntent({ ...tproxy, datapath: 'nftables' })), serializeIntent(validateIntent(tproxy)), 'nftables is the default and is not written')
  t.equal(message(() => parseIntent('{"v":1,')), `${K}: not valid JSON (Expected double-quoted property name in JSON at position 7 (line 1 column 8))`)
  t.equal(message(() => parseIntent('x'.repeat(LIMITS.annotationBytes + 1))), `${K}: value is ${LIMITS.annotationBytes + 1} bytes, more than the limit of ${LIMITS.annotationBytes}`)
})

t.test('tun intents: exact shape, canonical, and refused with the field named', async (t) => {
  const K = 'cni.openziti.io/interception'
  const p = (v: unknown) => message(() => parseIntent(JSON.stringify(v)))
  const tun = { v: 1, mode: 'tun', uid: 2171, dev: 'ziti0', addr: '100.64.0.1/10' }
  t.equal(serializeIntent(parseIntent(JSON.stringify(tun)) as never), JSON.stringify(tun), 'routes omitted when empty')
  t.same(parseIntent(JSON.stringify({ ...tun, routes: ['192.0.2.0/24', '10.9.0.0/16'] })), { ...tun, routes: ['10.9.0.0/16', '192.0.2.0/24'] }, 'routes sorted')
  const bad: Array<[object, string]> = [
    [{ ...tun, gid: 2171 }, 'field "gid": unknown field'],
    [{ ...tun, dev: 'eth0' }, 'field dev: "eth0" is the pod\'s own interface name'],
    [{ ...tun, dev: 'Ziti0' }, 'field dev: "Ziti0" is not a device name'],
    [{ ...tun, dev: 'z'.repeat(16) }, 'field dev: "zzzzzzzzzzzzzzzz" is not a device name'],
    [{ ...tun, addr: '100.64.0.1' }, 'field addr: missing prefix length'],
    [{ ...tun, addr: 'fd00::1/64' }, 'field addr: must be an IPv4 address'],
    [{ ...tun, addr: '100.64.0.1/31' }, 'field addr: prefix /31 must be 8-30'],
    [{ ...tun, addr: '100.064.0.1/10' }, 'field addr:'],
    [{ ...tun, routes: ['100.100.0.0/16'] }, 'field routes: 100.100.0.0/16 overlaps the device\'s own network 100.64.0.0/10'],
    [{ ...tun, routes: ['fd00::/64'] }, 'field routes: fd00::/64: IPv6 routes are not supported in tun mode'],
    [{ ...tun, fence: [1] }, 'field "fence": unknown field'],
  ]
  for (const [v, m] of bad) t.match(p(v), `${K}: ${m}`, m)
})

t.test('dnat ranges: CIDRs and port spans, canonical, never overlapping', async (t) => {
  const K = 'cni.openziti.io/interception'
  const p = (dnat: unknown[]) => message(() => validateIntent({ v: 1, mode: 'proxy', uid: 2171, dnat, fence: [15100, 15101] }))
  const ok = validateIntent({ v: 1, mode: 'proxy', uid: 2171, fence: [15100], dnat: [{ dst: '10.9.0.0/24', proto: 'tcp', port: 80, portTo: 90, to: 15100 }, { dst: '10.9.0.0/24', proto: 'udp', port: 80, portTo: 90, to: 15100 }] })
  t.equal(ok.mode === 'proxy' ? ok.dnat.length : 0, 2, 'the same range for tcp and udp is two keys')
  t.equal(p([{ dst: '10.9.0.1/24', proto: 'tcp', port: 80, to: 15100 }]), `${K}: field dnat[0].dst: host bits are set (did you mean 10.9.0.0/24?)`)
  t.equal(p([{ dst: '10.9.0.7/32', proto: 'tcp', port: 80, to: 15100 }]), `${K}: field dnat[0].dst: write the host route 10.9.0.7/32 as the address 10.9.0.7`)
  t.equal(p([{ dst: '10.9.0.0/24', proto: 'tcp', port: 90, portTo: 80, to: 15100 }]), `${K}: field dnat[0].portTo: must be greater than port 90 (write a single port without portTo)`)
  t.equal(p([{ dst: '10.9.0.0/24', proto: 'tcp', port: 80, portTo: 90, to: 15100 }, { dst: '10.9.0.7', proto: 'tcp', port: 85, to: 15101 }]), `${K}: field dnat[1]: 10.9.0.7:85/tcp overlaps 10.9.0.0/24:80-90/tcp`)
  t.equal(p([{ dst: '10.9.0.7', proto: 'tcp', port: 85, to: 15100 }, { dst: '10.9.0.7', proto: 'tcp', port: 85, to: 15101 }]), `${K}: field dnat[1]: 10.9.0.7:85/tcp is mapped twice`)
  t.doesNotThrow(() => validateIntent({ v: 1, mode: 'proxy', uid: 2171, fence: [15100, 15101], dnat: [{ dst: '10.9.0.0/24', proto: 'tcp', port: 80, portTo: 90, to: 15100 }, { dst: '10.9.0.7', proto: 'tcp', port: 91, to: 15101 }] }), 'adjacent ranges are fine')
})

t.test('egress: validated, canonical, in every mode', async (t) => {
  const K = 'cni.openziti.io/interception'
  const p = (v: unknown) => message(() => parseIntent(JSON.stringify(v)))
  const proxy = { v: 1, mode: 'proxy', uid: 2171, dnat: [{ dst: '100.64.0.2', proto: 'tcp', port: 5432, to: 15100 }], fence: [15100] }
  const e = { dns: ['10.96.0.10'], cidrs: ['192.0.2.0/24', '10.0.0.0/8'], ports: ['8000-8100', '443'] }
  t.same(parseIntent(JSON.stringify({ ...proxy, egress: e })).egress, { dns: ['10.96.0.10'], cidrs: ['10.0.0.0/8', '192.0.2.0/24'], ports: ['443', '8000-8100'] }, 'sorted')
  t.equal(serializeIntent(parseIntent(JSON.stringify({ ...proxy, egress: {} })) as never), JSON.stringify({ ...proxy, egress: {} }), 'a lockdown with no exceptions keeps its (empty) egress object')
  const tun = { v: 1, mode: 'tun', uid: 2171, dev: 'ziti0', addr: '100.64.0.1/10', egress: { dns: ['10.96.0.10'] } }
  t.equal(serializeIntent(parseIntent(JSON.stringify(tun)) as never), JSON.stringify(tun), 'tun mode carries it too')
  const bad: Array<[object, string]> = [
    [{ ...proxy, egress: [] }, 'field egress: must be an object'],
    [{ ...proxy, egress: { allow: [] } }, 'field egress.allow: unknown field'],
    [{ ...proxy, egress: { dns: ['kube-dns'] } }, 'field egress.dns[0]:'],
    [{ ...proxy, egress: { dns: ['10.96.0.10', '10.96.0.10'] } }, 'field egress.dns: lists an address twice'],
    [{ ...proxy, egress: { cidrs: ['10.0.0.1/8'] } }, 'field egress.cidrs[0]:'],
    [{ ...proxy, egress: { ports: ['443', '400-500'] } }, 'field egress.ports: 400-500 and 443 overlap'],
  ]
  for (const [v, m] of bad) t.match(p(v), `${K}: ${m}`, m)
})
