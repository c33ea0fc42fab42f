// The pure core of injection: pod in, mutated pod (or a ValidationError naming the key and
// the problem) out. Both /mutate and the offline `inject` command run exactly this.
import {
  ANNOTATION_DNS_CAPTURE, ANNOTATION_ENROLLMENT_SECRET, ANNOTATION_IDENTITY, ANNOTATION_IDENTITY_ID, ANNOTATION_IDENTITY_NAME, ANNOTATION_IDENTITY_SECRET, ANNOTATION_INTERCEPTION,
  ANNOTATION_MODE, ANNOTATION_ROLE_ATTRIBUTES, ANNOTATION_SERVICES, ANNOTATION_STATUS, AUTO, LABEL_AUTO_IDENTITY, SIDECAR_NAME, SIDECAR_VOLUME,
  USER_ANNOTATIONS, VALIDATOR_NAME, ValidationError, parseSecretRef, serializeIntent,
} from '@ziti-cni/shared'
import type { V1Container, V1HostAlias, V1Pod } from '@kubernetes/client-node'
import jsonpatch, { type Operation } from 'fast-json-patch'
import type { WebhookConfig } from '../config.ts'
import { clusterDnsUnknown } from '../cluster-dns.ts'
import { planInterception, type InterceptionPlan } from './intent.ts'
import { buildSidecar, buildValidator, sidecarVolume, type IdentitySource } from './sidecar.ts'
import { parseRoleAttributes } from '../ziti/identity.ts'
import type { AutoServices } from '../ziti/services.ts'

/** What the controller gave a pod with `identity: auto`, for the pure mutation. */
export interface ControllerGrant {
  identityId: string
  identityName: string
  /** The per-pod Secret holding the enrollment JWT (key ENROLLMENT_TOKEN_KEY). */
  secretName: string
  /** The dialable services as proxy entries (undefined: the pod lists its own, or tproxy). */
  services: AutoServices | undefined
}

/** The key of the per-pod enrollment Secret. */
export const ENROLLMENT_TOKEN_KEY = 'token.jwt'

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

/** True when an auto pod's services come from the controller (proxy mode, no list of its own). */
export function wantsAutoServices(annotations: Record<string, string>, cfg: WebhookConfig): boolean {
  const mode = annotations[ANNOTATION_MODE]?.trim() ?? cfg.defaultMode
  const services = annotations[ANNOTATION_SERVICES]
  return mode === 'proxy' && (services === undefined || services === AUTO)
}

