// The pure parts of `identity: auto`: controller services -> proxy entries (every case proxy
// mode cannot express is a warning that names the service), identity names and role attributes.
import t from 'tap'
import { ValidationError } from '@ziti-cni/shared'
import { autoServices } from '../src/ziti/services.ts'
import { enrollmentSecretName, identityName, parseRoleAttributes } from '../src/ziti/identity.ts'
import { planReconcile } from '../src/ziti/reconcile.ts'
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
  t.same(r.entries.map((e) => `${e.service} ${e.host} ${e.isIp} ${e.port}/${e.proto}`), [
    'alpha a.ziti false 8000/tcp', 'alpha a.ziti false 8001/tcp', 'alpha a.ziti false 8002/tcp',
    'alpha 100.64.9.9 true 8000/tcp', 'alpha 100.64.9.9 true 8001/tcp', 'alpha 100.64.9.9 true 8002/tcp',
    'zeta z.ziti false 80/tcp',
  ])
  t.same([...r.fixedPorts], [['alpha', 18000]])
})

const cases: Array<[string, DialableService[], RegExp, number]> = [
  ['no intercept.v1', [svc('a')], /"a" is not intercepted: it has no intercept\.v1 config/, 0],
  ['wildcard', [svc('a', icpt(['*.corp.ziti', 'ok.ziti'], [[1, 1]]))], /"a": address \*\.corp\.ziti is not intercepted: a wildcard domain/, 1],
  ['a CIDR range', [svc('a', icpt(['10.0.0.0/24'], [[1, 1]]))], /maps single addresses, not ranges/, 0],
  ['IPv6', [svc('a', icpt(['fd00::1'], [[1, 1]]))], /listens on IPv4 only/, 0],
  ['not a name', [svc('a', icpt(['bad_name!'], [[1, 1]]))], /not a DNS name or an IPv4 address/, 0],
  ['too many ports', [svc('a', icpt(['a.ziti'], [[1, 17]]))], /cover more than 16 ports/, 0],
  ['port 0 and reversed ranges only', [svc('a', icpt(['a.ziti'], [[0, 0], [9, 3]]))], /no port range within 1-65535/, 0],
  ['tcp+udp without proxy.v1', [svc('a', icpt(['a.ziti'], [[53, 53]], ['tcp', 'udp']))], /"a": udp is not intercepted: without a proxy\.v1/, 1],
  ['proxy.v1 serves fewer protocols', [svc('a', icpt(['a.ziti'], [[53, 53]], ['tcp', 'udp']), { port: 15353, protocols: ['udp'] })], /"a": tcp is not intercepted: its proxy\.v1 listener serves only udp/, 1],
  ['proxy.v1 binding elsewhere', [svc('a', icpt(['a.ziti'], [[1, 1]]), { port: 15000, protocols: ['tcp'], binding: 'eth0' })], /binding "eth0" puts the listener where the pod's DNAT/, 0],
  ['proxy.v1 privileged port', [svc('a', icpt(['a.ziti'], [[1, 1]]), { port: 80, protocols: ['tcp'] })], /port 80 is privileged/, 0],
  ['proxy.v1 port shared', [svc('a', icpt(['a.ziti'], [[1, 1]]), { port: 15000, protocols: ['tcp'] }), svc('b', icpt(['b.ziti'], [[1, 1]]), { port: 15000, protocols: ['tcp'] })], /"b" is not intercepted: its proxy\.v1 port 15000 is also the listener of "a"/, 1],
  ['same address twice', [svc('a', icpt(['x.ziti'], [[1, 1]])), svc('b', icpt(['x.ziti'], [[1, 2]]))], /"b": x\.ziti:1\/tcp is not intercepted: it is already intercepted for "a"/, 2],
  ['over the pod limit', [svc('a', icpt(['a.ziti', 'b.ziti'], [[1, 10]])), svc('b', icpt(['c.ziti'], [[1, 1]]))], /"a" is not intercepted: the pod would have more than 5/, 1],
]
for (const [name, services, warning, entries] of cases) {
  t.test(name, async (t) => {
    const r = autoServices(services, name === 'over the pod limit' ? { ...LIMITS, maxEntries: 5 } : LIMITS)
    t.match(r.warnings.join('\n'), warning)
    t.equal(r.entries.length, entries)
    for (const w of r.warnings) t.match(w, /^ziti-cni: Ziti service "[^"]+"/, 'every warning names its service')
  })
}

t.test('identity names: findable, unique per admission, bounded', async (t) => {
  const uid = '3f2a9c1e-aaaa-bbbb-cccc-000000000000'
  t.equal(identityName('k8s', { namespace: 'apps', name: 'web-0', generateName: undefined, admissionUid: uid }), 'k8s-apps-web-0-3f2a9c1e')
  t.equal(identityName('k8s', { namespace: 'apps', name: undefined, generateName: 'web-7d9f-', admissionUid: uid }), 'k8s-apps-web-7d9f-3f2a9c1e')
  const long = identityName('k8s', { namespace: 'n'.repeat(63), name: 'p'.repeat(253), generateName: undefined, admissionUid: uid })
  t.ok(long.length <= 100 && long.endsWith('-3f2a9c1e'))
  t.equal(enrollmentSecretName(uid), `ziti-enroll-${uid}`)
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

t.test('reconcile plan: only this cluster\'s, only after the grace period, spent Secrets', async (t) => {
  const now = Date.parse('2026-11-28T10:00:00Z')
  const tags = (cluster: string, ns = 'apps') => ({ 'ziti-cni.openziti.io/managed-by': 'ziti-cni', 'ziti-cni.openziti.io/cluster': cluster, 'ziti-cni.openziti.io/namespace': ns, 'ziti-cni.openziti.io/enrollment-secret': 'ziti-enroll-x' })
  const old = '2026-11-28T09:00:00Z'
  const plan = planReconcile([
    { id: 'live', name: 'k8s-live', roleAttributes: [], tags: tags('c1'), createdAt: old, enrollment: {} },
    { id: 'live-unenrolled', name: 'k8s-lu', roleAttributes: [], tags: tags('c1'), createdAt: old, enrollment: { ott: { jwt: 'x' } } },
    { id: 'gone', name: 'k8s-gone', roleAttributes: [], tags: tags('c1'), createdAt: old },
    { id: 'young', name: 'k8s-young', roleAttributes: [], tags: tags('c1'), createdAt: '2026-11-28T09:59:30Z' },
    { id: 'other-cluster', name: 'k8s-other', roleAttributes: [], tags: tags('c2'), createdAt: old },
    { id: 'hand-made', name: 'k8s-hand', roleAttributes: [], tags: {}, createdAt: old },
  ], [{ namespace: 'apps', name: 'p1', identityId: 'live' }, { namespace: 'apps', name: 'p2', identityId: 'live-unenrolled' }], now, { cluster: 'c1', graceSeconds: 120 })
  t.same(plan.deleteIdentities.map((d) => d.id), ['gone'])
  t.same(plan.deleteSecrets.map((d) => d.identity), ['k8s-live'])
})
