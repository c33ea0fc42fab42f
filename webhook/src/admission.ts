// AdmissionReview v1 in, AdmissionReview v1 out. Pure: the HTTP route and the offline
// command both call `review`, so they share every decision and every message.
import { annotationsTotalProblem, ValidationError } from '@ziti-cni/shared'
import type { V1Pod } from '@kubernetes/client-node'
import jsonpatch from 'fast-json-patch'
import type { WebhookConfig } from './config.ts'
import { checkUpdate, mutatePod, verifyInjected, wantsAutoIdentity, type InjectionCache } from './inject/mutate.ts'
import { alreadyInjected, selectPod } from './inject/select.ts'
import { parseRoleAttributes } from './ziti/identity.ts'
import { checkAttributes } from './ziti/policy.ts'
import { autoIdentity, type AutoIdentity } from './ziti/reference.ts'
import { ANNOTATION_ROLE_ATTRIBUTES } from '@ziti-cni/shared'

export interface AdmissionRequest {
  uid: string
  kind?: { group: string; version: string; kind: string }
  operation?: string
  namespace?: string
  name?: string
  dryRun?: boolean
  object?: V1Pod
  /** UPDATE: the pod as it is; `subResource` "ephemeralcontainers" for `kubectl debug`. */
  oldObject?: V1Pod
  subResource?: string
}

export interface AdmissionReview {
  apiVersion: string
  kind: 'AdmissionReview'
  request?: AdmissionRequest
  response?: AdmissionResponse
}

export interface AdmissionResponse {
  uid: string
  allowed: boolean
  patchType?: 'JSONPatch'
  patch?: string
  warnings?: string[]
  status?: { code: number; message: string; reason?: string }
}

export type Outcome = 'injected' | 'skipped' | 'already-injected' | 'rejected' | 'error'

export interface ReviewResult {
  response: AdmissionResponse
  outcome: Outcome
  mode?: string
  ops?: jsonpatch.Operation[]
}

export class BadReview extends Error {
  override readonly name = 'BadReview'
}

/** Checks the envelope; a malformed review is an HTTP 400, not an admission verdict. */
export function parseReview(body: unknown): AdmissionRequest {
  const r = body as AdmissionReview
  if (typeof r !== 'object' || r === null) throw new BadReview('body must be an AdmissionReview object')
  if (r.apiVersion !== 'admission.k8s.io/v1' || r.kind !== 'AdmissionReview') throw new BadReview(`expected admission.k8s.io/v1 AdmissionReview, got ${r.apiVersion}/${r.kind}`)
  if (!r.request || typeof r.request.uid !== 'string' || r.request.uid === '') throw new BadReview('request.uid is required')
  return r.request
}

export function review(req: AdmissionRequest, cfg: WebhookConfig, cache?: InjectionCache, auto?: AutoIdentity): ReviewResult {
  const allow = (outcome: Outcome, warnings?: string[]): ReviewResult => ({ response: { uid: req.uid, allowed: true, ...(warnings?.length ? { warnings } : {}) }, outcome })
  if (req.kind && (req.kind.kind !== 'Pod' || req.kind.group !== '')) return allow('skipped')
  const pod = req.object
  const rejected = (e: ValidationError): ReviewResult => ({ response: { uid: req.uid, allowed: false, status: { code: 400, reason: 'BadRequest', message: `ziti-cni: ${e.message}` } }, outcome: 'rejected' })
  // UPDATE reaches the webhook only where its configuration asks for it (clusters without the
  // ValidatingAdmissionPolicy); the checks are the policy's.
  if (req.operation === 'UPDATE' && pod && req.oldObject) {
    try {
      checkUpdate(req.oldObject, pod, req.subResource, cfg)
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e
      return rejected(e)
    }
    return allow('skipped')
  }
  if (req.operation && req.operation !== 'CREATE') return allow('skipped')
  if (!pod) return { response: { uid: req.uid, allowed: false, status: { code: 400, reason: 'BadRequest', message: 'ziti-cni: request.object (the pod) is missing' } }, outcome: 'error' }
  const namespace = req.namespace ?? pod.metadata?.namespace ?? 'default'
  const sel = selectPod(pod, namespace, cfg.excludedNamespaces, cfg.unservedNodes)
  if (!sel.inject && sel.refuse) return { response: { uid: req.uid, allowed: false, status: { code: 400, reason: 'BadRequest', message: `ziti-cni: ${sel.refuse}` } }, outcome: 'rejected' }
  if (!sel.inject) return allow('skipped', sel.warning ? [sel.warning] : undefined)
  try {
    // The marker skips re-mutation only: the pod is checked as closely as a fresh one.
    if (alreadyInjected(pod)) {
      verifyInjected(pod, cfg, namespace)
      return allow('already-injected')
    }
    const { ops, patch, warnings, plan } = mutatePod(pod, cfg, cache, auto, namespace)
    // The API server refuses the mutated pod (422) when its annotations exceed the total; say why here.
    const tooBig = annotationsTotalProblem(jsonpatch.applyPatch(structuredClone(pod), ops, false, true).newDocument.metadata?.annotations)
    if (tooBig) throw new ValidationError('metadata.annotations', tooBig)
    return {
      response: { uid: req.uid, allowed: true, patchType: 'JSONPatch', patch, ...(warnings.length ? { warnings } : {}) },
      outcome: 'injected', mode: plan.mode, ops,
    }
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e
    return rejected(e)
  }
}

/**
 * `review`, with `identity: auto` governed: the requested role attributes must pass the
 * platform's attribute policy for the pod's namespace and ServiceAccount, and what is injected
 * is a reference (the enrollment init step and its projected token), never an identity. Pure,
 * like `review`: a forged AdmissionReview creates, reads and deletes nothing, and the answer
 * says nothing about what any attribute may reach (the controller is never asked). The
 * identity itself is created later by the identity controller, for the pod the API server
 * stored (../identity-controller).
 */
export function admit(req: AdmissionRequest, cfg: WebhookConfig, cache?: InjectionCache): ReviewResult {
  const pod = req.object
  const annotations = pod?.metadata?.annotations ?? {}
  if (!pod || !wantsAutoIdentity(annotations) || !cfg.controller.url) return review(req, cfg, cache)
  const result = review(req, cfg, undefined, autoIdentity(cfg))
  if (result.outcome !== 'injected') return result
  // The ServiceAccount admission plugin runs before mutating webhooks and fills "default".
  const namespace = req.namespace ?? pod.metadata?.namespace ?? 'default'
  const serviceAccount = pod.spec?.serviceAccountName || 'default'
  try {
    checkAttributes(cfg.controller.attributePolicy, namespace, serviceAccount, parseRoleAttributes(annotations[ANNOTATION_ROLE_ATTRIBUTES]))
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e
    return { response: { uid: req.uid, allowed: false, status: { code: 403, reason: 'Forbidden', message: `ziti-cni: ${e.message}` } }, outcome: 'rejected' }
  }
  return result
}
