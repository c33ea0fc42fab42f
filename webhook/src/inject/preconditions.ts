// The preconditions of an injected pod: nothing in it but the sidecar may become the sidecar,
// read its identity, or change the pod's network. Pure: pod in, the first violation out, as a
// ValidationError naming the field and the rule. The README's "Admission" section lists each
// rule with its reason; test/preconditions.test.ts holds one test per rule with its message.
import { SIDECAR_NAME, SIDECAR_VOLUME, VALIDATOR_NAME, ValidationError } from '@ziti-cni/shared'
import type { V1Container, V1EphemeralContainer, V1Pod } from '@kubernetes/client-node'
import { ENROLL_NAME, ENROLL_TOKEN_VOLUME } from '../ziti/reference.ts'

export interface PreconditionContext {
  uid: number
  gid: number
  /** The tun extended resource: the injected sidecar's alone. */
  tunResource: string
  /** The Secrets that hold the pod's identity or enrollment token: the sidecar's alone. */
  secretNames: string[]
  /** The pod carries our sidecar and validator already (reinvocation): skip those two. */
  injected: boolean
}

/**
 * What a container holds when it runs as root and drops nothing: the CRI runtime's default
 * set, which Kubernetes passes through (containerd 1.6 `oci/spec.go` defaultUnixCaps; CRI-O
 * drops NET_RAW, MKNOD, SYS_CHROOT from it; Docker's is containerd's). Pod Security
 * "baseline" allows every one of them. Measured on the containerd tier:
 * e2e/node/redteam-admission.test.ts.
 */
export const RUNTIME_DEFAULT_CAPABILITIES = [
  'AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE',
  'NET_RAW', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT',
] as const

/** Every Linux capability (linux/capability.h, 6.x), for `add: [ALL]`. */
export const LINUX_CAPABILITIES = [
  'AUDIT_CONTROL', 'AUDIT_READ', 'AUDIT_WRITE', 'BLOCK_SUSPEND', 'BPF', 'CHECKPOINT_RESTORE', 'CHOWN',
  'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'IPC_LOCK', 'IPC_OWNER', 'KILL', 'LEASE',
  'LINUX_IMMUTABLE', 'MAC_ADMIN', 'MAC_OVERRIDE', 'MKNOD', 'NET_ADMIN', 'NET_BIND_SERVICE',
  'NET_BROADCAST', 'NET_RAW', 'PERFMON', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYSLOG',
  'SYS_ADMIN', 'SYS_BOOT', 'SYS_CHROOT', 'SYS_MODULE', 'SYS_NICE', 'SYS_PACCT', 'SYS_PTRACE',
  'SYS_RAWIO', 'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'WAKE_ALARM',
] as const

/**
 * Capabilities no container of an injected pod but the sidecar may be able to use, each with
 * the way it breaks the promise "nobody in the pod can change the rules or become the sidecar".
 * Allowed (the rest of the runtime default): AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID,
 * KILL, NET_BIND_SERVICE, SETFCAP, SETPCAP, SYS_CHROOT: none of them changes a uid, the
 * netns or another process without the ones below (README "Admission" has the reasoning).
 */
export const REFUSED_CAPABILITIES: Readonly<Record<string, string>> = {
  SETUID: 'setuid() to the sidecar\'s uid escapes interception and the egress lockdown',
  SETGID: 'setgid() to the sidecar\'s gid opens what the sidecar\'s group owns (its tun device)',
  NET_ADMIN: 'rewrites the pod\'s nftables rules, routes and links',
  // test/capabilities.kernel.test.ts: an AF_PACKET frame passes an nft output drop.
  NET_RAW: 'packet sockets send frames that never pass the nftables output hook (the egress lockdown) and read the pod\'s loopback traffic',
  SYS_ADMIN: 'setns, mount and BPF: another netns, the sidecar\'s files, the rules',
  SYS_PTRACE: 'ptrace and /proc/<pid>/environ of the sidecar\'s processes where their pids are visible',
  SYS_MODULE: 'loads kernel code',
  SYS_RAWIO: 'raw device and port I/O',
  BPF: 'loads and replaces BPF programs (the tc redirect of the eBPF datapath)',
  PERFMON: 'with BPF, tracing programs that read other processes\' memory',
  DAC_READ_SEARCH: 'open_by_handle_at opens files by handle, outside the container\'s own mounts',
  MKNOD: 'creates device nodes (/dev/net/tun among them), leaving only the device cgroup between it and the device',
  SYS_BOOT: 'reboots the node',
}

