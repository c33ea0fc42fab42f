// The pure core of injection: pod in, mutated pod (or a ValidationError naming the key and
// the problem) out. Both /mutate and the offline `inject` command run exactly this.
import {
  ANNOTATION_DNS_CAPTURE, ANNOTATION_ENROLLMENT_SECRET, ANNOTATION_IDENTITY, ANNOTATION_IDENTITY_SECRET, ANNOTATION_INTERCEPTION,
  ANNOTATION_MODE, ANNOTATION_ROLE_ATTRIBUTES, ANNOTATION_SERVICES, ANNOTATION_STATUS, AUTO, DOMAIN, LABEL_AUTO_IDENTITY, SIDECAR_NAME, SIDECAR_VOLUME,
  USER_ANNOTATIONS, VALIDATOR_NAME, ValidationError, parseIntent, parseSecretRef, serializeIntent,
} from '@ziti-cni/shared'
import type { V1Container, V1HostAlias, V1Pod } from '@kubernetes/client-node'
import jsonpatch, { type Operation } from 'fast-json-patch'
import { isDeepStrictEqual } from 'node:util'
import type { WebhookConfig } from '../config.ts'
import { clusterDnsUnknown } from '../cluster-dns.ts'
import { egressFloor, planInterception, type InterceptionPlan } from './intent.ts'
import { buildSidecar, buildValidator, sidecarVolume, type IdentitySource } from './sidecar.ts'
import { checkPreconditions, type PreconditionContext } from './preconditions.ts'
import { alreadyInjected } from './select.ts'
import { parseRoleAttributes } from '../ziti/identity.ts'
import { autoIdentity, ENROLL_NAME, type AutoIdentity } from '../ziti/reference.ts'

export const INJECTOR_VERSION = '0.1.0'

export interface MutationResult {
  ops: Operation[]
  /** `ops` as the base64 JSON the AdmissionReview carries. */
  patch: string
  plan: InterceptionPlan
  warnings: string[]
}

/** True when the pod asks the controller for its identity (and so, maybe, its services). */
export function wantsAutoIdentity(annotations: Record<string, string>): boolean {
  return annotations[ANNOTATION_IDENTITY] !== undefined
}

function identitySource(annotations: Record<string, string>, reference: AutoIdentity | undefined): IdentitySource {
  const id = annotations[ANNOTATION_IDENTITY_SECRET]
  const enroll = annotations[ANNOTATION_ENROLLMENT_SECRET]
  const auto = annotations[ANNOTATION_IDENTITY]
  if (auto !== undefined) {
    if (auto !== AUTO) throw new ValidationError(ANNOTATION_IDENTITY, `must be "auto" (the identity controller creates the pod's identity through the OpenZiti controller); for an identity you enrolled yourself, use ${ANNOTATION_IDENTITY_SECRET}`)
    if (id !== undefined || enroll !== undefined) throw new ValidationError(ANNOTATION_IDENTITY, `set either ${ANNOTATION_IDENTITY}: auto or a Secret (${id !== undefined ? ANNOTATION_IDENTITY_SECRET : ANNOTATION_ENROLLMENT_SECRET}), not both`)
    parseRoleAttributes(annotations[ANNOTATION_ROLE_ATTRIBUTES])
    if (!reference) throw new ValidationError(ANNOTATION_IDENTITY, 'needs the OpenZiti controller, and this webhook has none configured (webhook config controller.url)')
    return { kind: 'auto' }
  }
  if (annotations[ANNOTATION_ROLE_ATTRIBUTES] !== undefined) throw new ValidationError(ANNOTATION_ROLE_ATTRIBUTES, `only applies to ${ANNOTATION_IDENTITY}: auto (a Secret's identity has its role attributes already)`)
  if (id !== undefined && enroll !== undefined) {
    throw new ValidationError(ANNOTATION_IDENTITY_SECRET, `set either ${ANNOTATION_IDENTITY_SECRET} (enrolled identity JSON) or ${ANNOTATION_ENROLLMENT_SECRET} (enrollment JWT), not both`)
  }
  if (id !== undefined) return { kind: 'identity', ref: parseSecretRef(ANNOTATION_IDENTITY_SECRET, id) }
  if (enroll !== undefined) return { kind: 'enrollment', ref: parseSecretRef(ANNOTATION_ENROLLMENT_SECRET, enroll) }
  throw new ValidationError(ANNOTATION_IDENTITY_SECRET, `is required: name the Secret holding the pod's Ziti identity as <secret>[/<key>] (or use ${ANNOTATION_ENROLLMENT_SECRET} for an enrollment JWT, or ${ANNOTATION_IDENTITY}: auto)`)
}

