// The wire contract between the thin CNI executable and the node agent: one JSON object per
// line over a unix socket, one request per connection. Chosen over HTTP because loading
// node:http and its parser costs the short-lived executable ~9 ms per ADD (bench:cni).
import type { PodRef } from './spec.ts'

export const MAX_MESSAGE_BYTES = 4 << 20

export interface AgentRequest {
  command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'PING'
  containerId: string
  netns: string
  ifName: string
  pod: PodRef | undefined
  validAttachments: Array<{ containerID: string; ifname: string }>
  /** ADD/CHECK: the pod's addresses from prevResult (the eBPF datapath's route source). */
  podIps?: string[]
}

export type AgentResponse =
  | { ok: true; intercepted: boolean; mode?: string; detail?: string }
  | { ok: false; code: number; msg: string; details?: string }

/** Checks a decoded request; returns a problem or undefined. */
export function requestProblem(v: unknown): string | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'request must be a JSON object'
  const r = v as Record<string, unknown>
  const allowed = ['command', 'containerId', 'netns', 'ifName', 'pod', 'validAttachments', 'podIps']
  for (const k of Object.keys(r)) if (!allowed.includes(k)) return `unknown field ${JSON.stringify(k)}`
  if (!['ADD', 'DEL', 'CHECK', 'GC', 'PING'].includes(r.command as string)) return 'command must be ADD, DEL, CHECK, GC or PING'
  const str = (k: string, max: number) => (typeof r[k] === 'string' && (r[k] as string).length <= max ? undefined : `${k} must be a string of at most ${max} characters`)
  const p = str('containerId', 256) ?? str('netns', 4096) ?? str('ifName', 64)
  if (p) return p
  if (r.pod !== undefined) {
    const pod = r.pod as Record<string, unknown>
    if (typeof pod !== 'object' || pod === null || typeof pod.namespace !== 'string' || typeof pod.name !== 'string' ||
      (pod.uid !== undefined && typeof pod.uid !== 'string')) return 'pod must be {namespace, name, uid?} strings'
  }
  if (r.validAttachments !== undefined && (!Array.isArray(r.validAttachments) ||
    !r.validAttachments.every((a) => typeof a?.containerID === 'string' && typeof a?.ifname === 'string'))) return 'validAttachments must be [{containerID, ifname}]'
  if (r.podIps !== undefined && (!Array.isArray(r.podIps) || r.podIps.length > 16 || !r.podIps.every((ip) => typeof ip === 'string' && ip.length <= 64))) return 'podIps must be at most 16 address strings'
  return undefined
}
