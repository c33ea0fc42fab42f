// The pure core of injection: pod in, mutated pod (or a ValidationError naming the key and
// the problem) out. Both /mutate and the offline `inject` command run exactly this.
import {
  ANNOTATION_ENROLLMENT_SECRET, ANNOTATION_IDENTITY_SECRET, ANNOTATION_INTERCEPTION, ANNOTATION_STATUS, SIDECAR_NAME, SIDECAR_VOLUME,
  ValidationError, parseSecretRef, serializeIntent,
} from '@ziti-cni/shared'
import type { V1Container, V1Pod } from '@kubernetes/client-node'
import type { WebhookConfig } from '../config.ts'
import { planInterception, type InterceptionPlan } from './intent.ts'
import { buildSidecar, sidecarVolume, type IdentitySource } from './sidecar.ts'

export const INJECTOR_VERSION = '0.1.0'

export interface MutationResult {
  pod: V1Pod
  plan: InterceptionPlan
  warnings: string[]
}

function identitySource(annotations: Record<string, string>): IdentitySource {
  const id = annotations[ANNOTATION_IDENTITY_SECRET]
  const enroll = annotations[ANNOTATION_ENROLLMENT_SECRET]
  if (id !== undefined && enroll !== undefined) {
    throw new ValidationError(ANNOTATION_IDENTITY_SECRET, `set either ${ANNOTATION_IDENTITY_SECRET} (enrolled identity JSON) or ${ANNOTATION_ENROLLMENT_SECRET} (enrollment JWT), not both`)
  }
  if (id !== undefined) return { kind: 'identity', ref: parseSecretRef(ANNOTATION_IDENTITY_SECRET, id) }
  if (enroll !== undefined) return { kind: 'enrollment', ref: parseSecretRef(ANNOTATION_ENROLLMENT_SECRET, enroll) }
  throw new ValidationError(ANNOTATION_IDENTITY_SECRET, `is required: name the Secret holding the pod's Ziti identity as <secret>[/<key>] (or use ${ANNOTATION_ENROLLMENT_SECRET} for an enrollment JWT)`)
}

/** A container running as the sidecar uid would bypass capture (its traffic is never steered). */
function checkUids(pod: V1Pod, uid: number): void {
  if (pod.spec?.securityContext?.runAsUser === uid) {
    throw new ValidationError('spec.securityContext.runAsUser', `${uid} is the Ziti sidecar's uid; traffic from it is never intercepted, so the app would escape capture`)
  }
  const all: Array<[string, V1Container]> = [
    ...(pod.spec?.initContainers ?? []).map((c, i): [string, V1Container] => [`spec.initContainers[${i}]`, c]),
    ...(pod.spec?.containers ?? []).map((c, i): [string, V1Container] => [`spec.containers[${i}]`, c]),
  ]
  for (const [path, c] of all) {
    if (c.name === SIDECAR_NAME) throw new ValidationError(`${path}.name`, `"${SIDECAR_NAME}" is reserved for the injected Ziti sidecar`)
    if (c.securityContext?.runAsUser === uid) {
      throw new ValidationError(`${path}.securityContext.runAsUser`, `container "${c.name}" runs as ${uid}, the Ziti sidecar's uid; its traffic would escape capture`)
    }
  }
}

function checkPorts(pod: V1Pod, plan: InterceptionPlan): void {
  const ours = new Set(plan.ports)
  for (const c of [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])]) {
    for (const p of c.ports ?? []) {
      if (ours.has(p.containerPort)) {
        throw new ValidationError(`spec.containers[${c.name}].ports`, `port ${p.containerPort} is used by the Ziti sidecar (its listeners: ${plan.ports.join(', ')})`)
      }
    }
  }
  if (pod.spec?.volumes?.some((v) => v.name === SIDECAR_VOLUME)) throw new ValidationError('spec.volumes', `volume name "${SIDECAR_VOLUME}" is reserved for the Ziti sidecar`)
}

export function mutatePod(original: V1Pod, cfg: WebhookConfig): MutationResult {
  const pod = structuredClone(original)
  pod.metadata ??= {}
  pod.spec ??= { containers: [] }
  const annotations = pod.metadata.annotations ?? {}
  const identity = identitySource(annotations)
  checkUids(pod, cfg.sidecarUid)
  const plan = planInterception(annotations, pod.spec.hostAliases ?? [], cfg)
  checkPorts(pod, plan)

  const sidecar = buildSidecar(plan, identity, cfg)
  if (cfg.nativeSidecar) pod.spec.initContainers = [sidecar, ...(pod.spec.initContainers ?? [])]
  else pod.spec.containers = [sidecar, ...pod.spec.containers]
  pod.spec.volumes = [...(pod.spec.volumes ?? []), sidecarVolume()]
  if (plan.aliases.length) {
    const byIp = new Map<string, string[]>()
    for (const a of plan.aliases) byIp.set(a.ip, [...(byIp.get(a.ip) ?? []), a.hostname])
    pod.spec.hostAliases = [...(pod.spec.hostAliases ?? []), ...[...byIp].map(([ip, hostnames]) => ({ ip, hostnames }))]
  }
  // Owned by the webhook: whatever the user put there is replaced.
  pod.metadata.annotations = {
    ...annotations,
    [ANNOTATION_INTERCEPTION]: serializeIntent(plan.intent),
    [ANNOTATION_STATUS]: JSON.stringify({ version: INJECTOR_VERSION, mode: plan.mode, sidecar: SIDECAR_NAME }),
  }
  const warnings: string[] = []
  if (plan.mode === 'tproxy' && cfg.tproxy.addCapabilities.length) {
    warnings.push(`ziti-cni: the tproxy sidecar gets ${cfg.tproxy.addCapabilities.join(', ')} (nftables TPROXY only delivers to IP_TRANSPARENT sockets); this pod will not pass Pod Security "restricted"`)
  }
  if (annotations[ANNOTATION_INTERCEPTION] !== undefined && annotations[ANNOTATION_INTERCEPTION] !== pod.metadata.annotations[ANNOTATION_INTERCEPTION]) {
    warnings.push(`ziti-cni: replaced the user-supplied ${ANNOTATION_INTERCEPTION} annotation (it is owned by the webhook)`)
  }
  return { pod, plan, warnings }
}
