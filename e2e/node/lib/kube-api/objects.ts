// Objects, Status errors, and the defaulting and validation the API server applies to what
// this project writes. Pure: no I/O.
import { NODE_RESOURCE, SERVICE_RESOURCE } from '../kube-services.ts'
export type Obj = {
  apiVersion?: string
  kind?: string
  metadata: {
    name: string; namespace?: string; uid?: string; resourceVersion?: string; labels?: Record<string, string>; annotations?: Record<string, string>
    generateName?: string; creationTimestamp?: string; deletionTimestamp?: string; deletionGracePeriodSeconds?: number; finalizers?: string[]; [k: string]: unknown
  }
  [k: string]: unknown
}

export interface Resource {
  /** URL plural, e.g. pods. */
  plural: string
  kind: string
  apiVersion: string
  namespaced: boolean
  /** Path prefix of the group version: /api/v1 or /apis/<group>/<version>. */
  base: string
  /** Subresources served (pods/status). */
  subresources?: string[]
}

export const RESOURCES: Resource[] = [
  { plural: 'pods', kind: 'Pod', apiVersion: 'v1', namespaced: true, base: '/api/v1', subresources: ['status'] },
  { plural: 'namespaces', kind: 'Namespace', apiVersion: 'v1', namespaced: false, base: '/api/v1' },
  { plural: 'secrets', kind: 'Secret', apiVersion: 'v1', namespaced: true, base: '/api/v1' },
  { plural: 'serviceaccounts', kind: 'ServiceAccount', apiVersion: 'v1', namespaced: true, base: '/api/v1' },
  SERVICE_RESOURCE, NODE_RESOURCE,
  { plural: 'daemonsets', kind: 'DaemonSet', apiVersion: 'apps/v1', namespaced: true, base: '/apis/apps/v1' },
  { plural: 'leases', kind: 'Lease', apiVersion: 'coordination.k8s.io/v1', namespaced: true, base: '/apis/coordination.k8s.io/v1' },
  { plural: 'mutatingwebhookconfigurations', kind: 'MutatingWebhookConfiguration', apiVersion: 'admissionregistration.k8s.io/v1', namespaced: false, base: '/apis/admissionregistration.k8s.io/v1' },
]

/** A metav1.Status failure, as apimachinery pkg/api/errors builds them. */
export class StatusError extends Error {
  readonly code: number
  readonly reason: string
  readonly details: object | undefined
  readonly headers: Record<string, string>
  constructor(code: number, reason: string, message: string, details?: object, headers: Record<string, string> = {}) {
    super(message)
    this.code = code
    this.reason = reason
    this.details = details
    this.headers = headers
  }

  status(): object {
    return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: this.message, reason: this.reason, ...(this.details ? { details: this.details } : {}), code: this.code }
  }
}

export interface FieldError { type: string; field: string; detail: string }

/** field.ErrorType -> metav1.CauseType (apimachinery pkg/util/validation/field/errors.go ErrorType constants). */
const CAUSE_TYPES: Record<string, string> = {
  'Not found': 'FieldValueNotFound', 'Required value': 'FieldValueRequired', 'Duplicate value': 'FieldValueDuplicate', 'Invalid value': 'FieldValueInvalid',
  'Unsupported value': 'FieldValueNotSupported', 'Forbidden': 'FieldValueForbidden', 'Too long': 'FieldValueTooLong', 'Too many': 'FieldValueTooMany',
}

/**
 * NewInvalid (apimachinery pkg/api/errors/errors.go:284-311): 422, reason Invalid,
 * `<Kind> "<name>" is invalid: <errors>`; one error prints bare, several as a [list].
 */
export function invalid(kind: string, group: string, name: string, errs: FieldError[]): StatusError {
  const text = errs.map((e) => `${e.field}: ${e.type}${e.detail ? `: ${e.detail}` : ''}`)
  const agg = text.length === 1 ? text[0] : `[${text.join(', ')}]`
  const qualified = group ? `${kind}.${group}` : kind
  return new StatusError(422, 'Invalid', `${qualified} "${name}" is invalid: ${agg}`, {
    name, ...(group ? { group } : {}), kind,
    causes: errs.map((e) => ({ reason: CAUSE_TYPES[e.type] ?? 'FieldValueInvalid', message: `${e.type}${e.detail ? `: ${e.detail}` : ''}`, field: e.field })),
  })
}

