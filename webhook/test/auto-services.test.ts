// The pure parts of `identity: auto`: controller services -> proxy entries (every case proxy
// mode cannot express is a warning that names the service), identity names and role attributes.
import t from 'tap'
import { ValidationError } from '@ziti-cni/shared'
import { autoServices, entryTarget } from '../src/ziti/services.ts'
import { identityName, parseRoleAttributes } from '../src/ziti/identity.ts'
import { planReconcile } from '../src/identity-controller/plan.ts'
import type { DialableService } from '../src/ziti/controller.ts'

const LIMITS = { maxPortsPerService: 16, maxEntries: 256 }
const svc = (name: string, intercept?: object, proxy?: object): DialableService => ({ id: `id-${name}`, name, config: { ...(intercept ? { 'intercept.v1': intercept } : {}), ...(proxy ? { 'proxy.v1': proxy } : {}) } })
const icpt = (addresses: string[], ports: Array<[number, number]>, protocols = ['tcp']) => ({ protocols, addresses, portRanges: ports.map(([low, high]) => ({ low, high })) })

t.test('entries: hostnames, IPs, port ranges, proxy.v1 ports; sorted by service name', async (t) => {
  const r = autoServices([
    svc('zeta', icpt(['z.ziti'], [[80, 80]])),
    svc('alpha', icpt(['A.Ziti', '100.64.9.9', '100.64.9.9/32'], [[8000, 8002]]), { port: 18000, protocols: ['tcp'] }),
  ], LIMITS)
  t.same(r.warnings, [])
  t.same(r.entries.map((e) => `${e.service} ${e.host} ${e.isIp} ${entryTarget(e)}`), [
    'alpha a.ziti false a.ziti:8000-8002/tcp',
    'alpha 100.64.9.9 true 100.64.9.9:8000-8002/tcp',
    'zeta z.ziti false z.ziti:80/tcp',
  ], 'one entry per address and merged port range (an interval element of the DNAT map)')
  t.same([...r.fixedPorts], [['alpha', 18000]])
})