type AnyContainer = V1Container | V1EphemeralContainer

function containersOf(pod: V1Pod): Array<[string, AnyContainer]> {
  const spec = pod.spec
  return [
    ...(spec?.initContainers ?? []).map((c, i): [string, AnyContainer] => [`spec.initContainers[${i}]`, c]),
    ...(spec?.containers ?? []).map((c, i): [string, AnyContainer] => [`spec.containers[${i}]`, c]),
    ...(spec?.ephemeralContainers ?? []).map((c, i): [string, AnyContainer] => [`spec.ephemeralContainers[${i}]`, c]),
  ]
}

/** Root unless a uid other than 0 is set, or runAsNonRoot makes the kubelet refuse root. */
export function mayRunAsRoot(pod: V1Pod, c: AnyContainer): boolean {
  const uid = c.securityContext?.runAsUser ?? pod.spec?.securityContext?.runAsUser
  if (uid !== undefined) return uid === 0
  return (c.securityContext?.runAsNonRoot ?? pod.spec?.securityContext?.runAsNonRoot) !== true
}

/**
 * The capabilities a container can hold: its effective set if it may run as root; its bounding
 * set if a setuid or file-capability binary can raise it (allowPrivilegeEscalation not false:
 * Kubernetes sets no_new_privs only for an explicit false); nothing otherwise (a non-root
 * process gets no ambient capabilities from Kubernetes).
 */
export function reachableCapabilities(pod: V1Pod, c: AnyContainer): string[] {
  if (!mayRunAsRoot(pod, c) && c.securityContext?.allowPrivilegeEscalation === false) return []
  return capabilitySet(c)
}

/**
 * The set the runtime builds, in containerd's order (pkg/cri/opts/spec_linux.go
 * WithCapabilities): add ALL gives every capability, then drop ALL empties the set, then the
 * named ones are added, then the named ones dropped.
 */
export function capabilitySet(c: AnyContainer): string[] {
  const norm = (x: string) => x.toUpperCase().replace(/^CAP_/, '')
  const add = (c.securityContext?.capabilities?.add ?? []).map(norm)
  const drop = (c.securityContext?.capabilities?.drop ?? []).map(norm)
  let set = new Set<string>(add.includes('ALL') ? LINUX_CAPABILITIES : RUNTIME_DEFAULT_CAPABILITIES)
  if (drop.includes('ALL')) set = new Set()
  for (const x of add) if (x !== 'ALL') set.add(x)
  for (const x of drop) set.delete(x)
  return [...set]
}

