// Pods headed for Fargate or Windows: recognised from what EKS and the scheduler read, skipped
// with a warning or refused (config unservedNodes), and refused when EKS's webhook marks an
// already injected pod for Fargate on reinvocation.
import t from 'tap'
import type { V1Pod } from '@kubernetes/client-node'
import { review } from '../src/admission.ts'
import { applyMutation } from '../src/inject/mutate.ts'
import { unservedPlatform } from '../src/inject/platform.ts'
import { ConfigError, validateConfig } from '../src/config.ts'
import { TEST_CONFIG } from './helpers.ts'

const pod = (spec: Partial<V1Pod['spec']> = {}, labels: Record<string, string> = {}): V1Pod => ({
  apiVersion: 'v1', kind: 'Pod',
  metadata: { name: 'p', namespace: 'apps', labels, annotations: { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } },
  spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }], ...spec } as V1Pod['spec'],
})
const required = (...terms: Array<Array<{ key: string; operator: string; values?: string[] }>>) => ({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: terms.map((matchExpressions) => ({ matchExpressions })) } } } })
const admit = (cfg: ReturnType<typeof validateConfig>, p: V1Pod) => review({ uid: 'u', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'apps', object: p }, cfg)

t.test('what sends a pod to Fargate or Windows, and what does not', async (t) => {
  const cases: Array<[string, V1Pod, string | undefined]> = [
    ['Fargate profile label (EKS webhook)', pod({}, { 'eks.amazonaws.com/fargate-profile': 'fp-default' }), 'fargate: label eks.amazonaws.com/fargate-profile=fp-default'],
    ['fargate-scheduler', pod({ schedulerName: 'fargate-scheduler' }), 'fargate: schedulerName fargate-scheduler'],
    ['nodeSelector compute-type', pod({ nodeSelector: { 'eks.amazonaws.com/compute-type': 'fargate' } }), 'fargate: nodeSelector eks.amazonaws.com/compute-type=fargate'],
    ['required affinity compute-type', pod(required([{ key: 'eks.amazonaws.com/compute-type', operator: 'In', values: ['fargate'] }])), 'fargate: required node affinity eks.amazonaws.com/compute-type In [fargate]'],
    ['spec.os.name', pod({ os: { name: 'windows' } }), 'windows: spec.os.name windows'],
    ['nodeSelector os', pod({ nodeSelector: { 'kubernetes.io/os': 'windows' } }), 'windows: nodeSelector kubernetes.io/os=windows'],
    ['required affinity os, every term', pod(required([{ key: 'kubernetes.io/os', operator: 'In', values: ['windows'] }], [{ key: 'kubernetes.io/os', operator: 'In', values: ['windows'] }, { key: 'x', operator: 'Exists' }])), 'windows: required node affinity kubernetes.io/os In [windows]'],
    ['a plain pod', pod(), undefined],
    ['linux selected', pod({ nodeSelector: { 'kubernetes.io/os': 'linux' }, os: { name: 'linux' } }), undefined],
    ['windows OR linux terms: may land on linux', pod(required([{ key: 'kubernetes.io/os', operator: 'In', values: ['windows'] }], [{ key: 'kubernetes.io/os', operator: 'In', values: ['linux'] }])), undefined],
    ['os In [windows, linux]', pod(required([{ key: 'kubernetes.io/os', operator: 'In', values: ['windows', 'linux'] }])), undefined],
    ['compute-type NotIn fargate', pod(required([{ key: 'eks.amazonaws.com/compute-type', operator: 'NotIn', values: ['fargate'] }])), undefined],
    ['preferred affinity only', pod({ affinity: { nodeAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 1, preference: { matchExpressions: [{ key: 'kubernetes.io/os', operator: 'In', values: ['windows'] }] } }] } } }), undefined],
    ['default scheduler', pod({ schedulerName: 'default-scheduler' }), undefined],
  ]
  for (const [name, p, want] of cases) {
    const u = unservedPlatform(p)
    t.equal(u ? `${u.platform}: ${u.evidence}` : undefined, want, name)
  }
})

t.test('skip (the default): admitted unchanged, with a warning that names why', async (t) => {
  const cfg = validateConfig(TEST_CONFIG, {})
  t.equal(cfg.unservedNodes, 'skip')
  const r = admit(cfg, pod({ schedulerName: 'fargate-scheduler' }))
  t.ok(r.response.allowed)
  t.equal(r.outcome, 'skipped')
  t.notOk(r.response.patch, 'no sidecar, no intent, no identity mount: a pod that claims Fargate to dodge interception gets no Ziti access either')
  t.same(r.response.warnings, ['ziti-cni: the pod is headed for Fargate (schedulerName fargate-scheduler); Fargate runs no DaemonSet, so no ziti-cni agent could program its interception; no sidecar was injected and the pod has no Ziti access (webhook config unservedNodes: skip)'])
  t.match(admit(cfg, pod({ os: { name: 'windows' } })).response.warnings?.[0], /a Windows node \(spec.os.name windows\); Windows nodes have no ziti-cni datapath/)
  t.equal(admit(cfg, pod()).outcome, 'injected', 'a Linux pod is still injected')
})

t.test('refuse: the pod is refused, naming the evidence and the way out', async (t) => {
  const cfg = validateConfig({ ...TEST_CONFIG, unservedNodes: 'refuse' }, {})
  const r = admit(cfg, pod({}, { 'eks.amazonaws.com/fargate-profile': 'fp' }))
  t.notOk(r.response.allowed)
  t.equal(r.response.status?.message, 'ziti-cni: the pod is headed for Fargate (label eks.amazonaws.com/fargate-profile=fp); Fargate runs no DaemonSet, so no ziti-cni agent could program its interception; refused (webhook config unservedNodes: refuse). Label the pod cni.openziti.io/inject=disabled to run it without Ziti')
  let problems: string[] = []
  try { validateConfig({ unservedNodes: 'warn' }, {}) } catch (e) { if (e instanceof ConfigError) problems = e.problems }
  t.same(problems, ['unservedNodes: must be skip or refuse'])
})

t.test('reinvocation: EKS\'s Fargate webhook ran after ours; the injected pod is refused, not left to hang', async (t) => {
  const cfg = validateConfig(TEST_CONFIG, {})
  const first = admit(cfg, pod())
  t.equal(first.outcome, 'injected')
  const injected = applyMutation(pod(), first.ops!)
  // What 0500-amazon-eks-fargate-mutation.amazonaws.com adds to a pod its profile selects.
  const fargate: V1Pod = { ...injected, metadata: { ...injected.metadata, labels: { ...injected.metadata?.labels, 'eks.amazonaws.com/fargate-profile': 'fp' } }, spec: { ...injected.spec!, schedulerName: 'fargate-scheduler' } }
  const again = admit(cfg, fargate)
  t.notOk(again.response.allowed, 'refused even with unservedNodes: skip')
  t.match(again.response.status?.message, /a Ziti sidecar was already injected before that was known/)
  t.equal(admit(cfg, injected).outcome, 'already-injected', 'a plain reinvocation is still a no-op')
})
