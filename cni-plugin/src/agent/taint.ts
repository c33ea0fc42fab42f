// Nodes that join later (Karpenter, cluster-autoscaler): pods may land before the agent has
// installed the plugin, and the validator then fails them closed. A node may join with a
// startup taint (Karpenter `startupTaints`, the kubelet's `--register-with-taints`, an EKS node
// group taint) that keeps pods off it; the agent removes it from ITS OWN node once the plugin
// is installed and the agent is ready (istio-cni does the same: istio PR #48818). The
// deploy/components/startup-taint component grants the patch and confines it with a
// ValidatingAdmissionPolicy: the agent may only remove this taint, only from the node its
// bound token names. Pure patch first, then the thin remover.
import type { V1Node, V1Taint } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { seg, type KubeClient } from './kube.ts'

export const STARTUP_TAINT = 'cni.openziti.io/agent-not-ready'

/**
 * The JSON patch that removes taint `key` (any effect) and nothing else, guarded by a `test` of
 * the list it read: a concurrent change to the taints fails the patch instead of being undone.
 * Undefined when the node does not carry it.
 */
export function untaintPatch(node: V1Node, key: string): Array<{ op: 'test' | 'replace' | 'remove'; path: string; value?: V1Taint[] }> | undefined {
  const taints = node.spec?.taints ?? []
  if (!taints.some((t) => t.key === key)) return undefined
  const rest = taints.filter((t) => t.key !== key)
  return [{ op: 'test', path: '/spec/taints', value: taints }, rest.length ? { op: 'replace', path: '/spec/taints', value: rest } : { op: 'remove', path: '/spec/taints' }]
}

/**
 * Waits for `ready`, then removes the taint from `nodeName`, retrying (a failed test, the API
 * away) every `retryMs` until the node no longer has it. Returns the stop function.
 */
export function startTaintRemoval(kube: KubeClient, nodeName: string, key: string, log: Logger, ready: () => boolean, retryMs = 2_000): { stop: () => void; done: Promise<void> } {
  const path = `/api/v1/nodes/${seg(nodeName)}`
  const l = log.child({ component: 'startup-taint', taint: key })
  let stopped = false
  let timer: NodeJS.Timeout | undefined
  const done = new Promise<void>((resolve) => {
    const attempt = async () => {
      if (stopped) return resolve()
      if (ready()) {
        try {
          const node = await kube.json<V1Node>('GET', path)
          const patch = untaintPatch(node, key)
          if (!patch) { l.info('node carries no startup taint (or no longer)'); return resolve() }
          await kube.json('PATCH', path, { body: patch, contentType: 'application/json-patch+json' })
          l.info('plugin installed and agent ready: removed the startup taint from this node')
          return resolve()
        } catch (e) {
          l.warn({ err: String(e) }, 'cannot remove the startup taint yet; retrying')
        }
      }
      timer = setTimeout(() => void attempt(), retryMs)
      timer.unref()
    }
    void attempt()
  })
  return { stop: () => { stopped = true; if (timer) clearTimeout(timer) }, done }
}
