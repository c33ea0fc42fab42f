// The injected OpenZiti tunneler container: unprivileged, read-only root, identity from the
// Secret named by the pod (the webhook never reads it), and a startup probe run from inside
// the pod (the fence drops kubelet probes from the node's address by design).
import { SIDECAR_NAME, SIDECAR_VOLUME, VALIDATOR_NAME, type SecretRef } from '@ziti-cni/shared'
import type { V1Container, V1EnvVar, V1Volume } from '@kubernetes/client-node'
import type { WebhookConfig } from '../config.ts'
import type { InterceptionPlan } from './intent.ts'

export interface IdentitySource {
  kind: 'identity' | 'enrollment'
  ref: SecretRef
}

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
    securityContext: {
      runAsUser: cfg.validator.uid,
      runAsGroup: cfg.validator.uid,
      runAsNonRoot: true,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      privileged: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
  }
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
    { name: 'NF_REG_NAME', value: 'ziti-cni' },
    identity.kind === 'identity'
      ? { name: 'ZITI_IDENTITY_JSON', valueFrom: { secretKeyRef: { name: identity.ref.name, key: identity.ref.key ?? cfg.identitySecretKey } } }
      : { name: 'ZITI_ENROLL_TOKEN', valueFrom: { secretKeyRef: { name: identity.ref.name, key: identity.ref.key ?? cfg.enrollmentSecretKey } } },
  ]
  let image: string
  let args: string[]
  const capabilities: { drop: string[]; add?: string[] } = { drop: ['ALL'] }
  if (plan.mode === 'proxy') {
    image = cfg.proxy.image
    args = ['proxy', ...plan.listeners.map((l) => `${l.service}:${l.port}${l.proto === 'udp' ? ':udp' : ''}`)]
  } else {
    image = cfg.tproxy.image
    args = [...cfg.tproxy.args]
    const intent = plan.intent as Extract<InterceptionPlan['intent'], { mode: 'tproxy' }>
    env.push(
      { name: 'ZITI_CNI_DATAPATH', value: intent.datapath },
      { name: 'ZITI_CNI_TPROXY_PORT', value: String(intent.to) },
      { name: 'ZITI_CNI_INTERCEPT_CIDRS', value: intent.cidrs.join(',') },
      ...(intent.dns !== undefined ? [{ name: 'ZITI_CNI_DNS_PORT', value: String(intent.dns) }] : []),
    )
    // The eBPF datapath hands connections to a plain listener: no capability at all.
    if (intent.datapath === 'nftables' && cfg.tproxy.addCapabilities.length) capabilities.add = [...cfg.tproxy.addCapabilities]
  }
  const probePort = plan.ports[0]!
  const container: V1Container = {
    name: SIDECAR_NAME,
    image,
    imagePullPolicy: 'IfNotPresent',
    args,
    env,
    volumeMounts: [{ name: SIDECAR_VOLUME, mountPath: cfg.identityDir }],
    resources: { ...(cfg.resources.requests ? { requests: { ...cfg.resources.requests } } : {}), ...(cfg.resources.limits ? { limits: { ...cfg.resources.limits } } : {}) },
    securityContext: {
      runAsUser: cfg.sidecarUid,
      runAsGroup: cfg.sidecarGid,
      runAsNonRoot: true,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      privileged: false,
      capabilities,
      seccompProfile: { type: 'RuntimeDefault' },
    },
    // The app starts only once the tunneler listens (native sidecars gate later containers
    // on their startup probe). The image ships bash; /dev/tcp needs no extra tool.
    startupProbe: {
      exec: { command: ['bash', '-c', `exec 3<>/dev/tcp/127.0.0.1/${probePort}`] },
      periodSeconds: 1,
      timeoutSeconds: 2,
      failureThreshold: 120,
    },
  }
  if (cfg.nativeSidecar) container.restartPolicy = 'Always'
  return container
}

