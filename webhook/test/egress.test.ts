// The egress lockdown as the webhook writes it: the platform's floor (cluster default, per
// namespace) that a pod may tighten but never loosen, the cluster DNS and the exceptions
// merged into the intent, and every bad value named.
import t from 'tap'
import { parseIntent, serializeIntent } from '@ziti-cni/shared'
import { ConfigError, validateConfig } from '../src/config.ts'
import { egressFloor, planInterception } from '../src/inject/intent.ts'
import { InjectionCache, mutatePod } from '../src/inject/mutate.ts'
import { review } from '../src/admission.ts'
import { FIXTURES } from './fixtures.ts'

const base = { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }
const cfg = validateConfig({ egress: { clusterDns: ['10.96.0.10'], allowCidrs: ['10.0.5.0/24'], allowPorts: ['443'] } })
const message = (f: () => unknown) => { try { f(); return 'no error' } catch (e) { return (e as Error).message } }

t.test('egress: ziti-only writes the lockdown into the intent', async (t) => {
  t.equal(planInterception(base, [], cfg).intent.egress, undefined, 'default open: no lockdown')
  const plan = planInterception({ ...base, 'cni.openziti.io/egress': 'ziti-only', 'cni.openziti.io/egress-allow': '10.0.5.7, 192.0.2.0/24, 444, 8000-8100' }, [], cfg)
  t.same(plan.intent.egress, { dns: ['10.96.0.10'], cidrs: ['10.0.5.0/24', '192.0.2.0/24'], ports: ['443-444', '8000-8100'] }, 'config and annotation exceptions merged, canonical')
  t.same(parseIntent(serializeIntent(plan.intent)), plan.intent, 'the intent round-trips through the schema')
  t.match(serializeIntent(plan.intent), /"fence":\[15100\],"egress":\{"dns":\["10\.96\.0\.10"\],"cidrs":/)
  const byDefault = validateConfig({ egress: { default: 'ziti-only' } })
  t.same(planInterception(base, [], byDefault).intent.egress, { dns: ['10.96.0.10'], cidrs: [], ports: [] }, 'the cluster-wide default')
  const tproxy = planInterception({ 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/egress': 'ziti-only' }, [], validateConfig({ tproxy: { image: 'example.com/t:1' } }))
  t.ok(tproxy.intent.egress, 'tproxy mode too')
})

t.test('bad egress input is refused, naming the key', async (t) => {
  t.equal(message(() => planInterception({ ...base, 'cni.openziti.io/egress': 'closed' }, [], cfg)), 'cni.openziti.io/egress: unknown egress mode "closed" (expected ziti-only or open)')
  t.equal(message(() => planInterception({ ...base, 'cni.openziti.io/egress-allow': '443' }, [], cfg)), 'cni.openziti.io/egress-allow: only applies with cni.openziti.io/egress: ziti-only, but the pod\'s egress is open')
  t.match(message(() => planInterception({ ...base, 'cni.openziti.io/egress': 'ziti-only', 'cni.openziti.io/egress-allow': 'metadata.internal' }, [], cfg)), /^cni\.openziti\.io\/egress-allow: entry 1 "metadata\.internal": .*expected a CIDR, an address, a port or a range/)
  t.match(message(() => planInterception({ ...base, 'cni.openziti.io/egress': 'ziti-only', 'cni.openziti.io/egress-allow': '70000' }, [], cfg)), /^cni\.openziti\.io\/egress-allow: entry 1 "70000": /)
  const problems = (raw: unknown) => { try { validateConfig(raw); return [] } catch (e) { return (e as ConfigError).problems } }
  t.same(problems({ egress: { default: 'closed', clusterDns: ['kube-dns'], allowCidrs: ['10.0.0.1/8'], allowPorts: [443], extra: 1 } }), [
    'egress.extra: unknown key',
    'egress.default: must be open or ziti-only',
    'egress.clusterDns[0]: must be an IP address',
    'egress.allowCidrs[0]: host bits are set (did you mean 10.0.0.0/8?)',
    'egress.allowPorts[0]: must be a port or a range "from-to" (a string)',
  ])
})

t.test('the platform\'s floor: per namespace over the cluster default; a pod tightens it, never loosens it', async (t) => {
  const platform = validateConfig({ egress: {
    default: 'ziti-only', clusterDns: ['10.96.0.10'], allowCidrs: ['10.0.5.0/24'],
    namespaces: { payments: { default: 'ziti-only', allowCidrs: ['10.0.9.0/24'], allowPorts: ['8443'] }, legacy: { default: 'open' } },
  } })
  t.same(egressFloor(platform, 'payments'), { mode: 'ziti-only', key: 'egress.namespaces.payments', allowCidrs: platform.egress.allowCidrs.concat(platform.egress.namespaces.payments!.allowCidrs), allowPorts: ['8443'] })
  t.same(egressFloor(platform, 'web').key, 'egress.default', 'a namespace without an entry: the cluster default')
  t.same(planInterception(base, [], platform, undefined, 'payments').intent.egress, { dns: ['10.96.0.10'], cidrs: ['10.0.5.0/24', '10.0.9.0/24'], ports: ['8443'] }, 'payments: locked, with the cluster\'s and the namespace\'s exceptions')
  t.same(planInterception(base, [], platform, undefined, 'web').intent.egress, { dns: ['10.96.0.10'], cidrs: ['10.0.5.0/24'], ports: [] }, 'another namespace: the cluster default, without payments\' exceptions')
  t.equal(planInterception(base, [], platform, undefined, 'legacy').intent.egress, undefined, 'legacy: the platform left it open')
  // Loosening is refused, naming the key and the config entry that set the floor.
  t.equal(message(() => planInterception({ ...base, 'cni.openziti.io/egress': 'open' }, [], platform, undefined, 'payments')),
    'cni.openziti.io/egress: the platform locks the egress of namespace payments (webhook config egress.namespaces.payments: ziti-only); a pod may tighten its egress, never open it')
  t.equal(message(() => planInterception({ ...base, 'cni.openziti.io/egress': 'open' }, [], platform, undefined, 'web')),
    'cni.openziti.io/egress: the platform locks the egress of this cluster (webhook config egress.default: ziti-only); a pod may tighten its egress, never open it')
  t.equal(message(() => planInterception({ ...base, 'cni.openziti.io/egress-allow': '0.0.0.0/0' }, [], platform, undefined, 'payments')),
    'cni.openziti.io/egress-allow: the platform locks the egress of namespace payments (webhook config egress.namespaces.payments: ziti-only); a pod cannot add exceptions to it (the platform adds them: egress.namespaces.payments.allowCidrs/allowPorts)')
  t.equal(message(() => planInterception({ ...base, 'cni.openziti.io/egress': 'ziti-only', 'cni.openziti.io/egress-allow': '443' }, [], platform, undefined, 'web')),
    'cni.openziti.io/egress-allow: the platform locks the egress of this cluster (webhook config egress.default: ziti-only); a pod cannot add exceptions to it (the platform adds them: egress.allowCidrs/allowPorts)', 'restating ziti-only does not buy exceptions')
  // Tightening an open floor: the pod's own choice, with its own exceptions.
  t.same(planInterception({ ...base, 'cni.openziti.io/egress': 'ziti-only', 'cni.openziti.io/egress-allow': '192.0.2.7' }, [], platform, undefined, 'legacy').intent.egress,
    { dns: ['10.96.0.10'], cidrs: ['10.0.5.0/24', '192.0.2.7/32'], ports: [] }, 'legacy: a pod opts in, with its own exceptions')
  t.same(planInterception({ ...base, 'cni.openziti.io/egress': 'ziti-only' }, [], platform, undefined, 'payments').intent.egress, planInterception(base, [], platform, undefined, 'payments').intent.egress, 'restating the floor changes nothing')
})

t.test('admission takes the floor from the request\'s namespace, and the cache keeps namespaces apart', async (t) => {
  const platform = validateConfig({ egress: { namespaces: { payments: { default: 'ziti-only' } } } })
  const pod = FIXTURES.find((f) => f.name === 'bare-proxy')!.pod
  const orphan = { ...pod, metadata: { ...pod.metadata, namespace: undefined } }
  const cache = new InjectionCache()
  const intentIn = (namespace: string) => {
    const r = review({ uid: namespace, operation: 'CREATE', namespace, object: structuredClone(orphan) }, platform, cache)
    const op = r.ops?.find((o) => o.path === '/metadata/annotations/cni.openziti.io~1interception') as { value: string } | undefined
    return parseIntent(op!.value).egress
  }
  t.same(intentIn('payments'), { dns: ['10.96.0.10'], cidrs: [], ports: [] }, 'payments: locked (the pod itself names no namespace)')
  t.equal(intentIn('web'), undefined, 'web, same annotations, after payments filled the cache: open')
  t.same(intentIn('payments'), { dns: ['10.96.0.10'], cidrs: [], ports: [] }, 'payments again: from the cache, still locked')
  t.equal(intentIn('shop'), undefined, 'shop: shares web\'s entry (no namespace entry, same floor)')
  t.equal(cache.hits, 2, 'one entry per floor, not per namespace')
  // mutatePod without a request (the offline command): the pod's own namespace.
  const offline = mutatePod({ ...pod, metadata: { ...pod.metadata, namespace: 'payments' } }, platform).ops.find((o) => o.path.endsWith('interception')) as { value: string }
  t.ok(parseIntent(offline.value).egress, 'locked')
})

t.test('bad egress.namespaces input is refused, naming the key', async (t) => {
  const problems = (raw: unknown) => { try { validateConfig(raw); return [] } catch (e) { return (e as ConfigError).problems } }
  t.same(problems({ egress: { namespaces: ['payments'] } }), ['egress.namespaces: must be a mapping of namespace name to { default, allowCidrs, allowPorts }'])
  t.same(problems({ egress: { namespaces: { Payments_1: { default: 'ziti-only' }, a: 'ziti-only', b: {}, c: { default: 'closed', allowCidrs: ['10.0.0.1/8'], allowPorts: [443], other: 1 } } } }), [
    'egress.namespaces.Payments_1: not a namespace name',
    'egress.namespaces.a: must be a mapping { default, allowCidrs, allowPorts }',
    'egress.namespaces.b.default: required (open or ziti-only)',
    'egress.namespaces.c.other: unknown key',
    'egress.namespaces.c.default: must be open or ziti-only',
    'egress.namespaces.c.allowCidrs[0]: host bits are set (did you mean 10.0.0.0/8?)',
    'egress.namespaces.c.allowPorts[0]: must be a port or a range "from-to" (a string)',
  ])
})
