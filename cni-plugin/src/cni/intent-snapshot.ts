// The node-local intent snapshot: which pods bound to this node carry interception intent.
// The agent writes it (root-only) from its node-scoped pod cache; the CNI executable reads it
// only when the agent is unreachable. It replaces any API credential on the node's disk: the
// worst a node compromise reads here is the names and uids of this node's own pods and one bit
// each, which the kubelet's own credential reveals anyway. Pure: format, parse, decide.
import type { PodRef } from './spec.ts'

export const SNAPSHOT_VERSION = 1

export interface SnapshotEntry {
  namespace: string
  name: string
  uid: string
  intent: boolean
}

/** `uninstalled` is the tombstone the uninstall writes before it takes the plugin out. */
export type IntentSnapshot =
  | { v: 1; state: 'installed'; node: string; pods: SnapshotEntry[] }
  | { v: 1; state: 'uninstalled' }

export function renderSnapshot(s: IntentSnapshot): string {
  return JSON.stringify(s) + '\n'
}

/** Parses the file; a problem (never a guess) when it is not exactly what the agent writes. */
export function parseSnapshot(text: string): IntentSnapshot | string {
  let v: unknown
  try { v = JSON.parse(text) } catch (e) { return `not JSON: ${(e as Error).message}` }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not a JSON object'
  const o = v as Record<string, unknown>
  if (o.v !== SNAPSHOT_VERSION) return `field v: ${JSON.stringify(o.v)} is not ${SNAPSHOT_VERSION}`
  if (o.state === 'uninstalled') return { v: 1, state: 'uninstalled' }
  if (o.state !== 'installed') return `field state: ${JSON.stringify(o.state)} is not "installed" or "uninstalled"`
  if (typeof o.node !== 'string') return 'field node: must be a string'
  if (!Array.isArray(o.pods)) return 'field pods: must be an array'
  for (const [i, p] of o.pods.entries()) {
    const e = p as Record<string, unknown>
    if (typeof e !== 'object' || e === null || typeof e.namespace !== 'string' || typeof e.name !== 'string' || typeof e.uid !== 'string' || typeof e.intent !== 'boolean') {
      return `field pods[${i}]: must be {namespace, name, uid, intent}`
    }
  }
  return { v: 1, state: 'installed', node: o.node, pods: o.pods as SnapshotEntry[] }
}

/** Why there is no snapshot to decide with: absent, or the problem that made it unreadable. */
export function missingWhy(problem: string | undefined): string {
  return problem === undefined ? 'no intent snapshot on this node (the agent has not run since boot)' : `the intent snapshot is unreadable: ${problem}`
}

export type SnapshotDecision =
  | { verdict: 'pass'; why: string }
  | { verdict: 'fail'; why: string }

/**
 * Agent down: may this pod be added without programming? Only when the snapshot proves it has
 * no intent (same namespace, name and uid), or when the plugin was uninstalled. Everything else
 * (no snapshot, a broken one, a pod it does not know, no uid to match) fails closed.
 */
export function decide(snapshot: IntentSnapshot | string | undefined, pod: PodRef): SnapshotDecision {
  if (typeof snapshot !== 'object') return { verdict: 'fail', why: missingWhy(snapshot) }
  if (snapshot.state === 'uninstalled') return { verdict: 'pass', why: 'ziti-cni was uninstalled from this node' }
  if (!pod.uid) return { verdict: 'fail', why: `the runtime passed no K8S_POD_UID for ${pod.namespace}/${pod.name}, so the snapshot cannot prove it has no intent` }
  const e = snapshot.pods.find((p) => p.namespace === pod.namespace && p.name === pod.name && p.uid === pod.uid)
  if (!e) return { verdict: 'fail', why: `pod ${pod.namespace}/${pod.name} (uid ${pod.uid}) is not in the intent snapshot yet` }
  if (e.intent) return { verdict: 'fail', why: `pod ${pod.namespace}/${pod.name} has interception intent` }
  return { verdict: 'pass', why: `the intent snapshot shows pod ${pod.namespace}/${pod.name} has no interception intent` }
}