/**
 * An enrollment JWT is single-use: the image's entrypoint enrolls it on every start and exits 1
 * when that fails (entrypoint.sh:128-133), and the enrolled identity lives in a memory emptyDir.
 * A pod that a controller recreates or replicates would crash-loop from its second copy on.
 */
function checkSingleUseToken(pod: V1Pod, identity: IdentitySource): void {
  if (identity.kind !== 'enrollment') return
  const owner = pod.metadata?.ownerReferences?.find((o) => o.controller)
  if (owner) {
    throw new ValidationError(ANNOTATION_ENROLLMENT_SECRET, `an enrollment token is single-use, but this pod is managed by ${owner.kind} ${owner.name}, which will create more pods from the same template (replicas, rollouts, evictions); every pod after the first would fail to enroll and crash-loop. Enroll once (ziti edge enroll) and use ${ANNOTATION_IDENTITY_SECRET} with the identity JSON instead`)
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
}

function preconditionContext(cfg: WebhookConfig, secretNames: string[], injected: boolean): PreconditionContext {
  return { uid: cfg.sidecarUid, gid: cfg.sidecarGid, tunResource: cfg.tun.resource, secretNames, injected }
}

/**
 * tun/tproxy DNS, with the usual search path. `dns: forward`: the tunneler alone, forwarding
 * the rest to the cluster DNS (plan.dnsUpstream). `parallel`: the tunneler, then the cluster
 * DNS: glibc moves on after the tunneler's REFUSED, but musl asks both at once and a cluster
 * NXDOMAIN for a Ziti name that arrives first fails the lookup (README "Compatibility").
 * Returns a warning when the pod's own DNS settings win.
 */
function dnsOps(pod: V1Pod, plan: InterceptionPlan, cfg: WebhookConfig, ops: Operation[]): string | undefined {
  if (!plan.dnsServer) return undefined
  const spec = pod.spec ?? { containers: [] }
  if (spec.dnsPolicy === 'None' || spec.dnsConfig) {
    if (plan.dnsExplicit) throw new ValidationError(ANNOTATION_DNS_CAPTURE, 'the pod sets its own dnsPolicy/dnsConfig; drop them, or set it to "false"')
    return `ziti-cni: the pod sets its own DNS (dnsPolicy/dnsConfig), so Ziti service names do not resolve through the tunneler; set ${ANNOTATION_DNS_CAPTURE}: "false" to silence this`
  }
  if (cfg.tproxy.clusterDns.length === 0) throw new ValidationError(ANNOTATION_DNS_CAPTURE, clusterDnsUnknown(cfg.tproxy.clusterDnsService, 'is missing, headless or not read yet: see the webhook log'))
  const ns = pod.metadata?.namespace ?? 'default'
  const domain = cfg.tproxy.clusterDomain
  ops.push({ op: 'add', path: '/spec/dnsPolicy', value: 'None' })
  ops.push({ op: 'add', path: '/spec/dnsConfig', value: {
    nameservers: plan.dnsUpstream ? [plan.dnsServer] : [plan.dnsServer, ...cfg.tproxy.clusterDns].slice(0, 3),
    searches: [`${ns}.svc.${domain}`, `svc.${domain}`, domain],
    // forward: glibc asks for answers up to 1200 bytes over UDP (EDNS0) instead of 512 and then
    // TCP, which the tunneler does not serve (README "Compatibility": sizes measured).
    options: [{ name: 'ndots', value: '5' }, ...(plan.dnsUpstream ? [{ name: 'edns0' }] : [])],
  } })
  return undefined
}

/**
 * A tproxy tunneler answers UDP from the original destination, which may be a low port (DNS
 * on 100.64.0.2:53, syslog on 514): binding one as a non-root uid needs the pod's
 * net.ipv4.ip_unprivileged_port_start lowered, a "safe" sysctl that Pod Security "restricted"
 * admits. Nothing else in the pod changes.
 */
export const UNPRIVILEGED_PORT_SYSCTL = { name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }
function lowPortOps(pod: V1Pod, ops: Operation[]): void {
  const sc = pod.spec?.securityContext
  const existing = sc?.sysctls?.find((x) => x.name === UNPRIVILEGED_PORT_SYSCTL.name)
  if (existing) {
    if (existing.value !== UNPRIVILEGED_PORT_SYSCTL.value) throw new ValidationError('spec.securityContext.sysctls', `${UNPRIVILEGED_PORT_SYSCTL.name} is ${existing.value}; tproxy mode needs 0 (the tunneler answers UDP from the original, possibly low, port)`)
    return
  }
  if (!sc) ops.push({ op: 'add', path: '/spec/securityContext', value: { sysctls: [UNPRIVILEGED_PORT_SYSCTL] } })
  else if (!sc.sysctls) ops.push({ op: 'add', path: '/spec/securityContext/sysctls', value: [UNPRIVILEGED_PORT_SYSCTL] })
  else ops.push({ op: 'add', path: '/spec/securityContext/sysctls/-', value: UNPRIVILEGED_PORT_SYSCTL })
}

/** RFC 6901: "~" and "/" in a key become "~0" and "~1". */
export function pointerEscape(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1')
}

/** Everything about an injection that depends only on the annotations and hostAliases. */
interface Prepared {
  /** Encoded patches by pod shape (which lists exist): the same template, the same bytes. */
  encoded: Map<string, string>
  plan: InterceptionPlan
  sidecar: V1Container
  validator: V1Container | undefined
  aliases: Array<{ ip: string; hostnames: string[] }>
  owned: Record<string, string>
}

function prepare(annotations: Record<string, string>, identity: IdentitySource, hostAliases: V1HostAlias[], cfg: WebhookConfig, namespace: string): Prepared {
  const plan = planInterception(annotations, hostAliases, cfg, undefined, namespace)
  const byIp = new Map<string, string[]>()
  for (const a of plan.aliases) byIp.set(a.ip, [...(byIp.get(a.ip) ?? []), a.hostname])
  const intentJson = serializeIntent(plan.intent)
  return {
    encoded: new Map(),
    plan,
    sidecar: buildSidecar(plan, identity, cfg),
    validator: cfg.validator.enabled ? buildValidator(intentJson, cfg) : undefined,
    aliases: [...byIp].map(([ip, hostnames]) => ({ ip, hostnames })),
    owned: {
      [ANNOTATION_INTERCEPTION]: intentJson,
      [ANNOTATION_STATUS]: JSON.stringify({ version: INJECTOR_VERSION, mode: plan.mode, sidecar: SIDECAR_NAME }),
    },
  }
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o)
    for (const v of Object.values(o)) deepFreeze(v)
  }
  return o
}

