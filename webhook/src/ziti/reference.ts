// What `identity: auto` injects: a reference, never a credential. An init step (the identity
// controller's image, unprivileged) presents the pod's own projected ServiceAccount token,
// audience-bound to the enrollment endpoint, enrolls the one-time JWT it gets back (the key is
// generated in the pod and never leaves it; identity-controller/ott-enroll.ts) and writes the
// identity into the sidecar's memory emptyDir under the name the stock tunneler images load
// (`${ZITI_IDENTITY_DIR}/${ZITI_IDENTITY_BASENAME}.json`, openziti/ziti @804f55a
// dist/docker-images/ziti-tunnel/entrypoint.sh:110-127). Pure: from the config only.
import type { V1Container, V1Volume } from '@kubernetes/client-node'
import { SIDECAR_VOLUME } from '@ziti-cni/shared'
import type { WebhookConfig } from '../config.ts'
import { sidecarSecurityContext } from '../inject/sidecar.ts'

export const ENROLL_NAME = 'ziti-enroll'
export const ENROLL_TOKEN_VOLUME = 'ziti-enroll-token'
export const ENROLL_TOKEN_DIR = '/var/run/secrets/ziti-cni.openziti.io/enroll'
/** The sidecar's ZITI_IDENTITY_BASENAME: the entrypoint loads `<dir>/<basename>.json`. */
export const IDENTITY_BASENAME = 'ziti-cni'

export interface AutoIdentity {
  initContainer: V1Container
  volume: V1Volume
}

export function autoIdentity(cfg: WebhookConfig): AutoIdentity {
  const c = cfg.controller
  return {
    initContainer: {
      name: ENROLL_NAME,
      image: c.enrollImage,
      imagePullPolicy: 'IfNotPresent',
      command: ['node', '/app/enroll.mjs'],
      env: [
        { name: 'ZITI_CNI_ENROLL_URL', value: c.enrollUrl },
        // Public: the CA of the enrollment endpoint, so the token goes only to it.
        { name: 'ZITI_CNI_ENROLL_CA', value: c.enrollCa },
        { name: 'ZITI_CNI_TOKEN_FILE', value: `${ENROLL_TOKEN_DIR}/token` },
        { name: 'ZITI_IDENTITY_DIR', value: cfg.identityDir },
        { name: 'ZITI_IDENTITY_BASENAME', value: IDENTITY_BASENAME },
      ],
      // The sidecar's uid: it writes the identity only the sidecar reads (mode 0600).
      volumeMounts: [
        { name: SIDECAR_VOLUME, mountPath: cfg.identityDir },
        { name: ENROLL_TOKEN_VOLUME, mountPath: ENROLL_TOKEN_DIR, readOnly: true },
      ],
      resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '96Mi' } },
      securityContext: sidecarSecurityContext(cfg),
    },
    // Mounted into the init step only: no other container of the pod sees this token. 0444
    // because the kubelet owns the file by root unless every container shares one uid.
    volume: {
      name: ENROLL_TOKEN_VOLUME,
      projected: { defaultMode: 0o444, sources: [{ serviceAccountToken: { audience: c.tokenAudience, expirationSeconds: c.tokenSeconds, path: 'token' } }] },
    },
  }
}
