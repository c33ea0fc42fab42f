// The startup-taint component: the SHIPPED ValidatingAdmissionPolicy evaluated with a real CEL
// implementation (as the API server's admission would: matchConditions, then every
// validation over request/object/oldObject, variables bound), against what the agent's own
// patch produces and against what a compromised node's token might try; plus the rendered
// component (RBAC, binding, the agent's flag).
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { Environment } from '@marcbachmann/cel-js'
import { parseAllDocuments } from 'yaml'
import { STARTUP_TAINT, untaintPatch } from '../../cni-plugin/src/agent/taint.ts'
import { parseFlags } from '../../cni-plugin/src/agent/flags.ts'

type Doc = Record<string, any>
const ROOT = new URL('../', import.meta.url).pathname
const docs = parseAllDocuments(readFileSync(`${ROOT}components/startup-taint/policy.yaml`, 'utf8')).map((d) => d.toJS() as Doc)
const policy = docs.find((d) => d.kind === 'ValidatingAdmissionPolicy')!
const env = new Environment({ unlistedVariablesAreDyn: true, homogeneousAggregateLiterals: false })

const AGENT = 'system:serviceaccount:ziti-cni-system:ziti-cni-agent'
/** What admission decides for an UPDATE of a Node: 'not-matched', 'allowed' or the first message. */
function admit(user: { username: string; extra?: Record<string, string[]> }, oldObject: Doc, object: Doc): string {
  const request = { operation: 'UPDATE', userInfo: user, name: object.metadata.name }
  const ctx: Record<string, unknown> = { request, object, oldObject }
  for (const m of policy.spec.matchConditions) if (env.evaluate(m.expression, ctx) !== true) return 'not-matched'
  const variables: Record<string, unknown> = {}
  for (const v of policy.spec.variables) variables[v.name] = env.evaluate(v.expression, { ...ctx, variables })
  for (const v of policy.spec.validations) if (env.evaluate(v.expression, { ...ctx, variables }) !== true) return v.message
  return 'allowed'
}
const node = (name: string, taints: Array<{ key: string; effect: string; value?: string }>, extra: Doc = {}) => ({
  apiVersion: 'v1', kind: 'Node',
  metadata: { name, labels: { 'kubernetes.io/hostname': name, 'karpenter.sh/nodepool': 'default' }, annotations: { 'node.alpha.kubernetes.io/ttl': '0' } },
  spec: { providerID: `aws:///eu-west-1a/i-${name}`, ...(taints.length ? { taints } : {}), ...extra },
})
const OURS = { key: STARTUP_TAINT, effect: 'NoSchedule' }
const OTHER = { key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' }
const boundTo = (n: string) => ({ username: AGENT, extra: { 'authentication.kubernetes.io/node-name': [n], 'authentication.kubernetes.io/pod-name': ['ziti-cni-agent-x'] } })
/** RFC 6902 for the agent's two ops (test, then replace or remove of /spec/taints). */
function patched(before: Doc): Doc {
  const [test, change] = untaintPatch(before as never, STARTUP_TAINT)!
  if (test!.op !== 'test' || test!.path !== '/spec/taints' || JSON.stringify(test!.value) !== JSON.stringify(before.spec.taints)) throw new Error('the patch does not test what it read')
  const after = structuredClone(before)
  if (change!.op === 'remove') delete after.spec.taints
  else after.spec.taints = change!.value
  return after
}

t.test('the agent\'s own patch on its own node is admitted', async (t) => {
  const a = node('ip-10-0-1-5', [OURS, OTHER])
  t.equal(admit(boundTo('ip-10-0-1-5'), a, patched(a)), 'allowed', 'with another taint left in place')
  const b = node('ip-10-0-1-6', [OURS])
  t.notOk(patched(b).spec.taints, 'the last taint: the list is removed')
  t.equal(admit(boundTo('ip-10-0-1-6'), b, patched(b)), 'allowed')
  t.equal(untaintPatch(node('n', [OTHER]) as never, STARTUP_TAINT), undefined, 'no patch when the node does not carry it')
})

t.test('what a compromised node\'s token may not do', async (t) => {
  const mine = 'ip-10-0-1-5'
  const victim = node('ip-10-0-9-9', [OURS, OTHER])
  t.equal(admit(boundTo(mine), victim, patched(victim)), 'the ziti-cni agent may change only the Node its service account token is bound to', 'untaint another node')
  t.equal(admit({ username: AGENT }, victim, patched(victim)), 'the ziti-cni agent may change only the Node its service account token is bound to', 'a token without the node claim (a legacy Secret token)')
  t.equal(admit({ username: AGENT, extra: { 'authentication.kubernetes.io/node-name': [mine, 'ip-10-0-9-9'] } }, victim, patched(victim)), 'the ziti-cni agent may change only the Node its service account token is bound to', 'a forged two-node claim')
  const own = node(mine, [OURS, OTHER])
  const noOther = { ...own, spec: { ...own.spec, taints: [OURS] } }
  t.equal(admit(boundTo(mine), own, noOther), 'the ziti-cni agent may only remove the cni.openziti.io/agent-not-ready taint, and no other', 'remove another taint')
  t.equal(admit(boundTo(mine), own, { ...own, spec: { ...own.spec, taints: [] } }), 'the ziti-cni agent may only remove the cni.openziti.io/agent-not-ready taint, and no other', 'remove both')
  const plain = node(mine, [OTHER])
  t.equal(admit(boundTo(mine), plain, { ...plain, spec: { ...plain.spec, taints: [OTHER, OURS] } }), 'the ziti-cni agent may only remove the cni.openziti.io/agent-not-ready taint, and no other', 'add a taint (ours or any)')
  t.equal(admit(boundTo(mine), plain, { ...plain, spec: { ...plain.spec, taints: [{ ...OTHER, effect: 'PreferNoSchedule' }] } }), 'the ziti-cni agent may only remove the cni.openziti.io/agent-not-ready taint, and no other', 'weaken a taint')
  const relabel = patched(own)
  relabel.metadata.labels = { ...relabel.metadata.labels, 'node-role.kubernetes.io/control-plane': '' }
  t.equal(admit(boundTo(mine), own, relabel), 'the ziti-cni agent may not change a Node\'s labels, annotations, owners or finalizers', 'smuggle a label in with the removal')
  for (const [field, value] of [['unschedulable', true], ['providerID', 'aws:///x/i-evil'], ['podCIDR', '10.0.0.0/24']] as const) {
    const changed = patched(own)
    changed.spec[field] = value
    t.equal(admit(boundTo(mine), own, changed), 'the ziti-cni agent may not change a Node\'s spec beyond that taint', `smuggle spec.${field}`)
  }
  t.equal(admit({ username: 'system:node:ip-10-0-1-5', extra: {} }, own, relabel), 'not-matched', 'other users (the kubelet) are not this policy\'s business')
})

const kubectl = spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).status === 0
t.test('the rendered component', { skip: !kubectl && process.env.CI !== 'true' ? 'needs kubectl (kustomize)' : false }, async (t) => {
  const dir = mkdtempSync(`${ROOT}test/.render-`)
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(`${dir}/kustomization.yaml`, 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../overlays/production]\ncomponents: [../../components/startup-taint]\n')
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  const out = parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc)
  const find = (kind: string, name: string) => out.find((d) => d.kind === kind && d.metadata.name === name)
  t.same(find('ClusterRole', 'ziti-cni-agent-startup-taint')?.rules, [{ apiGroups: [''], resources: ['nodes'], verbs: ['get', 'patch'] }], 'nodes: get and patch, nothing else')
  const ds = find('DaemonSet', 'ziti-cni-agent')!
  const sa = ds.spec.template.spec.serviceAccountName
  const binding = find('ClusterRoleBinding', 'ziti-cni-agent-startup-taint')!
  t.same(binding.subjects, [{ kind: 'ServiceAccount', name: sa, namespace: ds.metadata.namespace }], 'bound to the agent\'s ServiceAccount')
  t.match(policy.spec.matchConditions[0].expression, `system:serviceaccount:${ds.metadata.namespace}:${sa}`, 'the policy names the same ServiceAccount')
  t.same(find('ValidatingAdmissionPolicyBinding', 'ziti-cni-agent-untaint-own-node')?.spec, { policyName: 'ziti-cni-agent-untaint-own-node', validationActions: ['Deny'] }, 'enforced (Deny), not audit')
  t.equal(find('ValidatingAdmissionPolicy', 'ziti-cni-agent-untaint-own-node')?.spec.failurePolicy, 'Fail')
  const args = ds.spec.template.spec.containers[0].args as string[]
  t.equal(parseFlags(args.slice(1), { NODE_NAME: 'n' }).startupTaint, STARTUP_TAINT, 'the agent is told the same taint the policy names')
  t.ok(ds.spec.template.spec.tolerations.some((x: Doc) => x.operator === 'Exists' && !x.key), 'the agent tolerates it (every taint)')
})