/**
 * Pods of one ReplicaSet share their annotations, so the parsed and rendered part of an
 * injection is memoised (bounded LRU). Entries are frozen: a patch only ever reads them.
 */
export class InjectionCache {
  private readonly entries = new Map<string, Prepared>()
  private readonly max: number
  hits = 0
  constructor(max = 512) {
    this.max = max
  }
  get(annotations: Record<string, string>, identity: IdentitySource, hostAliases: V1HostAlias[], cfg: WebhookConfig, namespace: string): Prepared {
    // The validator image and the cluster DNS follow the cluster at run time: part of the key. So
    // is the namespace's egress floor (its config key: namespaces without an entry share entries).
    const key = JSON.stringify([USER_ANNOTATIONS.map((k) => annotations[k] ?? null), hostAliases, cfg.validator.image, cfg.tproxy.clusterDns, egressFloor(cfg, namespace).key])
    const hit = this.entries.get(key)
    if (hit) {
      this.hits++
      this.entries.delete(key)
      this.entries.set(key, hit)
      return hit
    }
    const { encoded, ...rest } = prepare(annotations, identity, hostAliases, cfg, namespace)
    const fresh = { ...deepFreeze(rest), encoded }
    this.entries.set(key, fresh)
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!)
    return fresh
  }
}

