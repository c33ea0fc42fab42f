// The injected OpenZiti tunneler container: unprivileged, read-only root, identity from the
// Secret named by the pod (the webhook never reads it), and a startup probe run from inside
// the pod (the fence drops kubelet probes from the node's address by design).
import { SIDECAR_NAME, SIDECAR_VOLUME, VALIDATOR_NAME, type SecretRef } from '@ziti-cni/shared'
import type { V1Container, V1EnvVar, V1SecurityContext, V1Volume } from '@kubernetes/client-node'
import type { WebhookConfig } from '../config.ts'
import type { InterceptionPlan } from './intent.ts'

/** auto: the enrollment init step enrolls and writes the identity JSON into the identity dir (ziti/reference.ts). */
export type IdentitySource = { kind: 'identity' | 'enrollment'; ref: SecretRef } | { kind: 'auto' }

/**
 * The validator runs first, as its own uid with nothing granted: it binds the listener port the
 * rules point at and dials the address the app would (see cni-plugin/src/validator).
 */
export function buildValidator(intentJson: string, cfg: WebhookConfig): V1Container {
  return {
    name: VALIDATOR_NAME,
    image: cfg.validator.image,
    imagePullPolicy: 'IfNotPresent',
    command: ['node', '/opt/ziti-cni/validator.mjs'],
    env: [{ name: 'ZITI_CNI_INTERCEPTION', value: intentJson }],
    resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '96Mi' } },
    securityContext: restrictedSecurityContext(cfg.validator.uid, cfg.validator.uid),
  }
}

/**
 * The startup and liveness probe: the first argument is the sidecar's uid, then `proto:port`
 * pairs. Each port must be bound in the pod's netns (TCP in LISTEN state, UDP bound), and
 * every socket on it must belong to that uid: a port the app took first (after a sidecar
 * restart, or before a regular-container sidecar) fails the probe by name instead of
 * silently receiving the app's Ziti traffic. Read from /proc/net with bash builtins only (the
 * tunneler image ships bash, not ss or netstat); the socket's uid is the 8th field
 * (net/ipv4/tcp_ipv4.c get_tcp4_sock, udp.c udp4_format_sock; the v6 files likewise).
 */
export const LISTENER_PROBE = [
  'uid=$1; shift; missing=; foreign=',
  'for want in "$@"; do',
  '  proto=${want%%:*}; port=${want#*:}; printf -v hex %04X "$port"; found=',
  '  for f in /proc/net/$proto /proc/net/${proto}6; do',
  '    [[ -r $f ]] || continue',
  '    while read -r _ local _ st _ _ _ owner _; do',
  '      [[ $local == *:$hex && ( $proto == udp || $st == 0A ) ]] || continue',
  '      if [[ $owner == "$uid" ]]; then found=1; else foreign+=" $proto/$port(uid $owner)"; fi',
  '    done < "$f"',
  '  done',
  '  [[ -n $found ]] || missing+=" $proto/$port"',
  'done',
  '[[ -z $foreign ]] || { echo "not the ziti-tunnel sidecar (uid $uid) but another uid holds:$foreign"; exit 1; }',
  '[[ -z $missing ]] || { echo "ziti-tunnel is not listening on:$missing"; exit 1; }',
].join('\n')

/**
 * The stock image's entrypoint (openziti/ziti dist/docker-images/ziti-tunnel/Dockerfile:
 * ENTRYPOINT ["/entrypoint.sh"]) writes the identity with the process umask, 0644 under the
 * runtime's 022. Run it under umask 077 so the identity file is 0600: only the sidecar's uid
 * reads it, whatever else comes to share the emptyDir.
 */
export const PROXY_ENTRYPOINT = ['bash', '-c', 'umask 077 && exec /entrypoint.sh "$@"', 'ziti-tunnel']

/** tun: attached means carrier (a tun without a reader has none); read from sysfs, no tools. */
export const TUN_PROBE = [
  'read -r carrier < "/sys/class/net/$1/carrier" 2>/dev/null || { echo "no device $1 in this pod"; exit 1; }',
  '[[ $carrier == 1 ]] || { echo "ziti-edge-tunnel has not attached to $1 yet"; exit 1; }',
].join('\n')

/**
 * One uid and nothing else: no capability (the eBPF datapath hands connections to plain
 * listeners, so not even the sidecar needs one), Pod Security restricted.
 */
function restrictedSecurityContext(uid: number, gid: number): V1SecurityContext {
  return {
    runAsUser: uid,
    runAsGroup: gid,
    runAsNonRoot: true,
    allowPrivilegeEscalation: false,
    readOnlyRootFilesystem: true,
    privileged: false,
    capabilities: { drop: ['ALL'] },
    seccompProfile: { type: 'RuntimeDefault' },
  }
}

/** The sidecar's; the enrollment step (identity: auto) runs with it too. */
export function sidecarSecurityContext(cfg: WebhookConfig): V1SecurityContext {
  return restrictedSecurityContext(cfg.sidecarUid, cfg.sidecarGid)
}

export function sidecarVolume(): V1Volume {
  return { name: SIDECAR_VOLUME, emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } }
}

