// A checker of the Pod Security Standard "restricted" profile (v1.30 rules) over a pod spec,
// so every injected fixture can be judged by the same rules the API server enforces.
import type { V1Container, V1Pod } from '@kubernetes/client-node'

const ALLOWED_VOLUMES = ['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret']

export function restrictedViolations(pod: V1Pod): string[] {
  const v: string[] = []
  const spec = pod.spec!
  const psc = spec.securityContext ?? {}
  const containers: Array<[string, V1Container]> = [
    ...(spec.initContainers ?? []).map((c): [string, V1Container] => [`initContainer ${c.name}`, c]),
    ...spec.containers.map((c): [string, V1Container] => [`container ${c.name}`, c]),
    ...(spec.ephemeralContainers ?? []).map((c): [string, V1Container] => [`ephemeralContainer ${c.name}`, c as V1Container]),
  ]
  // Baseline
  if (spec.hostNetwork || spec.hostPID || spec.hostIPC) v.push('host namespaces')
  for (const vol of spec.volumes ?? []) {
    const kinds = Object.keys(vol).filter((k) => k !== 'name')
    if (!kinds.every((k) => ALLOWED_VOLUMES.includes(k))) v.push(`volume ${vol.name} uses ${kinds.join(',')}`)
  }
  for (const [name, c] of containers) {
    const sc = c.securityContext ?? {}
    if (sc.privileged) v.push(`${name}: privileged`)
    if (c.ports?.some((p) => p.hostPort)) v.push(`${name}: hostPort`)
    if (sc.procMount && sc.procMount !== 'Default') v.push(`${name}: procMount`)
    // Restricted
    if (sc.allowPrivilegeEscalation !== false) v.push(`${name}: allowPrivilegeEscalation != false`)
    const runAsNonRoot = sc.runAsNonRoot ?? psc.runAsNonRoot
    if (runAsNonRoot !== true) v.push(`${name}: runAsNonRoot != true`)
    if ((sc.runAsUser ?? psc.runAsUser) === 0) v.push(`${name}: runAsUser=0`)
    const seccomp = sc.seccompProfile?.type ?? psc.seccompProfile?.type
    if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') v.push(`${name}: seccompProfile not RuntimeDefault/Localhost`)
    if (!(sc.capabilities?.drop ?? []).includes('ALL')) v.push(`${name}: capabilities.drop lacks ALL`)
    const added = (sc.capabilities?.add ?? []).filter((c) => c !== 'NET_BIND_SERVICE')
    if (added.length) v.push(`${name}: adds capabilities ${added.join(',')}`)
  }
  return v
}