/**
 * Builds the JSON Patch by hand rather than diffing: an `add` at index 0 inserts the
 * sidecar in front of existing containers instead of rewriting every one of them.
 */
/** `namespace`: the admission request's (a pod created by a controller may carry none itself). */
export function mutatePod(original: V1Pod, cfg: WebhookConfig, cache?: InjectionCache, auto?: AutoIdentity, namespace = original.metadata?.namespace ?? 'default'): MutationResult {
  const spec = original.spec ?? { containers: [] }
  const annotations = original.metadata?.annotations ?? {}
  const hostAliases = spec.hostAliases ?? []
  // Identity first: a pod without one is refused before anything else is looked at.
  const identity = identitySource(annotations, auto)
  checkSingleUseToken(original, identity)
  checkPreconditions(original, preconditionContext(cfg, identity.kind === 'auto' ? [] : [identity.ref.name], false))
  const { plan, sidecar, validator, aliases, owned, encoded } = cache && !auto ? cache.get(annotations, identity, hostAliases, cfg, namespace) : prepare(annotations, identity, hostAliases, cfg, namespace)
  checkPorts(original, plan)

  const ops: Operation[] = []
  const prepend = (path: string, list: unknown[] | undefined, value: unknown) =>
    ops.push(list ? { op: 'add', path: `${path}/0`, value } : { op: 'add', path, value: [value] })
  const append = (path: string, list: unknown[] | undefined, values: unknown[]) => {
    if (!list) ops.push({ op: 'add', path, value: values })
    else for (const value of values) ops.push({ op: 'add', path: `${path}/-`, value })
  }
  // Init order: validator, the enrollment step (identity: auto), then the (native) sidecar,
  // then the app's own init containers.
  const enroll = identity.kind === 'auto' ? auto : undefined
  const inits = [...(validator ? [validator] : []), ...(enroll ? [enroll.initContainer] : []), ...(cfg.nativeSidecar ? [sidecar] : [])]
  if (!spec.initContainers && inits.length) ops.push({ op: 'add', path: '/spec/initContainers', value: inits })
  else inits.forEach((c, i) => ops.push({ op: 'add', path: `/spec/initContainers/${i}`, value: c }))
  if (!cfg.nativeSidecar) prepend('/spec/containers', spec.containers, sidecar)
  append('/spec/volumes', spec.volumes, [sidecarVolume(), ...(enroll ? [enroll.volume] : [])])
  if (aliases.length) append('/spec/hostAliases', spec.hostAliases, aliases)
  const dnsWarning = dnsOps(original, plan, cfg, ops)
  if (plan.mode === 'tproxy') lowPortOps(original, ops)
  // Owned by the webhook: whatever the user put there is replaced (`add` replaces a member).
  if (!original.metadata?.annotations) ops.push({ op: 'add', path: '/metadata/annotations', value: owned })
  else for (const [k, v] of Object.entries(owned)) ops.push({ op: 'add', path: `/metadata/annotations/${pointerEscape(k)}`, value: v })
  // The identity controller watches pods with auto identities by this label (pods cannot be
  // selected by annotation). A pod author can set it too: the controller checks the pod itself.
  if (enroll) {
    if (!original.metadata?.labels) ops.push({ op: 'add', path: '/metadata/labels', value: { [LABEL_AUTO_IDENTITY]: 'true' } })
    else ops.push({ op: 'add', path: `/metadata/labels/${pointerEscape(LABEL_AUTO_IDENTITY)}`, value: 'true' })
  }
  if (!original.metadata) ops.unshift({ op: 'add', path: '/metadata', value: {} })

  const warnings: string[] = [...(plan.warnings ?? []), ...(dnsWarning ? [dnsWarning] : [])]
  const supplied = annotations[ANNOTATION_INTERCEPTION]
  if (supplied !== undefined && supplied !== owned[ANNOTATION_INTERCEPTION]) {
    warnings.push(`ziti-cni: replaced the user-supplied ${ANNOTATION_INTERCEPTION} annotation (it is owned by the webhook)`)
  }
  // DNS ops depend on the namespace (search path) and the pod's own DNS settings.
  const shape = [spec.initContainers, spec.containers, spec.volumes, spec.hostAliases, original.metadata?.annotations, original.metadata].map((x) => (x ? 1 : 0)).join('') +
    (plan.dnsServer ? `/${original.metadata?.namespace ?? ''}/${spec.dnsPolicy ?? ''}/${spec.dnsConfig ? 1 : 0}` : '') +
    (plan.mode === 'tproxy' ? `/${spec.securityContext ? 1 : 0}${spec.securityContext?.sysctls ? 1 : 0}${spec.securityContext?.sysctls?.some((x) => x.name === UNPRIVILEGED_PORT_SYSCTL.name) ? 1 : 0}` : '')
  let patch = auto ? undefined : encoded.get(shape)
  if (patch === undefined) {
    patch = Buffer.from(JSON.stringify(ops)).toString('base64')
    if (!auto) encoded.set(shape, patch)
  }
  return { ops, patch, plan, warnings }
}

