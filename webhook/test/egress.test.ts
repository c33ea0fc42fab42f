// The egress lockdown as the webhook writes it: annotation over config default, the cluster
// DNS and the exceptions merged into the intent, and every bad value named.
import t from 'tap'
import { parseIntent, serializeIntent } from '@ziti-cni/shared'
import { ConfigError, validateConfig } from '../src/config.ts'
import { planInterception } from '../src/inject/intent.ts'

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
  t.equal(planInterception({ ...base, 'cni.openziti.io/egress': 'open' }, [], byDefault).intent.egress, undefined, 'the annotation wins over the default')
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