function checkPodLevel(pod: V1Pod, ctx: PreconditionContext): void {
  const spec = pod.spec
  const why = {
    shareProcessNamespace: 'another container could read the sidecar\'s identity through /proc (its environment and its root)',
    hostPID: 'the node\'s processes, the sidecar\'s among them, would be visible through /proc',
    hostIPC: 'the node\'s IPC namespace is shared with every hostIPC pod on the node',
    hostNetwork: 'the node\'s network namespace cannot be given per-pod interception',
  } as const
  for (const field of ['shareProcessNamespace', 'hostPID', 'hostIPC', 'hostNetwork'] as const) {
    if (spec?.[field] === true) throw new ValidationError(`spec.${field}`, `must not be true in an injected pod: ${why[field]}`)
  }
  const sc = spec?.securityContext
  if (sc?.runAsUser === ctx.uid) throw new ValidationError('spec.securityContext.runAsUser', `${ctx.uid} is the Ziti sidecar's uid; traffic from it is never intercepted, so the app would escape capture`)
  if (sc?.runAsGroup === ctx.gid) throw new ValidationError('spec.securityContext.runAsGroup', `must not be ${ctx.gid}, the Ziti sidecar's gid: its processes would own what the sidecar's group owns`)
  if (sc?.fsGroup === ctx.gid) throw new ValidationError('spec.securityContext.fsGroup', `must not be ${ctx.gid}, the Ziti sidecar's gid: every container would join the sidecar's group`)
  if (sc?.supplementalGroups?.includes(ctx.gid)) throw new ValidationError('spec.securityContext.supplementalGroups', `must not contain ${ctx.gid}, the Ziti sidecar's gid: every container would join the sidecar's group`)
  for (const [i, v] of (spec?.volumes ?? []).entries()) {
    if (v.name === SIDECAR_VOLUME && !ctx.injected) throw new ValidationError(`spec.volumes[${i}].name`, `"${SIDECAR_VOLUME}" is reserved for the Ziti sidecar's identity`)
    if (v.name === ENROLL_TOKEN_VOLUME && !ctx.injected) throw new ValidationError(`spec.volumes[${i}].name`, `"${ENROLL_TOKEN_VOLUME}" is reserved for the enrollment step's ServiceAccount token`)
    const secret = v.secret?.secretName ?? v.projected?.sources?.find((s) => s.secret?.name && ctx.secretNames.includes(s.secret.name))?.secret?.name
    if (secret !== undefined && ctx.secretNames.includes(secret)) {
      throw new ValidationError(`spec.volumes[${i}]`, `must not mount Secret "${secret}": it holds the pod's Ziti identity, which only the injected sidecar may read`)
    }
  }
}