/** The pod after a patch (the offline command and tests; /mutate never needs it). */
export function applyMutation(original: V1Pod, ops: Operation[]): V1Pod {
  return jsonpatch.applyPatch(structuredClone(original), ops, true, false).newDocument
}

/**
 * A pod that carries our marker (a reinvocation, or a pod written to look injected): nothing
 * is added, but nothing is taken on trust either. Every container but ours keeps to the
 * preconditions, the sidecar and validator are the ones this webhook builds, and the intent is
 * the one it would write for the pod's annotations, so a hand-written intent is refused.
 * Pods whose services come from the controller cannot be planned again without it; for
 * those the intent must still name the sidecar's uid and fence every listener it maps to.
 */
export function verifyInjected(pod: V1Pod, cfg: WebhookConfig, namespace = pod.metadata?.namespace ?? 'default'): void {
  const annotations = pod.metadata?.annotations ?? {}
  const spec = pod.spec ?? { containers: [] }
  const forged = (what: string) => new ValidationError(ANNOTATION_STATUS, `the pod is marked as injected, but ${what}; remove ${ANNOTATION_STATUS}, ${ANNOTATION_INTERCEPTION} and the ${SIDECAR_NAME} container and let the webhook inject it`)
  const sidecars = [...(spec.initContainers ?? []), ...spec.containers].filter((c) => c.name === SIDECAR_NAME)
  if (sidecars.length !== 1) throw forged(`it has ${sidecars.length} containers named ${SIDECAR_NAME}`)
  const sidecar = sidecars[0]!
  const secretNames = (sidecar.env ?? []).flatMap((e) => e.valueFrom?.secretKeyRef?.name ?? [])
  checkPreconditions(pod, preconditionContext(cfg, secretNames, true))

  const supplied = annotations[ANNOTATION_INTERCEPTION]
  if (supplied === undefined) throw forged(`${ANNOTATION_INTERCEPTION} is missing`)
  try {
    parseIntent(supplied)
  } catch (e) {
    throw forged(`${ANNOTATION_INTERCEPTION} is not a valid intent (${(e as Error).message})`)
  }
  const auto = wantsAutoIdentity(annotations)
  const identity: IdentitySource = auto ? { kind: 'auto' } : { kind: 'identity', ref: { name: secretNames[0] ?? '', key: undefined } }
  // Our hostAliases are the ones naming a service's hostname (a pod's own are refused at
  // injection), so plan against the rest and expect exactly those back.
  const serviceHosts = new Set((annotations[ANNOTATION_SERVICES] ?? '').split(',').map((e) => e.trim().split(':')[0]))
  const ourAliases = (spec.hostAliases ?? []).filter((a) => (a.hostnames ?? []).every((h) => serviceHosts.has(h)))
  const own = (spec.hostAliases ?? []).filter((a) => !ourAliases.includes(a))
  const plan = planInterception(annotations, own, cfg, undefined, namespace)
  const want = serializeIntent(plan.intent)
  if (supplied !== want) throw forged(`${ANNOTATION_INTERCEPTION} is not the intent the webhook writes for its annotations (expected ${want})`)
  const expected = buildSidecar(plan, identity, cfg)
  for (const f of ['image', 'command', 'args', 'securityContext', 'restartPolicy', 'startupProbe', 'livenessProbe'] as const) {
    if (!isDeepStrictEqual(sidecar[f], expected[f])) throw forged(`its ${SIDECAR_NAME} container's ${f} is not the one the webhook builds`)
  }
  // identity: auto: the enrollment step runs as the sidecar's uid on its volume, so it must be ours exactly.
  const enroll = (spec.initContainers ?? []).find((c) => c.name === ENROLL_NAME)
  if (auto || enroll) {
    if (!auto || !enroll) throw forged(auto ? `its ${ENROLL_NAME} init container is missing` : `it has a ${ENROLL_NAME} init container without ${ANNOTATION_IDENTITY}: auto`)
    const want = autoIdentity(cfg).initContainer
    for (const f of ['image', 'command', 'args', 'env', 'securityContext', 'volumeMounts'] as const) {
      if (!isDeepStrictEqual(enroll[f], want[f])) throw forged(`its ${ENROLL_NAME} container's ${f} is not the one the webhook builds`)
    }
  }
  const validator = (spec.initContainers ?? []).find((c) => c.name === VALIDATOR_NAME)
  if (validator) {
    const want = buildValidator(supplied, cfg)
    for (const f of ['command', 'env', 'securityContext'] as const) {
      if (!isDeepStrictEqual(validator[f], want[f])) throw forged(`its ${VALIDATOR_NAME} container's ${f} is not the one the webhook builds`)
    }
  }
}

