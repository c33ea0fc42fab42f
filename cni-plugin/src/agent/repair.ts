// Repair: a pod whose validator reported EXIT_NOT_INTERCEPTED started before this node's
// agent could program it (typically: the plugin was not yet in the CNI config). Deleting it
// lets its controller recreate it, now through the full chain. Off by default, as istio's
// `deletePods`: deleting pods needs a ClusterRole that can delete any pod, and that token sits
// on every node. When on, it is bounded: only pods on this node, only once this node's CNI
// config carries ziti-cni (otherwise the recreated pod would fail the same way, in a loop), and
// at most `maxPerMinute` deletions a minute.
import type { V1Pod } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { ANNOTATION_INTERCEPTION, EXIT_NOT_INTERCEPTED, VALIDATOR_NAME } from '@ziti-cni/shared'
export type RepairMode = 'off' | 'delete'

/** Pure: does this pod carry intent and a validator that said "not intercepted"? */
export function needsRepair(pod: V1Pod): boolean {
  if (pod.metadata?.annotations?.[ANNOTATION_INTERCEPTION] === undefined || pod.metadata?.deletionTimestamp) return false
  const status = pod.status?.initContainerStatuses?.find((s) => s.name === VALIDATOR_NAME)
  return [status?.state?.terminated, status?.lastState?.terminated].some((t) => t?.exitCode === EXIT_NOT_INTERCEPTED)
}

export interface RepairerOptions {
  mode: RepairMode
  nodeName: string
  /** True once this node's primary CNI config carries ziti-cni. */
  installed: () => boolean
  /** Deletes with a uid precondition, so a recreated pod of the same name is never hit. */
  deletePod: (namespace: string, name: string, uid: string) => Promise<void>
  maxPerMinute: number
  log: Logger
  count: (action: string) => void
  /** What repair did to a pod, for its user to see (an Event on the pod). */
  onAction?: (pod: V1Pod, action: 'reported' | 'deleted' | 'failed', message: string) => void
  now?: () => number
}

export class Repairer {
  private readonly done = new Set<string>()
  /** Pods waiting for the installer or for the rate limit, re-tried by `tick()`. */
  private readonly pending = new Map<string, V1Pod>()
  private readonly recent: number[] = []
  private readonly o: RepairerOptions
  private readonly log: Logger

  constructor(o: RepairerOptions) {
    this.o = o
    this.log = o.log.child({ component: 'repair' })
  }

  async consider(pod: V1Pod): Promise<void> {
    const uid = pod.metadata?.uid
    if (!uid || this.done.has(uid) || !needsRepair(pod)) return
    if (pod.spec?.nodeName !== this.o.nodeName) return
    const ref = { pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, uid }
    if (this.o.mode === 'off') {
      this.done.add(uid)
      this.log.warn(ref, 'pod runs without interception (its validator failed); repair is off: delete it to have it recreated through ziti-cni')
      this.o.count('reported')
      this.o.onAction?.(pod, 'reported', 'the pod runs without Ziti interception (its validator init container failed) and repair is off: delete it to have it recreated through ziti-cni')
      return
    }
    if (!this.o.installed()) {
      if (!this.pending.has(uid)) this.log.warn(ref, 'pod runs without interception; waiting for ziti-cni to be in this node\'s CNI config before deleting it')
      this.pending.set(uid, pod)
      return
    }
    const now = (this.o.now ?? Date.now)()
    while (this.recent.length && now - this.recent[0]! > 60_000) this.recent.shift()
    if (this.recent.length >= this.o.maxPerMinute) {
      this.pending.set(uid, pod)
      this.o.count('deferred')
      return
    }
    this.recent.push(now)
    this.pending.delete(uid)
    this.done.add(uid)
    try {
      await this.o.deletePod(pod.metadata!.namespace!, pod.metadata!.name!, uid)
      this.log.warn(ref, 'deleted a pod that started without interception; its controller recreates it')
      this.o.count('deleted')
      this.o.onAction?.(pod, 'deleted', 'ziti-cni deleted the pod: it started without Ziti interception (its validator init container failed); its controller recreates it')
    } catch (e) {
      // Gone, or a new pod by that name (the uid precondition): nothing left to repair.
      const code = (e as { code?: number }).code
      if (code === 404 || code === 409) return
      // A busy API server (429), a 5xx, no connection: tick() tries again.
      this.done.delete(uid)
      this.pending.set(uid, pod)
      this.log.error({ ...ref, err: String(e) }, 'repair by deletion failed; retrying')
      this.o.count('failed')
      this.o.onAction?.(pod, 'failed', `the pod runs without Ziti interception and ziti-cni could not delete it: ${String(e)}`)
    }
  }

  /** Re-considers pods that waited (call periodically). */
  async tick(): Promise<void> {
    for (const pod of [...this.pending.values()]) await this.consider(pod)
  }
}