/** apimachinery pkg/api/validation/objectmeta.go:39 TotalAnnotationSizeLimitB. */
export const TOTAL_ANNOTATION_SIZE_LIMIT_B = 256 * 1024

/**
 * ValidateAnnotationsSize (objectmeta.go:61-70): the sum of len(key)+len(value) in bytes over
 * all annotations. Over the limit: field.TooLong on metadata.annotations (objectmeta.go:56),
 * whose detail is "may not be more than 262144 bytes" since 1.32
 * (apimachinery pkg/util/validation/field/errors.go:347-360; up to 1.31 it read
 * "must have at most 262144 bytes").
 */
export function annotationErrors(annotations: Record<string, string> | undefined): FieldError[] {
  let total = 0
  for (const [k, v] of Object.entries(annotations ?? {})) total += Buffer.byteLength(k) + Buffer.byteLength(v)
  return total > TOTAL_ANNOTATION_SIZE_LIMIT_B ? [{ type: 'Too long', field: 'metadata.annotations', detail: `may not be more than ${TOTAL_ANNOTATION_SIZE_LIMIT_B} bytes` }] : []
}

/** RFC3339Micro (apimachinery pkg/apis/meta/v1/micro_time.go:26): exactly six fractional digits. */
const RFC3339_MICRO = '2006-01-02T15:04:05.000000Z07:00'

/**
 * MicroTime.UnmarshalJSON (micro_time.go:113-131) runs time.Parse(RFC3339Micro, s). The
 * decode error becomes 400 BadRequest `Lease in version "v1" cannot be handled as a Lease:
 * <error>` (apiserver pkg/endpoints/handlers/rest.go:252). The error text is Go's
 * time.ParseError: `parsing time "<v>" as "<layout>": cannot parse "<rest>" as "<elem>"`.
 */
export function microTimeError(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'string') return `json: cannot unmarshal ${typeof value} into Go value of type string`
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(.*)$/.exec(value)
  if (!m) return `parsing time ${JSON.stringify(value)} as ${JSON.stringify(RFC3339_MICRO)}: cannot parse ${JSON.stringify(value)} as "2006"`
  const rest = m[7]!
  const frac = /^\.\d{6}/.exec(rest)
  if (!frac) return `parsing time ${JSON.stringify(value)} as ${JSON.stringify(RFC3339_MICRO)}: cannot parse ${JSON.stringify(rest)} as ".000000"`
  const tz = rest.slice(7)
  if (!/^(Z|[+-]\d{2}:\d{2})$/.test(tz)) return `parsing time ${JSON.stringify(value)} as ${JSON.stringify(RFC3339_MICRO)}: cannot parse ${JSON.stringify(tz)} as "Z07:00"`
  return undefined
}