export function buildSidecar(plan: InterceptionPlan, identity: IdentitySource, cfg: WebhookConfig): V1Container {
  const env: V1EnvVar[] = [
    // The image's entrypoint writes the identity under ZITI_IDENTITY_DIR; with a read-only
    // root that (and HOME) must be the emptyDir.
    { name: 'ZITI_IDENTITY_DIR', value: cfg.identityDir },
    { name: 'HOME', value: cfg.identityDir },
    // The entrypoint's current name for it (NF_REG_NAME is deprecated, entrypoint.sh:42-50).
    { name: 'ZITI_IDENTITY_BASENAME', value: 'ziti-cni' },
  ]
  if (identity.kind === 'identity') env.push({ name: 'ZITI_IDENTITY_JSON', valueFrom: { secretKeyRef: { name: identity.ref.name, key: identity.ref.key ?? cfg.identitySecretKey } } })
  else if (identity.kind === 'enrollment') env.push({ name: 'ZITI_ENROLL_TOKEN', valueFrom: { secretKeyRef: { name: identity.ref.name, key: identity.ref.key ?? cfg.enrollmentSecretKey } } })
  // auto: no env; the entrypoint loads <dir>/ziti-cni.json, which the init step enrolled and
  // wrote before this container started (entrypoint.sh:110-127); a restart loads it again.
  let image: string
  let args: string[]
  if (plan.mode === 'proxy') {
    image = cfg.proxy.image
    // --svcPollRate: without it proxy mode never re-polls (ziti/tunnel/proxy.go:41-43), so a
    // service granted later would need a restart. --cli-agent=false: its unix socket goes to
    // os.TempDir(), which the read-only root refuses (ziti/tunnel/root.go:134-151).
    // One argument per service: the tunneler keys them by name (proxy.go:132); a service
    // whose proxy.v1 lists both protocols gets both from that config, not from here.
    const named = new Set<string>()
    const first = plan.listeners.filter((l) => !named.has(l.service) && named.add(l.service))
    args = ['proxy', `--svcPollRate=${cfg.proxy.servicePollSeconds}`, '--cli-agent=false', ...first.map((l) => `${l.service}:${l.port}${l.proto === 'udp' ? ':udp' : ''}`)]
  } else if (plan.mode === 'tun') {
    image = cfg.tun.image
    // ziti-edge-tunnel's tun address is the first of --dns-ip-range; the CNI made it so.
    // --dns-upstream takes one address (ziti-edge-tunnel.c:1006-1011 passes an array of one to
    // ziti_dns_set_upstream); names it does not serve are relayed there over UDP (ziti_dns.c
    // query_upstream), so the pod needs no second nameserver.
    args = [...cfg.tun.args, '--dns-ip-range', cfg.tun.addr, ...(plan.dnsUpstream?.length ? ['--dns-upstream', plan.dnsUpstream[0]!] : [])]
    env.push({ name: 'ZITI_TUN_DEV', value: cfg.tun.dev })
  } else {
    image = cfg.tproxy.image
    args = [...cfg.tproxy.args]
    const intent = plan.intent as Extract<InterceptionPlan['intent'], { mode: 'tproxy' }>
    env.push(
      { name: 'ZITI_CNI_DATAPATH', value: intent.datapath },
      { name: 'ZITI_CNI_TPROXY_PORT', value: String(intent.to) },
      { name: 'ZITI_CNI_INTERCEPT_CIDRS', value: intent.cidrs.join(',') },
      ...(intent.dns !== undefined ? [{ name: 'ZITI_CNI_DNS_PORT', value: String(intent.dns) }] : []),
      ...(plan.dnsServer ? [{ name: 'ZITI_CNI_DNS_SERVER', value: plan.dnsServer }] : []),
      // Contract item 5: forward every other name there (the pod lists the tunneler alone).
      ...(plan.dnsUpstream?.length ? [{ name: 'ZITI_CNI_DNS_UPSTREAM', value: plan.dnsUpstream.join(',') }] : []),
    )
  }
  const probeTargets = plan.mode === 'proxy'
    ? plan.listeners.map((l) => `${l.proto}:${l.port}`)
    : plan.mode === 'tproxy' ? (plan.intent as Extract<InterceptionPlan['intent'], { mode: 'tproxy' }>).proto.map((p) => `${p}:${plan.ports[0]}`) : []
  // tun: the device has carrier once a process holds it open (TUNSETIFF done).
  const probe = plan.mode === 'tun'
    ? ['bash', '-c', TUN_PROBE, 'ziti-cni-probe', cfg.tun.dev]
    : ['bash', '-c', LISTENER_PROBE, 'ziti-cni-probe', String(cfg.sidecarUid), ...probeTargets]
  const container: V1Container = {
    name: SIDECAR_NAME,
    image,
    imagePullPolicy: 'IfNotPresent',
    ...(plan.mode === 'proxy' ? { command: PROXY_ENTRYPOINT } : {}),
    args,
    env,
    volumeMounts: [{ name: SIDECAR_VOLUME, mountPath: cfg.identityDir }],
    // tun: the device comes from the agent's device plugin, as an extended resource (in limits;
    // requests default to them).
    resources: {
      ...(cfg.resources.requests ? { requests: { ...cfg.resources.requests } } : {}),
      ...(cfg.resources.limits || plan.mode === 'tun' ? { limits: { ...cfg.resources.limits, ...(plan.mode === 'tun' ? { [cfg.tun.resource]: '1' } : {}) } } : {}),
    },
    securityContext: sidecarSecurityContext(cfg),
    // The app starts only once every listener is up (native sidecars gate later containers on
    // their startup probe); kubelet probes come from the node and the fence drops them.
    startupProbe: {
      exec: { command: probe },
      periodSeconds: 1,
      timeoutSeconds: 2,
      failureThreshold: 120,
    },
    // Later on, a listener that vanished or changed hands restarts the sidecar.
    livenessProbe: {
      exec: { command: probe },
      periodSeconds: 10,
      timeoutSeconds: 2,
      failureThreshold: 3,
    },
  }
  if (cfg.nativeSidecar) container.restartPolicy = 'Always'
  return container
}

