// Writes the node-local intent snapshot (cni/intent-snapshot.ts) from the pod cache's events:
// one bit per pod of this node, root-only, replaced atomically, debounced. The CNI executable
// reads it only while the agent is down, and passes a pod through only when it is listed here
// without intent; so a pod missing here (deleted long ago, or not seen yet) fails closed.
import type { V1Pod } from '@kubernetes/client-node'
import { ANNOTATION_INTERCEPTION } from '@ziti-cni/shared'
import { renderSnapshot, type SnapshotEntry } from '../cni/intent-snapshot.ts'
import { writeAtomic } from '../install/installer.ts'

/** A node runs at most a few hundred pods (kubelet maxPods 110 by default); older entries age out. */
const MAX_ENTRIES = 4096

export function snapshotEntry(pod: V1Pod): SnapshotEntry | undefined {
  const m = pod.metadata
  if (!m?.namespace || !m.name || !m.uid) return undefined
  // Present at all counts as intent: a malformed one fails closed too.
  return { namespace: m.namespace, name: m.name, uid: m.uid, intent: m.annotations?.[ANNOTATION_INTERCEPTION] !== undefined }
}

export class SnapshotWriter {
  private readonly byUid = new Map<string, SnapshotEntry>()
  private timer: NodeJS.Timeout | undefined
  private readonly path: string
  private readonly node: string
  private readonly debounceMs: number

  constructor(path: string, node: string, debounceMs = 50) {
    this.path = path
    this.node = node
    this.debounceMs = debounceMs
  }

  /** From the pod cache's add/update events. */
  observe(pod: V1Pod): void {
    const e = snapshotEntry(pod)
    if (!e) return
    const old = this.byUid.get(e.uid)
    if (old && old.intent === e.intent) return
    this.byUid.delete(e.uid)
    this.byUid.set(e.uid, e)
    while (this.byUid.size > MAX_ENTRIES) this.byUid.delete(this.byUid.keys().next().value!)
    this.timer ??= setTimeout(() => this.flush(), this.debounceMs)
  }

  /** Writes now (at start, before the plugin is inserted, and on shutdown). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    writeAtomic(this.path, renderSnapshot({ v: 1, state: 'installed', node: this.node, pods: [...this.byUid.values()] }), 0o600)
  }
}
