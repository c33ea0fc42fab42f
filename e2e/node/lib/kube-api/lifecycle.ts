// The built-in admission plugins that run before the webhooks (NamespaceLifecycle,
// ServiceAccount), the controllers they lean on (system namespaces, the default
// ServiceAccount, namespace deletion) and list-option validation. Pure: lookups are passed in.
import { StatusError, type FieldError, type Obj, type Resource } from './objects.ts'

/**
 * What the API server makes at start (kubernetes pkg/controlplane/controller/systemnamespaces
 * system_namespaces_controller.go: kube-system, kube-public, kube-node-lease, default).
 */
export const SYSTEM_NAMESPACES = ['kube-system', 'kube-public', 'kube-node-lease', 'default']

/** NamespaceLifecycle's immortal namespaces (apiserver pkg/admission/plugin/namespace/lifecycle/admission.go:57). */
export const IMMORTAL_NAMESPACES = new Set(['default', 'kube-system', 'kube-public'])

/** The finalizer the namespace controller removes once the namespace is empty (core/v1 FinalizerKubernetes). */
export const NAMESPACE_FINALIZER = 'kubernetes'

/**
 * A namespace as the registry stores it on create (kubernetes pkg/registry/core/namespace/
 * strategy.go PrepareForCreate): phase Active, the `kubernetes` finalizer, its name as a label.
 */
export function newNamespace(obj: Obj): Obj {
  const spec = (obj.spec ?? {}) as { finalizers?: string[] }
  const finalizers = spec.finalizers?.includes(NAMESPACE_FINALIZER) ? spec.finalizers : [...(spec.finalizers ?? []), NAMESPACE_FINALIZER]
  return {
    ...obj,
    metadata: { ...obj.metadata, labels: { ...obj.metadata.labels, 'kubernetes.io/metadata.name': obj.metadata.name } },
    spec: { ...spec, finalizers },
    status: { phase: 'Active' },
  }
}

/**
 * apimachinery pkg/api/errors NewForbidden via admission.NewForbidden (apiserver
 * pkg/admission/errors.go:26-63): the object's name, else its generateName, else "Unknown".
 */
function forbidden(r: Resource, obj: Obj | undefined, name: string | undefined, why: string, causes?: object[]): StatusError {
  const group = r.apiVersion.includes('/') ? r.apiVersion.split('/')[0]! : ''
  const n = name || obj?.metadata.name || obj?.metadata.generateName || 'Unknown'
  return new StatusError(403, 'Forbidden', `${r.plural}${group ? `.${group}` : ''} "${n}" is forbidden: ${why}`, { name: n, ...(group ? { group } : {}), kind: r.plural, ...(causes ? { causes } : {}) })
}

/**
 * NamespaceLifecycle (apiserver pkg/admission/plugin/namespace/lifecycle/admission.go:77-190):
 * an immortal namespace may not be deleted (403); a create in a namespace that does not
 * exist is 404 `namespaces "x" not found` (the live lookup's error, :165), in one being
 * terminated 403 with a NamespaceTerminating cause (:179-187). Updates, deletes and
 * cluster-scoped objects pass.
 */
export function namespaceLifecycle(op: 'CREATE' | 'DELETE', r: Resource, namespace: string | undefined, obj: Obj | undefined, name: string | undefined, lookupNamespace: (name: string) => Obj | undefined): StatusError | undefined {
  if (r.plural === 'namespaces') {
    if (op === 'DELETE' && name && IMMORTAL_NAMESPACES.has(name)) return forbidden(r, undefined, name, 'this namespace may not be deleted')
    return undefined
  }
  if (!r.namespaced || !namespace || op !== 'CREATE') return undefined
  const ns = lookupNamespace(namespace)
  if (!ns) return new StatusError(404, 'NotFound', `namespaces "${namespace}" not found`, { name: namespace, kind: 'namespaces' })
  if ((ns.status as { phase?: string } | undefined)?.phase === 'Terminating') {
    return forbidden(r, obj, undefined, `unable to create new content in namespace ${namespace} because it is being terminated`, [{ reason: 'NamespaceTerminating', message: `namespace ${namespace} is being terminated`, field: 'metadata.namespace' }])
  }
  return undefined
}

/**
 * The ServiceAccount admission plugin on pod create (kubernetes plugin/pkg/admission/
 * serviceaccount/admission.go Admit): an empty serviceAccountName becomes "default"; a
 * ServiceAccount that does not exist is 403 `pods "<name>" is forbidden: error looking up
 * service account <ns>/<sa>: serviceaccount "<sa>" not found` (the lister's NotFound). The
 * plugin's token volume (kube-api-access-*) is not added: nothing here reads it.
 */
