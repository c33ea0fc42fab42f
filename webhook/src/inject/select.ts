// Which pods get a sidecar. The namespace opt-in is enforced by the webhook configuration's
// namespaceSelector; here we honour the pod override and the pods that must never be touched.
import { ANNOTATION_STATUS, LABEL_INJECT, SIDECAR_NAME } from '@ziti-cni/shared'
import type { V1Pod } from '@kubernetes/client-node'
import { unservedPlatform, unservedVerdict, type UnservedPolicy } from './platform.ts'

export type Selection =
  | { inject: true }
  | { inject: false; reason: string; warning?: string; refuse?: string }

export function selectPod(pod: V1Pod, namespace: string, excluded: string[], unserved: UnservedPolicy = 'skip'): Selection {
  if (excluded.includes(namespace)) return { inject: false, reason: `namespace ${namespace} is excluded` }
  const label = pod.metadata?.labels?.[LABEL_INJECT]
  if (label === 'disabled') return { inject: false, reason: `pod label ${LABEL_INJECT}=disabled` }
  if (pod.metadata?.annotations?.['kubernetes.io/config.mirror'] !== undefined) return { inject: false, reason: 'mirror pod (static pod)' }
  if (pod.spec?.hostNetwork) {
    return {
      inject: false, reason: 'hostNetwork pod',
      warning: `ziti-cni: pod uses hostNetwork, so it shares the node's network namespace; per-pod interception is impossible there and no sidecar was injected`,
    }
  }
  const platform = unservedPlatform(pod)
  if (platform) return { inject: false, reason: `headed for ${platform.platform}`, ...unservedVerdict(platform, unserved, alreadyInjected(pod)) }
  return { inject: true }
}

/** Already injected by us (a reinvocation or a repeated call): nothing to do. */
export function alreadyInjected(pod: V1Pod): boolean {
  const status = pod.metadata?.annotations?.[ANNOTATION_STATUS]
  const containers = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])]
  return status !== undefined && containers.some((c) => c.name === SIDECAR_NAME)
}
