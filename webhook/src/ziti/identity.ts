// What the webhook asks the controller for when a pod says `cni.openziti.io/identity: auto`,
// and how the identity is tied back to the pod. Pure: names, tags, role attributes.
import { ANNOTATION_ROLE_ATTRIBUTES, ValidationError } from '@ziti-cni/shared'

/** Tags on every identity the webhook creates; the reconciler trusts only identities with them. */
export const TAG_MANAGED_BY = 'ziti-cni.openziti.io/managed-by'
export const TAG_CLUSTER = 'ziti-cni.openziti.io/cluster'
export const TAG_NAMESPACE = 'ziti-cni.openziti.io/namespace'
/** The pod's name, or its generateName (the API server picks the name after admission). */
export const TAG_POD = 'ziti-cni.openziti.io/pod'
export const TAG_ADMISSION_UID = 'ziti-cni.openziti.io/admission-uid'
export const TAG_ENROLLMENT_SECRET = 'ziti-cni.openziti.io/enrollment-secret'
export const MANAGED_BY = 'ziti-cni'

/** Ziti role attributes are free strings; these rules keep them unambiguous in role filters. */
const ROLE_ATTRIBUTE = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,62}$/
export const MAX_ROLE_ATTRIBUTES = 32

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
    if (seen.has(a)) throw new ValidationError(key, 'listed twice', entry)
    seen.add(a)
  })
  return list
}

export interface PodRef {
  namespace: string
  /** metadata.name, or metadata.generateName when the API server has not named it yet. */
  name: string | undefined
  generateName: string | undefined
  admissionUid: string
}

/**
 * `<prefix>-<namespace>-<pod>-<8 of the admission uid>`: an operator reading `ziti edge list
 * identities` sees the pod; the suffix keeps replicas (same generateName) apart. Ziti names
 * are unique and up to 100+ characters; the pod part is cut so the whole stays under 100.
 */
export function identityName(prefix: string, pod: PodRef): string {
  const who = pod.name || (pod.generateName ? pod.generateName.replace(/-$/, '') : 'pod')
  const suffix = pod.admissionUid.replace(/-/g, '').slice(0, 8)
  const head = `${prefix}-${pod.namespace}-${who}`.slice(0, 100 - suffix.length - 1)
  return `${head}-${suffix}`
}

/** The per-pod Secret carrying the enrollment JWT (README "Security model"). */
export function enrollmentSecretName(admissionUid: string): string {
  return `ziti-enroll-${admissionUid.toLowerCase().replace(/[^a-z0-9-]/g, '')}`.slice(0, 253)
}

export function identityTags(cluster: string, pod: PodRef): Record<string, string> {
  return {
    [TAG_MANAGED_BY]: MANAGED_BY,
    [TAG_CLUSTER]: cluster,
    [TAG_NAMESPACE]: pod.namespace,
    [TAG_POD]: pod.name || pod.generateName || '',
    [TAG_ADMISSION_UID]: pod.admissionUid,
    [TAG_ENROLLMENT_SECRET]: enrollmentSecretName(pod.admissionUid),
  }
}
