// What a pod with `cni.openziti.io/identity: auto` gets at the controller, and how the identity
// is tied back to its pod. Pure: names, tags, role attributes. The identity controller
// (../identity-controller) is the only caller that talks to the controller.
import { ANNOTATION_ROLE_ATTRIBUTES, ValidationError } from '@ziti-cni/shared'

/** Tags on every identity the identity controller creates; it trusts only identities with them. */
export const TAG_MANAGED_BY = 'ziti-cni.openziti.io/managed-by'
export const TAG_CLUSTER = 'ziti-cni.openziti.io/cluster'
export const TAG_NAMESPACE = 'ziti-cni.openziti.io/namespace'
export const TAG_POD = 'ziti-cni.openziti.io/pod'
/** The pod's uid as the API server assigned it: the identity's one owner. */
export const TAG_POD_UID = 'ziti-cni.openziti.io/pod-uid'
export const TAG_SERVICE_ACCOUNT = 'ziti-cni.openziti.io/service-account'
export const MANAGED_BY = 'ziti-cni'

/**
 * Attributes the platform adds to every identity, from what the API server authenticated (the
 * pod's namespace and ServiceAccount, this cluster): `k8s.cluster:<c>`, `k8s.ns:<c>/<ns>`,
 * `k8s.sa:<c>/<ns>/<sa>`, the way a SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>) names a
 * workload. A pod may not request any attribute under this prefix.
 */
export const PLATFORM_PREFIX = 'k8s.'

export function platformAttributes(cluster: string, namespace: string, serviceAccount: string): string[] {
  return [`k8s.cluster:${cluster}`, `k8s.ns:${cluster}/${namespace}`, `k8s.sa:${cluster}/${namespace}/${serviceAccount}`]
}

/** Ziti role attributes are free strings; these rules keep them unambiguous in role filters. */
const ROLE_ATTRIBUTE = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,62}$/
export const MAX_ROLE_ATTRIBUTES = 32

/** Syntax only; what a pod may request is the attribute policy's decision (policy.ts). */
export function parseRoleAttributes(value: string | undefined): string[] {
  if (value === undefined) return []
  const key = ANNOTATION_ROLE_ATTRIBUTES
  const list = value.split(',').map((s) => s.trim())
  if (list.length === 1 && list[0] === '') throw new ValidationError(key, 'value is empty; remove the annotation for an identity without role attributes')
  if (list.length > MAX_ROLE_ATTRIBUTES) throw new ValidationError(key, `${list.length} attributes, more than the limit of ${MAX_ROLE_ATTRIBUTES}`)
  const seen = new Set<string>()
  list.forEach((a, i) => {
    const entry = { index: i + 1, text: a }
    if (a === '') throw new ValidationError(key, 'empty attribute (stray comma?)', entry)
    if (a.startsWith('#') || a.startsWith('@')) throw new ValidationError(key, `write the attribute without "${a[0]}": policies refer to it as #${a.slice(1)}, the identity carries it bare`, entry)
    if (!ROLE_ATTRIBUTE.test(a)) throw new ValidationError(key, 'must be 1-63 characters of letters, digits and . _ : / -, starting with a letter or digit', entry)
    if (a.startsWith(PLATFORM_PREFIX)) throw new ValidationError(key, `attributes starting with "${PLATFORM_PREFIX}" are the platform's (cluster, namespace, ServiceAccount) and cannot be requested`, entry)
    if (seen.has(a)) throw new ValidationError(key, 'listed twice', entry)
    seen.add(a)
  })
  return list
}

/** The pod as the API server stored it (uid assigned). */
export interface PodRef {
  namespace: string
  name: string
  uid: string
  serviceAccount: string
}

/**
 * `<prefix>-<namespace>-<pod>-<pod uid without dashes>`: an operator reading `ziti edge list
 * identities` sees the pod, and the full uid makes the name the identity's idempotency key
 * (Ziti names are unique: a second create for the same pod is refused, never duplicated).
 */
export function identityName(prefix: string, pod: Pick<PodRef, 'namespace' | 'name' | 'uid'>): string {
  const suffix = pod.uid.toLowerCase().replace(/[^0-9a-f]/g, '')
  const head = `${prefix}-${pod.namespace}-${pod.name}`.slice(0, 100 - suffix.length - 1)
  return `${head}-${suffix}`
}

export function identityTags(cluster: string, pod: PodRef): Record<string, string> {
  return {
    [TAG_MANAGED_BY]: MANAGED_BY,
    [TAG_CLUSTER]: cluster,
    [TAG_NAMESPACE]: pod.namespace,
    [TAG_POD]: pod.name,
    [TAG_POD_UID]: pod.uid,
    [TAG_SERVICE_ACCOUNT]: pod.serviceAccount,
  }
}