/** Decode-time checks of the fields we write: a Lease's MicroTimes (coordination/v1 LeaseSpec). */
export function decodeError(r: Resource, obj: Obj): StatusError | undefined {
  if (r.kind !== 'Lease') return undefined
  const spec = (obj.spec ?? {}) as Record<string, unknown>
  for (const f of ['acquireTime', 'renewTime']) {
    const err = microTimeError(spec[f])
    if (err) return new StatusError(400, 'BadRequest', `Lease in version "v1" cannot be handled as a Lease: ${err}`)
  }
  return undefined
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/

type Container = { name?: string; image?: string; imagePullPolicy?: string; terminationMessagePath?: string; terminationMessagePolicy?: string; restartPolicy?: string; [k: string]: unknown }
type PodSpec = { containers?: Container[]; initContainers?: Container[]; [k: string]: unknown }

/**
 * Pod defaulting as the API server does it at decode, before admission, and again after each
 * mutation (kubernetes pkg/apis/core/v1/defaults.go SetDefaults_Pod, SetDefaults_PodSpec,
 * SetDefaults_Container): restartPolicy Always, dnsPolicy ClusterFirst, schedulerName
 * default-scheduler, terminationGracePeriodSeconds 30, securityContext {}, enableServiceLinks
 * true, per container imagePullPolicy (Always for :latest or no tag, else IfNotPresent) and
 * the termination message fields. Status phase Pending is set by PrepareForCreate
 * (pkg/registry/core/pod/strategy.go).
 */
export function defaultPod(pod: Obj): Obj {
  const spec = (pod.spec ?? {}) as PodSpec
  const container = (c: Container): Container => {
    const image = c.image ?? ''
    const tagged = /:[^/]+$/.test(image.split('@')[0]!) && !image.endsWith(':latest')
    return {
      terminationMessagePath: '/dev/termination-log', terminationMessagePolicy: 'File',
      imagePullPolicy: image.includes('@') || tagged ? 'IfNotPresent' : 'Always', ...c,
    }
  }
  return {
    ...pod,
    spec: {
      restartPolicy: 'Always', dnsPolicy: 'ClusterFirst', schedulerName: 'default-scheduler', terminationGracePeriodSeconds: 30,
      securityContext: {}, enableServiceLinks: true, ...spec,
      containers: (spec.containers ?? []).map(container),
      ...(spec.initContainers ? { initContainers: spec.initContainers.map(container) } : {}),
    },
  }
}

/**
 * Pod validation for what our suites create (kubernetes pkg/apis/core/validation
 * validation.go ValidatePodCreate, ValidateObjectMeta, validateContainers): name a DNS-1123
 * subdomain, at least one container, container names DNS-1123 labels and unique, an image,
 * and the annotation total.
 */
export function validatePod(pod: Obj): FieldError[] {
  const errs: FieldError[] = [...metaErrors(pod)]
  const spec = (pod.spec ?? {}) as PodSpec
  if (!spec.containers?.length) errs.push({ type: 'Required value', field: 'spec.containers', detail: '' })
  const seen = new Set<string>()
  for (const [list, field] of [[spec.initContainers ?? [], 'spec.initContainers'], [spec.containers ?? [], 'spec.containers']] as const) {
    list.forEach((c, i) => {
      if (!c.name) errs.push({ type: 'Required value', field: `${field}[${i}].name`, detail: '' })
      else if (!DNS1123_LABEL.test(c.name) || c.name.length > 63) errs.push({ type: 'Invalid value', field: `${field}[${i}].name`, detail: `${JSON.stringify(c.name)}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')` })
      else if (seen.has(c.name)) errs.push({ type: 'Duplicate value', field: `${field}[${i}].name`, detail: JSON.stringify(c.name) })
      seen.add(c.name ?? '')
      if (!c.image) errs.push({ type: 'Required value', field: `${field}[${i}].image`, detail: '' })
    })
  }
  return errs
}

/** ValidateObjectMeta's name rule and the annotation total, for every kind. */
export function metaErrors(obj: Obj): FieldError[] {
  const errs: FieldError[] = []
  const name = obj.metadata.name
  if (name && (!DNS1123_SUBDOMAIN.test(name) || name.length > 253)) {
    errs.push({ type: 'Invalid value', field: 'metadata.name', detail: `${JSON.stringify(name)}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')` })
  }
  errs.push(...annotationErrors(obj.metadata.annotations))
  return errs
}

/**
 * Pod updates (ValidatePodUpdate): the spec is immutable except for a few fields; the status
 * is the kubelet's and changes only through pods/status (strategy.go PrepareForUpdate copies
 * the old status over the new one; podStatusStrategy copies the old spec and metadata).
 */
const MUTABLE_SPEC = ['containers', 'initContainers', 'activeDeadlineSeconds', 'tolerations', 'terminationGracePeriodSeconds', 'schedulingGates']
export function podUpdateErrors(oldPod: Obj, newPod: Obj): FieldError[] {
  const strip = (s: unknown) => {
    const copy = { ...(s as Record<string, unknown>) }
    for (const k of MUTABLE_SPEC) delete copy[k]
    const images = (cs: unknown) => ((cs as Container[] | undefined) ?? []).map(({ image: _i, ...c }) => c)
    return JSON.stringify([stable(copy), stable(images((s as PodSpec).containers)), stable(images((s as PodSpec).initContainers))])
  }
  if (strip(oldPod.spec) === strip(newPod.spec)) return []
  return [{ type: 'Forbidden', field: 'spec', detail: 'pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)' }]
}

function stable(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(stable)
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, stable((v as Record<string, unknown>)[k])]))
  return v
}