function checkContainer(pod: V1Pod, path: string, c: AnyContainer, ctx: PreconditionContext): void {
  const sc = c.securityContext
  if (sc?.runAsUser === ctx.uid) throw new ValidationError(`${path}.securityContext.runAsUser`, `container "${c.name}" runs as ${ctx.uid}, the Ziti sidecar's uid; its traffic would escape capture`)
  if (sc?.runAsGroup === ctx.gid) throw new ValidationError(`${path}.securityContext.runAsGroup`, `container "${c.name}" must not run as group ${ctx.gid}, the Ziti sidecar's gid`)
  // A debugging tool added to a running pod by someone other than its author: the shape of
  // `kubectl debug --profile=restricted`, as the ValidatingAdmissionPolicy asks.
  if (path.startsWith('spec.ephemeralContainers') && sc?.allowPrivilegeEscalation !== false) {
    throw new ValidationError(`${path}.securityContext.allowPrivilegeEscalation`, `ephemeral container "${c.name}" must set allowPrivilegeEscalation: false in a pod with a Ziti sidecar (kubectl debug --profile=restricted)`)
  }
  if (sc?.privileged === true) throw new ValidationError(`${path}.securityContext.privileged`, `container "${c.name}" must not be privileged in an injected pod: it could change the pod's rules and become the sidecar`)
  const caps = reachableCapabilities(pod, c)
  const refused = Object.keys(REFUSED_CAPABILITIES).filter((x) => caps.includes(x))
  if (refused.length) {
    const how = mayRunAsRoot(pod, c)
      ? 'it may run as root, and Kubernetes keeps the runtime\'s default capabilities unless they are dropped'
      : 'allowPrivilegeEscalation is not false, so a setuid or file-capability binary in its image gains its bounding set'
    throw new ValidationError(`${path}.securityContext.capabilities`, `container "${c.name}" can hold ${refused.join(', ')} (${how}): ${refused.map((x) => `${x} ${REFUSED_CAPABILITIES[x]}`).join('; ')}. Drop them (capabilities.drop: [ALL]), or run it as a non-root uid with allowPrivilegeEscalation: false`)
  }
  // Root without SETUID still owns CHOWN and FOWNER: a file chowned to the sidecar's uid and
  // made setuid runs as that uid, unless no_new_privs ignores the bit.
  if (mayRunAsRoot(pod, c) && sc?.allowPrivilegeEscalation !== false && caps.includes('CHOWN') && caps.includes('FOWNER')) {
    throw new ValidationError(`${path}.securityContext.allowPrivilegeEscalation`, `container "${c.name}" may run as root with CHOWN and FOWNER, so it could make a file setuid to the sidecar's uid ${ctx.uid} and run it; set allowPrivilegeEscalation: false (or drop CHOWN and FOWNER)`)
  }
  for (const [i, m] of (c.volumeMounts ?? []).entries()) {
    if (m.name === SIDECAR_VOLUME) throw new ValidationError(`${path}.volumeMounts[${i}]`, `container "${c.name}" must not mount "${SIDECAR_VOLUME}": it holds the sidecar's enrolled identity`)
    if (m.name === ENROLL_TOKEN_VOLUME) throw new ValidationError(`${path}.volumeMounts[${i}]`, `container "${c.name}" must not mount "${ENROLL_TOKEN_VOLUME}": its token buys the pod's one-time enrollment JWT`)
  }
  for (const [i, d] of (c.volumeDevices ?? []).entries()) {
    if (d.name === SIDECAR_VOLUME) throw new ValidationError(`${path}.volumeDevices[${i}]`, `container "${c.name}" must not use "${SIDECAR_VOLUME}": it holds the sidecar's enrolled identity`)
  }
  for (const [i, e] of (c.env ?? []).entries()) {
    const name = e.valueFrom?.secretKeyRef?.name
    if (name !== undefined && ctx.secretNames.includes(name)) throw new ValidationError(`${path}.env[${i}].valueFrom.secretKeyRef`, `container "${c.name}" must not read Secret "${name}": it holds the pod's Ziti identity, which only the injected sidecar may read`)
  }
  for (const [i, e] of (c.envFrom ?? []).entries()) {
    const name = e.secretRef?.name
    if (name !== undefined && ctx.secretNames.includes(name)) throw new ValidationError(`${path}.envFrom[${i}].secretRef`, `container "${c.name}" must not read Secret "${name}": it holds the pod's Ziti identity, which only the injected sidecar may read`)
  }
  const resources = 'resources' in c ? c.resources : undefined
  for (const kind of ['limits', 'requests'] as const) {
    if (resources?.[kind]?.[ctx.tunResource] !== undefined) {
      throw new ValidationError(`${path}.resources.${kind}`, `container "${c.name}" must not request ${ctx.tunResource}: the tun device is the injected sidecar's alone (one per pod)`)
    }
  }
  if ('targetContainerName' in c && c.targetContainerName === SIDECAR_NAME) {
    throw new ValidationError(`${path}.targetContainerName`, `ephemeral container "${c.name}" must not target the Ziti sidecar: it would share its processes and see its identity`)
  }
}

/** Throws the first violation; returns when every container but ours keeps to the rules. */
export function checkPreconditions(pod: V1Pod, ctx: PreconditionContext): void {
  checkPodLevel(pod, ctx)
  for (const [path, c] of containersOf(pod)) {
    const ours = c.name === SIDECAR_NAME || c.name === VALIDATOR_NAME || c.name === ENROLL_NAME
    if (ours && ctx.injected && !path.startsWith('spec.ephemeralContainers')) continue
    if (ours) throw new ValidationError(`${path}.name`, `"${c.name}" is reserved for the injected Ziti sidecar`)
    checkContainer(pod, path, c, ctx)
  }
}
