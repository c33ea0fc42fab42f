// Repair: a pod whose validator reported EXIT_NOT_INTERCEPTED started before this node's
// agent could program it (typically: the plugin was not yet in the CNI config). Deleting it
// lets its controller recreate it, now through the full chain.
import { CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { ANNOTATION_INTERCEPTION, EXIT_NOT_INTERCEPTED, VALIDATOR_NAME } from '@ziti-cni/shared'
export type RepairMode = 'off' | 'delete'

/** Pure: does this pod carry intent and a validator that said "not intercepted"? */
export function needsRepair(pod: V1Pod): boolean {
  if (pod.metadata?.annotations?.[ANNOTATION_INTERCEPTION] === undefined || pod.metadata?.deletionTimestamp) return false
  const status = pod.status?.initContainerStatuses?.find((s) => s.name === VALIDATOR_NAME)
  return [status?.state?.terminated, status?.lastState?.terminated].some((t) => t?.exitCode === EXIT_NOT_INTERCEPTED)
}

export class Repairer {
  private readonly done = new Set<string>()
  private readonly core: CoreV1Api | undefined
  private readonly mode: RepairMode
  private readonly log: Logger
  private readonly count: (action: string) => void

  constructor(kc: KubeConfig, mode: RepairMode, log: Logger, count: (action: string) => void) {
    this.mode = mode
    this.core = mode === 'delete' ? kc.makeApiClient(CoreV1Api) : undefined
    this.log = log.child({ component: 'repair' })
    this.count = count
  }

  async consider(pod: V1Pod): Promise<void> {
    const uid = pod.metadata?.uid
    if (!uid || this.done.has(uid) || !needsRepair(pod)) return
    this.done.add(uid)
    const ref = { pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, uid }
    if (this.mode === 'off') {
      this.log.warn(ref, 'pod runs without interception (its validator failed); repair is off')
      this.count('reported')
      return
    }
    try {
      // The uid precondition makes sure a recreated pod with the same name is never hit.
      await this.core!.deleteNamespacedPod({ name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, body: { preconditions: { uid } } })
      this.log.warn(ref, 'deleted a pod that started without interception; its controller recreates it')
      this.count('deleted')
    } catch (e) {
      this.done.delete(uid)
      this.log.error({ ...ref, err: String(e) }, 'repair by deletion failed')
      this.count('failed')
    }
  }
}