export function serviceAccountAdmission(r: Resource, pod: Obj, lookupServiceAccount: (namespace: string, name: string) => Obj | undefined): { pod: Obj } | { error: StatusError } {
  const spec = (pod.spec ?? {}) as { serviceAccountName?: string; serviceAccount?: string }
  const sa = spec.serviceAccountName || 'default'
  const namespace = pod.metadata.namespace!
  if (!lookupServiceAccount(namespace, sa)) return { error: forbidden(r, pod, undefined, `error looking up service account ${namespace}/${sa}: serviceaccount "${sa}" not found`) }
  return { pod: { ...pod, spec: { ...spec, serviceAccountName: sa } } }
}

/**
 * List options (apimachinery pkg/apis/meta/internalversion/validation/validation.go:28-76,
 * refused as 422 Invalid ListOptions.meta.k8s.io, apiserver pkg/endpoints/handlers/get.go:217-219):
 * resourceVersionMatch needs a resourceVersion, never with continue, Exact or NotOlderThan
 * only, Exact not at "0"; on a watch only with sendInitialEvents, which this server refuses.
 */
export function listOptionErrors(q: URLSearchParams, watch: boolean): FieldError[] {
  const match = q.get('resourceVersionMatch') ?? ''
  const rv = q.get('resourceVersion') ?? ''
  const cont = q.get('continue') ?? ''
  const errs: FieldError[] = []
  const forbid = (detail: string) => errs.push({ type: 'Forbidden', field: 'resourceVersionMatch', detail })
  if (watch) {
    if (q.has('sendInitialEvents')) {
      if (match !== 'NotOlderThan') forbid('sendInitialEvents requires setting resourceVersionMatch to NotOlderThan')
      errs.push({ type: 'Forbidden', field: 'sendInitialEvents', detail: 'sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled' })
    }
    if (match) {
      if (!q.has('sendInitialEvents')) forbid('resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided')
      if (match !== 'NotOlderThan') errs.push({ type: 'Unsupported value', field: 'resourceVersionMatch', detail: `"${match}": supported values: "NotOlderThan"` })
      if (cont) forbid('resourceVersionMatch is forbidden when continue is provided')
    }
    return errs
  }
  if (match) {
    if (!rv) forbid('resourceVersionMatch is forbidden unless resourceVersion is provided')
    if (cont) forbid('resourceVersionMatch is forbidden when continue is provided')
    if (match !== 'Exact' && match !== 'NotOlderThan') errs.push({ type: 'Unsupported value', field: 'resourceVersionMatch', detail: `"${match}": supported values: "Exact", "NotOlderThan", ""` })
    if (match === 'Exact' && rv === '0') forbid('resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
  }
  if (q.has('sendInitialEvents')) errs.push({ type: 'Forbidden', field: 'sendInitialEvents', detail: 'sendInitialEvents is forbidden for list' })
  return errs
}

/**
 * PATCH content types (apiserver pkg/endpoints/installer.go:896-901; handlers/patch.go:78-90):
 * anything else is 415 with negotiation's message (handlers/negotiation/errors.go:84-99).
 */
export const PATCH_TYPES = ['application/json-patch+json', 'application/merge-patch+json', 'application/strategic-merge-patch+json', 'application/apply-patch+yaml'] as const
export type PatchType = (typeof PATCH_TYPES)[number]

export function patchType(contentType: string | undefined): PatchType | StatusError {
  const bare = (contentType ?? '').split(';')[0]!.trim()
  if ((PATCH_TYPES as readonly string[]).includes(bare)) return bare as PatchType
  return new StatusError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${PATCH_TYPES.join(', ')}`)
}

/**
 * PatchOptions (apimachinery pkg/apis/meta/v1/validation/validation.go:192-209, refused as
 * 422 Invalid PatchOptions.meta.k8s.io, handlers/patch.go): apply needs a fieldManager;
 * force only with apply; a fieldManager at most 128 characters.
 */
export function patchOptionErrors(type: PatchType, q: URLSearchParams): FieldError[] {
  const errs: FieldError[] = []
  const manager = q.get('fieldManager') ?? ''
  if (type === 'application/apply-patch+yaml') {
    if (!manager) errs.push({ type: 'Required value', field: 'fieldManager', detail: 'is required for apply patch' })
  } else if (q.has('force')) errs.push({ type: 'Forbidden', field: 'force', detail: 'may not be specified for non-apply patch' })
  if (manager.length > 128) errs.push({ type: 'Too long', field: 'fieldManager', detail: 'may not be more than 128 bytes' })
  return errs
}
