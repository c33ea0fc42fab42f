// AdmissionReview v1 in, AdmissionReview v1 out. Pure: the HTTP route and the offline
// command both call `review`, so they share every decision and every message.
import { ValidationError } from '@ziti-cni/shared'
import type { V1Pod } from '@kubernetes/client-node'
import jsonpatch from 'fast-json-patch'
import type { WebhookConfig } from './config.ts'
import { mutatePod, wantsAutoIdentity, wantsAutoServices, type ControllerGrant, type InjectionCache } from './inject/mutate.ts'
import { alreadyInjected, selectPod } from './inject/select.ts'
import { ControllerError } from './ziti/controller.ts'
import { parseRoleAttributes } from './ziti/identity.ts'
import type { IdentityProvisioner } from './ziti/provision.ts'
import { ANNOTATION_IDENTITY, ANNOTATION_ROLE_ATTRIBUTES } from '@ziti-cni/shared'

export interface AdmissionRequest {
  uid: string
  kind?: { group: string; version: string; kind: string }
  operation?: string
  namespace?: string
  name?: string
  dryRun?: boolean
  object?: V1Pod
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

export function review(req: AdmissionRequest, cfg: WebhookConfig, cache?: InjectionCache, grant?: ControllerGrant): ReviewResult {
  const allow = (outcome: Outcome, warnings?: string[]): ReviewResult => ({ response: { uid: req.uid, allowed: true, ...(warnings?.length ? { warnings } : {}) }, outcome })
  if (req.kind && (req.kind.kind !== 'Pod' || req.kind.group !== '')) return allow('skipped')
  if (req.operation && req.operation !== 'CREATE') return allow('skipped')
  const pod = req.object
  if (!pod) return { response: { uid: req.uid, allowed: false, status: { code: 400, reason: 'BadRequest', message: 'ziti-cni: request.object (the pod) is missing' } }, outcome: 'error' }
  const namespace = req.namespace ?? pod.metadata?.namespace ?? 'default'
  const sel = selectPod(pod, namespace, cfg.excludedNamespaces, cfg.unservedNodes)
  if (!sel.inject && sel.refuse) return { response: { uid: req.uid, allowed: false, status: { code: 400, reason: 'BadRequest', message: `ziti-cni: ${sel.refuse}` } }, outcome: 'rejected' }
  if (!sel.inject) return allow('skipped', sel.warning ? [sel.warning] : undefined)
  if (alreadyInjected(pod)) return allow('already-injected')
  try {
    const { ops, patch, warnings, plan } = mutatePod(pod, cfg, cache, grant)
    return {
      response: { uid: req.uid, allowed: true, patchType: 'JSONPatch', patch, ...(warnings.length ? { warnings } : {}) },
      outcome: 'injected', mode: plan.mode, ops,
    }
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e
    return { response: { uid: req.uid, allowed: false, status: { code: 400, reason: 'BadRequest', message: `ziti-cni: ${e.message}` } }, outcome: 'rejected' }
  }
}

/** Stands in for the controller's answer while everything else about the pod is checked. */
const PREFLIGHT: ControllerGrant = {
  identityId: 'preflight', identityName: 'preflight', secretName: 'preflight',
  services: { entries: [{ host: 'preflight.invalid', isIp: false, port: 1, proto: 'tcp', service: 'preflight' }], fixedPorts: new Map(), warnings: [] },
}

function refuse(req: AdmissionRequest, code: number, message: string): ReviewResult {
  return { response: { uid: req.uid, allowed: false, status: { code, reason: code === 400 ? 'BadRequest' : 'ServiceUnavailable', message } }, outcome: code === 400 ? 'rejected' : 'error' }
}

/**
 * `review`, plus the controller for pods with `identity: auto`. The pod is checked in full
 * before any identity exists (a pod refused for its own mistakes costs the controller
 * nothing); a dry run creates nothing; an admission that fails after the identity exists
 * deletes it again.
 */
export async function admit(req: AdmissionRequest, cfg: WebhookConfig, cache: InjectionCache | undefined, provisioner: IdentityProvisioner | undefined, started = Date.now()): Promise<ReviewResult> {
  const pod = req.object
  const annotations = pod?.metadata?.annotations ?? {}
  if (!pod || !provisioner || !wantsAutoIdentity(annotations)) return review(req, cfg, cache)
  const pre = review(req, cfg, undefined, PREFLIGHT)
  if (pre.outcome !== 'injected') return pre
  if (req.dryRun) {
    return { response: { uid: req.uid, allowed: true, warnings: [`ziti-cni: dry run: no Ziti identity was created and nothing was injected; ${ANNOTATION_IDENTITY}: auto takes effect on a real create`] }, outcome: 'skipped' }
  }
  const namespace = req.namespace ?? pod.metadata?.namespace ?? 'default'
  let grant: ControllerGrant
  try {
    grant = await provisioner.provision({
      pod: { namespace, name: pod.metadata?.name || req.name || undefined, generateName: pod.metadata?.generateName, admissionUid: req.uid },
      roleAttributes: parseRoleAttributes(annotations[ANNOTATION_ROLE_ATTRIBUTES]),
      services: wantsAutoServices(annotations, cfg),
      deadline: started + cfg.controller.admissionBudgetMs,
    })
  } catch (e) {
    return refuse(req, 503, `ziti-cni: ${ANNOTATION_IDENTITY}: auto: ${controllerProblem(e, cfg.controller.url)}`)
  }
  let result: ReviewResult
  try {
    result = review(req, cfg, undefined, grant)
  } catch (e) {
    await provisioner.rollback(grant, namespace, (e as Error).message)
    throw e
  }
  if (result.outcome !== 'injected') await provisioner.rollback(grant, namespace, result.response.status?.message ?? result.outcome)
  return result
}

function controllerProblem(e: unknown, url: string): string {
  if (!(e instanceof ControllerError)) return `the pod's identity could not be set up: ${(e as Error).message}`
  switch (e.failure) {
    case 'unreachable': return `the OpenZiti controller is unreachable, so no identity was created (${e.message})`
    case 'credential-refused': return `the OpenZiti controller at ${url} refused the webhook's credential (${e.message})`
    case 'busy': return `the OpenZiti controller is overloaded and did not accept the request in time (${e.message})`
    case 'deadline': return `the OpenZiti controller did not answer within the admission budget (${e.message})`
    case 'rejected': return `the OpenZiti controller refused the request (${e.message})`
  }
}
