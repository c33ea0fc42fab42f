// Pod manifests and in-pod actions for the node suites. Every process runs in a container of
// the pod (runc, the pod's own security context), reached with CRI ExecSync like `kubectl exec`.
import type { V1OwnerReference, V1Pod } from '@kubernetes/client-node'
import { IMAGES } from './test-images.ts'
import type { TestNode } from './node.ts'
import type { RunningPod } from './kubelet.ts'

export const APP_UID = 1000
export const STANDINS = '/opt/zcni/standins'

/** An app pod that passes Pod Security "restricted" on its own. */
export function appPod(name: string, namespace: string, annotations: Record<string, string> = {}, extra: { ownerReferences?: V1OwnerReference[] } = {}): V1Pod & { metadata: { name: string; namespace: string } } {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name, namespace, annotations, ...extra },
    spec: {
      securityContext: { runAsNonRoot: true, runAsUser: APP_UID, runAsGroup: APP_UID, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [{ name: 'app', image: IMAGES.tools, securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }],
    },
  }
}

/**
 * The cluster's "other" pod: a plain TCP server on its pod IP and the cluster DNS (answers
 * every A query with 192.0.2.53). Port 53 as a non-root user comes from the safe sysctl
 * net.ipv4.ip_unprivileged_port_start, as CoreDNS deployments do.
 */
export function infraPod(): V1Pod & { metadata: { name: string; namespace: string } } {
  const sc = { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: 'infra', namespace: 'plain' },
    spec: {
      securityContext: { runAsNonRoot: true, runAsUser: 3000, runAsGroup: 3000, seccompProfile: { type: 'RuntimeDefault' }, sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }] },
      containers: [
        { name: 'echo', image: IMAGES.tools, command: ['node', `${STANDINS}/echo-server.ts`, '$(POD_IP)', '8080'], env: [{ name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } }], securityContext: sc },
        { name: 'dns', image: IMAGES.tools, command: ['node', `${STANDINS}/dns-server.ts`, '0.0.0.0', '53', '192.0.2.53'], securityContext: sc },
      ],
    },
  }
}

export interface AppResult { ok: boolean; resolved?: string; reply?: string; error?: string; answers?: string[]; rcode?: string }

/** The app client in a container of the pod (default: the app container, uid 1000, no caps). */
export async function app(node: TestNode, rp: RunningPod, args: string[], container = 'app'): Promise<AppResult> {
  const r = await node.exec(rp, container, ['node', `${STANDINS}/app-client.ts`, ...args], 20)
  try { return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as AppResult } catch { return { ok: false, error: `no JSON (exit ${r.code}): ${r.stdout}${r.stderr}` } }
}

/** A pod's injected container by name. */
export function injected(pod: V1Pod, name: string) {
  const c = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find((x) => x.name === name)
  if (!c) throw new Error(`pod ${pod.metadata?.name} has no container ${name}`)
  return c
}

export async function inBatches<T>(jobs: Array<() => Promise<T>>, size: number): Promise<T[]> {
  const out: T[] = []
  for (let i = 0; i < jobs.length; i += size) out.push(...await Promise.all(jobs.slice(i, i + size).map((j) => j())))
  return out
}