/**
 * An UPDATE of a running pod: its cni.openziti.io/ annotations and labels stay as admitted
 * (the agent programs the next sandbox from them), and an ephemeral container added to an
 * injected pod keeps to the preconditions. The ValidatingAdmissionPolicy
 * (deploy/base/policy) holds the same rules for clusters that run it.
 */
export function checkUpdate(old: V1Pod, pod: V1Pod, subResource: string | undefined, cfg: WebhookConfig): void {
  for (const field of ['annotations', 'labels'] as const) {
    const before = old.metadata?.[field] ?? {}
    const after = pod.metadata?.[field] ?? {}
    for (const key of new Set([...Object.keys(before), ...Object.keys(after)])) {
      if (key.startsWith(`${DOMAIN}/`) && before[key] !== after[key]) {
        throw new ValidationError(`metadata.${field}[${key}]`, `cannot change on a running pod: the webhook validated it at creation, and the node agent programs the pod from it at its next sandbox`)
      }
    }
  }
  if (subResource !== 'ephemeralcontainers' || !alreadyInjected(old)) return
  const known = new Set((old.spec?.ephemeralContainers ?? []).map((e) => e.name))
  const added = (pod.spec?.ephemeralContainers ?? []).filter((e) => !known.has(e.name))
  const sidecar = [...(old.spec?.initContainers ?? []), ...(old.spec?.containers ?? [])].find((c) => c.name === SIDECAR_NAME)
  const secretNames = (sidecar?.env ?? []).flatMap((e) => e.valueFrom?.secretKeyRef?.name ?? [])
  checkPreconditions({ ...pod, spec: { ...pod.spec!, initContainers: [], containers: [], ephemeralContainers: added } }, preconditionContext(cfg, secretNames, true))
}
