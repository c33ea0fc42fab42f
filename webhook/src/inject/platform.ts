// Pods headed for nodes the node agent cannot serve. Fargate runs no DaemonSet, so no agent
// programs the pod and its validator fails closed forever (exit 126); Windows nodes have no
// nftables, netns or eBPF datapath at all. Pure: the pod spec in, a verdict out.
//
// Fargate: EKS's own mutating webhook (0500-amazon-eks-fargate-mutation.amazonaws.com) sets
// schedulerName `fargate-scheduler` and the `eks.amazonaws.com/fargate-profile` label on pods a
// Fargate profile selects. Configurations run in name order, so it usually runs before ours;
// if ours ran first, the API server reinvokes ours after its change (reinvocationPolicy:
// IfNeeded), and an already injected pod is then refused, since a sidecar cannot be taken out
// again cleanly and an injected Fargate pod would never start.
import type { V1NodeSelectorTerm, V1Pod } from '@kubernetes/client-node'

export const FARGATE_PROFILE_LABEL = 'eks.amazonaws.com/fargate-profile'
export const FARGATE_SCHEDULER = 'fargate-scheduler'
export const COMPUTE_TYPE_LABEL = 'eks.amazonaws.com/compute-type'
export const OS_LABEL = 'kubernetes.io/os'

/** What to do with such a pod (webhook config `unservedNodes`). */
export type UnservedPolicy = 'skip' | 'refuse'

export interface Unserved { platform: 'fargate' | 'windows'; evidence: string }

/** Every required node-affinity term demands `key In [value]` (terms are ORed). */
function everyTermRequires(terms: V1NodeSelectorTerm[] | undefined, key: string, value: string): boolean {
  if (!terms?.length) return false
  return terms.every((term) => (term.matchExpressions ?? []).some((e) => e.key === key && e.operator === 'In' && e.values?.length !== undefined && e.values.length > 0 && e.values.every((v) => v === value)))
}

/** Why the pod cannot be served by a node agent, or undefined when it can. */
export function unservedPlatform(pod: V1Pod): Unserved | undefined {
  const spec = pod.spec
  const labels = pod.metadata?.labels ?? {}
  const terms = spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms
  if (labels[FARGATE_PROFILE_LABEL] !== undefined) return { platform: 'fargate', evidence: `label ${FARGATE_PROFILE_LABEL}=${labels[FARGATE_PROFILE_LABEL]}` }
  if (spec?.schedulerName === FARGATE_SCHEDULER) return { platform: 'fargate', evidence: `schedulerName ${FARGATE_SCHEDULER}` }
  if (spec?.nodeSelector?.[COMPUTE_TYPE_LABEL] === 'fargate') return { platform: 'fargate', evidence: `nodeSelector ${COMPUTE_TYPE_LABEL}=fargate` }
  if (everyTermRequires(terms, COMPUTE_TYPE_LABEL, 'fargate')) return { platform: 'fargate', evidence: `required node affinity ${COMPUTE_TYPE_LABEL} In [fargate]` }
  if (spec?.os?.name === 'windows') return { platform: 'windows', evidence: 'spec.os.name windows' }
  if (spec?.nodeSelector?.[OS_LABEL] === 'windows') return { platform: 'windows', evidence: `nodeSelector ${OS_LABEL}=windows` }
  if (everyTermRequires(terms, OS_LABEL, 'windows')) return { platform: 'windows', evidence: `required node affinity ${OS_LABEL} In [windows]` }
  return undefined
}

const WHY = {
  fargate: 'Fargate runs no DaemonSet, so no ziti-cni agent could program its interception',
  windows: 'Windows nodes have no ziti-cni datapath (nftables, network namespaces, eBPF)',
}

/**
 * The admission verdict for an unserved pod: skipped with a warning (the pod runs without a
 * sidecar, so without a Ziti identity: it gains nothing), or refused. A pod we already injected
 * (reinvoked after another webhook sent it to Fargate) is always refused.
 */
export function unservedVerdict(u: Unserved, policy: UnservedPolicy, injected: boolean): { refuse: string } | { warning: string } {
  const what = `the pod is headed for ${u.platform === 'fargate' ? 'Fargate' : 'a Windows node'} (${u.evidence}); ${WHY[u.platform]}`
  if (injected) return { refuse: `${what}, but a Ziti sidecar was already injected before that was known (another mutating webhook changed the pod after ziti-cni); it would never start. Label the pod cni.openziti.io/inject=disabled, or keep it off ${u.platform === 'fargate' ? 'Fargate (its profile selectors)' : 'Windows'}` }
  if (policy === 'refuse') return { refuse: `${what}; refused (webhook config unservedNodes: refuse). Label the pod cni.openziti.io/inject=disabled to run it without Ziti` }
  return { warning: `ziti-cni: ${what}; no sidecar was injected and the pod has no Ziti access (webhook config unservedNodes: skip)` }
}
