// The identity controller's decisions, pure: which pods get an identity and with what, and
// which identities belong to pods that are gone. Everything here reads only what the API
// server stored (uid, namespace, ServiceAccount), never what an AdmissionReview claimed.
import { ANNOTATION_IDENTITY, ANNOTATION_ROLE_ATTRIBUTES, ANNOTATION_STATUS, AUTO, LABEL_AUTO_IDENTITY, ValidationError } from '@ziti-cni/shared'
import type { V1Pod } from '@kubernetes/client-node'
import type { ControllerConfig } from '../config.ts'
import type { IdentityDetail, IdentitySpec } from '../ziti/controller.ts'
import { identityName, identityTags, MANAGED_BY, parseRoleAttributes, platformAttributes, TAG_CLUSTER, TAG_MANAGED_BY, TAG_NAMESPACE, TAG_POD_UID, type PodRef } from '../ziti/identity.ts'
import { checkAttributes } from '../ziti/policy.ts'

export type Wanted = { ok: true; pod: PodRef; spec: IdentitySpec } | { ok: false; reason: string }

/** The pod's identity, or why it gets none. The policy is checked again here: a pod may have
 *  reached the API server without this webhook (another mutating path, a forged label). */
export function wantedIdentity(pod: V1Pod, cfg: Pick<ControllerConfig, 'identityPrefix' | 'attributePolicy'>, cluster: string): Wanted {
  const m = pod.metadata
  const ann = m?.annotations ?? {}
  if (!m?.uid || !m.name || !m.namespace) return { ok: false, reason: 'the pod has no uid, name or namespace yet' }
  if (m.deletionTimestamp) return { ok: false, reason: 'the pod is being deleted' }
  if (ann[ANNOTATION_IDENTITY] !== AUTO) return { ok: false, reason: `the pod does not ask for ${ANNOTATION_IDENTITY}: auto` }
  if (m.labels?.[LABEL_AUTO_IDENTITY] !== 'true' || ann[ANNOTATION_STATUS] === undefined) return { ok: false, reason: 'the pod was not injected by ziti-cni' }
  const serviceAccount = pod.spec?.serviceAccountName || 'default'
  const ref: PodRef = { namespace: m.namespace, name: m.name, uid: m.uid, serviceAccount }
  let requested: string[]
  try {
    requested = parseRoleAttributes(ann[ANNOTATION_ROLE_ATTRIBUTES])
    checkAttributes(cfg.attributePolicy, ref.namespace, serviceAccount, requested)
  } catch (e) {
    if (e instanceof ValidationError) return { ok: false, reason: e.message }
    throw e
  }
  return {
    ok: true, pod: ref,
    spec: { name: identityName(cfg.identityPrefix, ref), roleAttributes: [...requested, ...platformAttributes(cluster, ref.namespace, serviceAccount)], tags: identityTags(cluster, ref) },
  }
}

/** A live pod as the reconcile sees it: the API server's namespace and uid. */
export interface LivePod { namespace: string; uid: string }

export interface ReconcilePlan {
  delete: Array<{ id: string; name: string; namespace: string; podUid: string }>
}

/**
 * Identities of this cluster whose pod (same namespace, same uid) is not among the live pods.
 * Young identities are kept: their pod may be newer than the list.
 */
export function planReconcile(identities: IdentityDetail[], pods: LivePod[], now: number, cluster: string, graceSeconds: number): ReconcilePlan {
  const live = new Set(pods.map((p) => `${p.namespace}/${p.uid}`))
  const plan: ReconcilePlan = { delete: [] }
  for (const i of identities) {
    const tags = i.tags ?? {}
    if (tags[TAG_MANAGED_BY] !== MANAGED_BY || tags[TAG_CLUSTER] !== cluster) continue
    const namespace = String(tags[TAG_NAMESPACE] ?? '')
    const podUid = String(tags[TAG_POD_UID] ?? '')
    if (live.has(`${namespace}/${podUid}`)) continue
    if (!(now - Date.parse(i.createdAt) > graceSeconds * 1000)) continue
    plan.delete.push({ id: i.id, name: i.name, namespace, podUid })
  }
  return plan
}
