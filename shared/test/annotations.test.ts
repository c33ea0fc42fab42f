import t from 'tap'
import { validationMessage } from './validation-message.ts'
import {
  ANNOTATION_EXCLUDE_PORTS,
  formatCidr,
  parseBool,
  parseExcludeCidrs,
  parseExcludePorts,
  parseInterceptCidrs,
  parseMode,
  parseSecretRef,
  parseServices,
} from '../src/index.ts'

const message = validationMessage

t.test('services: the documented form', async (t) => {
  t.same(parseServices('pg.ziti:5432=postgres, api.ziti:443=billing-api,syslog.ziti:514/udp=logs'), [
    { host: 'pg.ziti', port: 5432, proto: 'tcp', service: 'postgres' },
    { host: 'api.ziti', port: 443, proto: 'tcp', service: 'billing-api' },
    { host: 'syslog.ziti', port: 514, proto: 'udp', service: 'logs' },
  ])
  t.same(parseServices('a:1/tcp=x')[0]?.proto, 'tcp')
  t.same(parseServices('a:53/udp=x, a:53=y').map((s) => s.proto), ['udp', 'tcp'], 'same host:port on two protocols is fine')
})

t.test('services: errors name key, entry and problem', async (t) => {
  const cases: Array<[string, string]> = [
    ['pg.ziti:5432=postgres, pg.ziti:99999=pg', 'cni.openziti.io/services: entry 2 "pg.ziti:99999=pg": port 99999 is out of range 1-65535'],
    ['pg.ziti:5432', 'cni.openziti.io/services: entry 1 "pg.ziti:5432": missing "=<ziti service>" (expected host:port[/udp]=service)'],
    ['pg.ziti=postgres', 'cni.openziti.io/services: entry 1 "pg.ziti=postgres": missing ":<port>" (expected host:port[/udp]=service)'],
    ['PG.ziti:1=x', 'cni.openziti.io/services: entry 1 "PG.ziti:1=x": hostname "PG.ziti" is not a lowercase DNS name'],
    ['pg.ziti:1/sctp=x', 'cni.openziti.io/services: entry 1 "pg.ziti:1/sctp=x": protocol "sctp" is invalid (expected tcp or udp)'],
    ['pg.ziti:0=x', 'cni.openziti.io/services: entry 1 "pg.ziti:0=x": port 0 is out of range 1-65535'],
    ['pg.ziti:abc=x', 'cni.openziti.io/services: entry 1 "pg.ziti:abc=x": port "abc" is not a number'],
    ['pg.ziti:1=x;rm -rf', 'cni.openziti.io/services: entry 1 "pg.ziti:1=x;rm -rf": Ziti service name "x;rm -rf" is invalid (letters, digits, ".", "_", "-"; at most 128)'],
    ['a:1=x,,b:2=y', 'cni.openziti.io/services: entry 2 "": empty entry (stray comma?)'],
    ['a:1=x, a:1/tcp=y', 'cni.openziti.io/services: entry 2 "a:1/tcp=y": a:1/tcp is already listed in entry 1'],
    ['', 'cni.openziti.io/services: value is empty'],
  ]
  for (const [input, expected] of cases) t.equal(message(() => parseServices(input)), expected, JSON.stringify(input))
  t.match(message(() => parseServices(Array.from({ length: 257 }, (_, i) => `h${i}:1=s`).join(','))), /257 entries, more than the limit of 256/)
})

t.test('CIDR lists', async (t) => {
  t.same(parseInterceptCidrs('100.64.0.0/10, 10.0.0.0/8,10.0.0.0/8, fd00::/8, 192.0.2.1').map(formatCidr),
    ['10.0.0.0/8', '100.64.0.0/10', '192.0.2.1/32', 'fd00::/8'], 'sorted, v4 first, duplicates merged, bare address is a host')
  t.equal(message(() => parseInterceptCidrs('10.0.0.1/8')), 'cni.openziti.io/intercept-cidrs: entry 1 "10.0.0.1/8": host bits are set (did you mean 10.0.0.0/8?)')
  t.equal(message(() => parseExcludeCidrs('10.0.0.0/8, 10.0.0.0/33')), 'cni.openziti.io/exclude-cidrs: entry 2 "10.0.0.0/33": prefix length "33" is invalid for IPv4 (0-32)')
  t.equal(message(() => parseInterceptCidrs('010.0.0.0/8')), 'cni.openziti.io/intercept-cidrs: entry 1 "010.0.0.0/8": "010.0.0.0" is not an IPv4 address')
  t.equal(message(() => parseInterceptCidrs('fe80::1%eth0/64')), 'cni.openziti.io/intercept-cidrs: entry 1 "fe80::1%eth0/64": "fe80::1%eth0" is not an IPv6 address')
  t.same(parseInterceptCidrs('2001:DB8:0:0:0:0:0:0/32').map(formatCidr), ['2001:db8::/32'], 'IPv6 is canonicalised (RFC 5952)')
  t.same(parseInterceptCidrs('::ffff:10.0.0.0/104').map(formatCidr), ['::ffff:a00:0/104'], 'embedded IPv4 accepted')
})

t.test('port lists', async (t) => {
  t.same(parseExcludePorts('22, 8000-8100'), [{ from: 22, to: 22 }, { from: 8000, to: 8100 }])
  t.equal(message(() => parseExcludePorts('22, 9000-8000')), `${ANNOTATION_EXCLUDE_PORTS}: entry 2 "9000-8000": range 9000-8000 is reversed`)
  t.equal(message(() => parseExcludePorts('1-2-3')), `${ANNOTATION_EXCLUDE_PORTS}: entry 1 "1-2-3": expected a port or a range "from-to"`)
  t.equal(message(() => parseExcludePorts('65536')), `${ANNOTATION_EXCLUDE_PORTS}: entry 1 "65536": port 65536 is out of range 1-65535`)
})

t.test('mode, booleans, secret references', async (t) => {
  t.equal(parseMode(' tproxy '), 'tproxy')
  t.equal(parseMode('tun'), 'tun')
  t.equal(message(() => parseMode('tap')), 'cni.openziti.io/mode: unknown mode "tap" (expected proxy, tproxy or tun)')
  t.equal(parseBool('k', 'true'), true)
  t.equal(message(() => parseBool('k', 'yes')), 'k: "yes" is not a boolean (expected true or false)')
  t.same(parseSecretRef('cni.openziti.io/identity-secret', 'billing-identity/identity.json'), { name: 'billing-identity', key: 'identity.json' })
  t.same(parseSecretRef('cni.openziti.io/identity-secret', 'billing-identity'), { name: 'billing-identity', key: undefined })
  t.equal(message(() => parseSecretRef('cni.openziti.io/identity-secret', 'Bad_Name')), 'cni.openziti.io/identity-secret: secret name "Bad_Name" is not a valid Kubernetes name')
  t.equal(message(() => parseSecretRef('cni.openziti.io/enrollment-secret', 'ok/a b')), 'cni.openziti.io/enrollment-secret: secret key "a b" is invalid (letters, digits, "-", "_", ".")')
  t.equal(message(() => parseSecretRef('cni.openziti.io/identity-secret', '/k')), 'cni.openziti.io/identity-secret: secret name is empty')
})