function identitySource(annotations: Record<string, string>, grant: ControllerGrant | undefined): IdentitySource {
  const id = annotations[ANNOTATION_IDENTITY_SECRET]
  const enroll = annotations[ANNOTATION_ENROLLMENT_SECRET]
  const auto = annotations[ANNOTATION_IDENTITY]
  if (auto !== undefined) {
    if (auto !== AUTO) throw new ValidationError(ANNOTATION_IDENTITY, `must be "auto" (the webhook creates the pod's identity through the OpenZiti controller); for an identity you enrolled yourself, use ${ANNOTATION_IDENTITY_SECRET}`)
    if (id !== undefined || enroll !== undefined) throw new ValidationError(ANNOTATION_IDENTITY, `set either ${ANNOTATION_IDENTITY}: auto or a Secret (${id !== undefined ? ANNOTATION_IDENTITY_SECRET : ANNOTATION_ENROLLMENT_SECRET}), not both`)
    parseRoleAttributes(annotations[ANNOTATION_ROLE_ATTRIBUTES])
    if (!grant) throw new ValidationError(ANNOTATION_IDENTITY, 'needs the OpenZiti controller, and this webhook has none configured (webhook config controller.url)')
    return { kind: 'auto', ref: { name: grant.secretName, key: ENROLLMENT_TOKEN_KEY } }
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
    if (c.name === SIDECAR_NAME || c.name === VALIDATOR_NAME) throw new ValidationError(`${path}.name`, `"${c.name}" is reserved for the injected Ziti sidecar`)
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

/**
 * tproxy DNS: the tunneler's address first, the cluster DNS after it, the usual search path.
 * glibc moves to the next server on REFUSED or SERVFAIL, and musl ignores those answers while
 * it waits for another server's: a tunneler answering REFUSED for names it does not own never
 * breaks the pod's other lookups. Returns a warning when the pod's own DNS settings win.
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
    nameservers: [plan.dnsServer, ...cfg.tproxy.clusterDns].slice(0, 3),
    searches: [`${ns}.svc.${domain}`, `svc.${domain}`, domain],
    options: [{ name: 'ndots', value: '5' }],
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

function prepare(annotations: Record<string, string>, identity: IdentitySource, hostAliases: V1HostAlias[], cfg: WebhookConfig, grant?: ControllerGrant): Prepared {
  const plan = planInterception(annotations, hostAliases, cfg, grant?.services)
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
      ...(grant ? { [ANNOTATION_IDENTITY_ID]: grant.identityId, [ANNOTATION_IDENTITY_NAME]: grant.identityName } : {}),
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
  get(annotations: Record<string, string>, identity: IdentitySource, hostAliases: V1HostAlias[], cfg: WebhookConfig): Prepared {
    // The validator image follows the agent DaemonSet at run time: part of the key.
    const key = JSON.stringify([USER_ANNOTATIONS.map((k) => annotations[k] ?? null), hostAliases, cfg.validator.image])
    const hit = this.entries.get(key)
    if (hit) {
      this.hits++
      this.entries.delete(key)
      this.entries.set(key, hit)
      return hit
    }
    const { encoded, ...rest } = prepare(annotations, identity, hostAliases, cfg)
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
export function mutatePod(original: V1Pod, cfg: WebhookConfig, cache?: InjectionCache, grant?: ControllerGrant): MutationResult {
  const spec = original.spec ?? { containers: [] }
  const annotations = original.metadata?.annotations ?? {}
  const hostAliases = spec.hostAliases ?? []
  // Identity first: a pod without one is refused before anything else is looked at.
  const identity = identitySource(annotations, grant)
  checkSingleUseToken(original, identity)
  checkUids(original, cfg.sidecarUid)
  // A grant is one pod's own: nothing to share with other pods, so no cache.
  const { plan, sidecar, validator, aliases, owned, encoded } = cache && !grant ? cache.get(annotations, identity, hostAliases, cfg) : prepare(annotations, identity, hostAliases, cfg, grant)
  checkPorts(original, plan)

  const ops: Operation[] = []
  const prepend = (path: string, list: unknown[] | undefined, value: unknown) =>
    ops.push(list ? { op: 'add', path: `${path}/0`, value } : { op: 'add', path, value: [value] })
  const append = (path: string, list: unknown[] | undefined, values: unknown[]) => {
    if (!list) ops.push({ op: 'add', path, value: values })
    else for (const value of values) ops.push({ op: 'add', path: `${path}/-`, value })
  }
  // Init order: validator, then the (native) sidecar, then the app's own init containers.
  const inits = [...(validator ? [validator] : []), ...(cfg.nativeSidecar ? [sidecar] : [])]
  if (!spec.initContainers && inits.length) ops.push({ op: 'add', path: '/spec/initContainers', value: inits })
  else inits.forEach((c, i) => ops.push({ op: 'add', path: `/spec/initContainers/${i}`, value: c }))
  if (!cfg.nativeSidecar) prepend('/spec/containers', spec.containers, sidecar)
  append('/spec/volumes', spec.volumes, [sidecarVolume()])
  if (aliases.length) append('/spec/hostAliases', spec.hostAliases, aliases)
  const dnsWarning = dnsOps(original, plan, cfg, ops)
  if (plan.mode === 'tproxy') lowPortOps(original, ops)
  // Owned by the webhook: whatever the user put there is replaced (`add` replaces a member).
  if (!original.metadata?.annotations) ops.push({ op: 'add', path: '/metadata/annotations', value: owned })
  else for (const [k, v] of Object.entries(owned)) ops.push({ op: 'add', path: `/metadata/annotations/${pointerEscape(k)}`, value: v })
  // The reconciler lists pods with auto identities by this label (pods cannot be listed by annotation).
  if (grant) {
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
  let patch = grant ? undefined : encoded.get(shape)
  if (patch === undefined) {
    patch = Buffer.from(JSON.stringify(ops)).toString('base64')
    if (!grant) encoded.set(shape, patch)
  }
  return { ops, patch, plan, warnings }
}

/** The pod after a patch (the offline command and tests; /mutate never needs it). */
export function applyMutation(original: V1Pod, ops: Operation[]): V1Pod {
  return jsonpatch.applyPatch(structuredClone(original), ops, true, false).newDocument
}