const cases: Array<[string, DialableService[], RegExp, number]> = [
  ['no intercept.v1', [svc('a')], /"a" is not intercepted: it has no intercept\.v1 config/, 0],
  ['wildcard', [svc('a', icpt(['*.corp.ziti', 'ok.ziti'], [[1, 1]]))], /"a": address \*\.corp\.ziti is not intercepted: a wildcard domain/, 1],
  ['IPv6', [svc('a', icpt(['fd00::1'], [[1, 1]]))], /listens on IPv4 only/, 0],
  ['not a name', [svc('a', icpt(['bad_name!'], [[1, 1]]))], /not a DNS name, an IPv4 address or an IPv4 CIDR/, 0],
  ['too many ports', [svc('a', icpt(['a.ziti'], [[1, 10], [20, 26]]))], /cover 17 ports, more than 16: proxy mode sends every port to one service connection/, 0],
  ['port 0 and reversed ranges only', [svc('a', icpt(['a.ziti'], [[0, 0], [9, 3]]))], /no port range within 1-65535/, 0],
  ['tcp+udp without proxy.v1', [svc('a', icpt(['a.ziti'], [[53, 53]], ['tcp', 'udp']))], /"a": udp is not intercepted: without a proxy\.v1/, 1],
  ['proxy.v1 serves fewer protocols', [svc('a', icpt(['a.ziti'], [[53, 53]], ['tcp', 'udp']), { port: 15353, protocols: ['udp'] })], /"a": tcp is not intercepted: its proxy\.v1 listener serves only udp/, 1],
  ['proxy.v1 binding elsewhere', [svc('a', icpt(['a.ziti'], [[1, 1]]), { port: 15000, protocols: ['tcp'], binding: 'eth0' })], /binding "eth0" puts the listener where the pod's DNAT/, 0],
  ['proxy.v1 privileged port', [svc('a', icpt(['a.ziti'], [[1, 1]]), { port: 80, protocols: ['tcp'] })], /port 80 is privileged/, 0],
  ['proxy.v1 port shared', [svc('a', icpt(['a.ziti'], [[1, 1]]), { port: 15000, protocols: ['tcp'] }), svc('b', icpt(['b.ziti'], [[1, 1]]), { port: 15000, protocols: ['tcp'] })], /"b" is not intercepted: its proxy\.v1 port 15000 is also the listener of "a"/, 1],
  ['same address twice', [svc('a', icpt(['x.ziti'], [[1, 1]])), svc('b', icpt(['x.ziti'], [[1, 2]]))], /"b": x\.ziti:1-2\/tcp is not intercepted: it overlaps x\.ziti:1\/tcp of "a"/, 1],
  ['an address inside another service\'s range', [svc('a', icpt(['10.9.0.0/24'], [[80, 90]])), svc('b', icpt(['10.9.0.7'], [[85, 85]]))], /"b": 10\.9\.0\.7:85\/tcp is not intercepted: it overlaps 10\.9\.0\.0\/24:80-90\/tcp of "a"/, 1],
  ['over the pod limit', [svc('a', icpt(['a.ziti', 'b.ziti', 'c.ziti'], [[1, 10]])), svc('b', icpt(['d.ziti'], [[1, 1]]))], /"a" is not intercepted: the pod would have more than 2/, 1],
]
for (const [name, services, warning, entries] of cases) {
  t.test(name, async (t) => {
    const r = autoServices(services, name === 'over the pod limit' ? { ...LIMITS, maxEntries: 2 } : LIMITS)
    t.match(r.warnings.join('\n'), warning)
    t.equal(r.entries.length, entries)
    for (const w of r.warnings) t.match(w, /^ziti-cni: Ziti service "[^"]+"/, 'every warning names its service')
  })
}

t.test('CIDRs: one interval entry, canonical, IPv4 only', async (t) => {
  const r = autoServices([svc('subnet', icpt(['10.9.0.0/24', '10.9.1.7/32', 'fd00::/64'], [[9000, 9003]]))], LIMITS)
  t.same(r.entries.map(entryTarget), ['10.9.0.0/24:9000-9003/tcp', '10.9.1.7:9000-9003/tcp'], 'a /32 is an address')
  t.match(r.warnings.join('\n'), /address fd00::\/64 is not intercepted: the proxy tunneler listens on IPv4 only/)
})

t.test('identity names: findable, one per pod uid, bounded', async (t) => {
  const uid = '3f2a9c1e-aaaa-bbbb-cccc-000000000000'
  t.equal(identityName('k8s', { namespace: 'apps', name: 'web-0', uid }), 'k8s-apps-web-0-3f2a9c1eaaaabbbbcccc000000000000')
  const long = identityName('k8s', { namespace: 'n'.repeat(63), name: 'p'.repeat(253), uid })
  t.ok(long.length <= 100 && long.endsWith('-3f2a9c1eaaaabbbbcccc000000000000'))
  t.not(identityName('k8s', { namespace: 'apps', name: 'web-0', uid: uid.replace('3f', '4f') }), identityName('k8s', { namespace: 'apps', name: 'web-0', uid }), 'a recreated pod (same name, new uid) gets another identity')
})

t.test('role attributes: parsed, or refused naming the key and the entry', async (t) => {
  t.same(parseRoleAttributes(' billing , eu,team:payments '), ['billing', 'eu', 'team:payments'])
  t.same(parseRoleAttributes(undefined), [])
  const bad: Array<[string, RegExp]> = [
    ['', /value is empty/], ['a,,b', /entry 2 "": empty attribute/], ['#a', /entry 1 "#a": write the attribute without "#"/],
    ['@id', /without "@"/], ['a b', /must be 1-63 characters/], ['a,a', /entry 2 "a": listed twice/],
    [Array.from({ length: 33 }, (_, i) => `a${i}`).join(','), /33 attributes, more than the limit of 32/],
  ]
  for (const [v, re] of bad) {
    const e = (() => { try { parseRoleAttributes(v); return undefined } catch (err) { return err } })()
    t.ok(e instanceof ValidationError, v)
    t.match((e as Error).message, /^cni\.openziti\.io\/role-attributes: /)
    t.match((e as Error).message, re)
  }
})

t.test('reconcile plan: only this cluster\'s, matched by namespace and pod uid, after the grace period', async (t) => {
  const now = Date.parse('2026-11-28T10:00:00Z')
  const tags = (cluster: string, ns: string, uid: string) => ({ 'ziti-cni.openziti.io/managed-by': 'ziti-cni', 'ziti-cni.openziti.io/cluster': cluster, 'ziti-cni.openziti.io/namespace': ns, 'ziti-cni.openziti.io/pod-uid': uid })
  const old = '2026-11-28T09:00:00Z'
  const plan = planReconcile([
    { id: 'live', name: 'k8s-live', roleAttributes: [], tags: tags('c1', 'apps', 'u1'), createdAt: old },
    { id: 'gone', name: 'k8s-gone', roleAttributes: [], tags: tags('c1', 'apps', 'u9'), createdAt: old },
    // Row 7: a pod of another namespace with the same uid tag cannot keep it alive.
    { id: 'other-namespace', name: 'k8s-on', roleAttributes: [], tags: tags('c1', 'billing', 'u1'), createdAt: old },
    { id: 'young', name: 'k8s-young', roleAttributes: [], tags: tags('c1', 'apps', 'u8'), createdAt: '2026-11-28T09:59:50Z' },
    { id: 'other-cluster', name: 'k8s-other', roleAttributes: [], tags: tags('c2', 'apps', 'u7'), createdAt: old },
    { id: 'hand-made', name: 'k8s-hand', roleAttributes: [], tags: {}, createdAt: old },
  ], [{ namespace: 'apps', uid: 'u1' }], now, 'c1', 30)
  t.same(plan.delete.map((d) => d.id), ['gone', 'other-namespace'])
})

t.test('attribute policy: deny by default, namespace and ServiceAccount scoped, prefixes, platform attributes', async (t) => {
  const { allowedBy, checkAttributes } = await import('../src/ziti/policy.ts')
  const { platformAttributes } = await import('../src/ziti/identity.ts')
  const policy = [{ namespace: 'apps', serviceAccount: 'billing', attributes: ['billing'] }, { namespace: '*', prefixes: ['team-a.'] }, { namespace: 'web', serviceAccount: '*', attributes: ['web'] }]
  t.equal(allowedBy([], 'apps', 'billing', 'billing'), false, 'an empty policy allows nothing')
  t.equal(allowedBy(policy, 'apps', 'billing', 'billing'), true)
  t.equal(allowedBy(policy, 'apps', 'default', 'billing'), false, 'another ServiceAccount of the namespace')
  t.equal(allowedBy(policy, 'other', 'billing', 'billing'), false, 'the same ServiceAccount name in another namespace')
  t.equal(allowedBy(policy, 'any', 'x', 'team-a.db'), true, 'a prefix')
  t.equal(allowedBy(policy, 'any', 'x', 'team-b.db'), false)
  t.equal(allowedBy(policy, 'web', 'frontend', 'web'), true, '"*" ServiceAccount')
  t.throws(() => checkAttributes(policy, 'apps', 'billing', ['billing', 'root']), /cni\.openziti\.io\/role-attributes: entry 2 "root": attribute "root" is not allowed for ServiceAccount apps\/billing by the platform's attribute policy \(webhook config controller\.attributePolicy/)
  t.same(platformAttributes('c1', 'apps', 'billing'), ['k8s.cluster:c1', 'k8s.ns:c1/apps', 'k8s.sa:c1/apps/billing'])
  t.throws(() => parseRoleAttributes('k8s.ns:c1/kube-system'), /entry 1 "k8s\.ns:c1\/kube-system": attributes starting with "k8s\." are the platform's/)
})
