// The wire contract between the thin CNI executable and the node agent: one JSON object per
// line over a unix socket, one request per connection. Chosen over HTTP because loading
// node:http and its parser costs the short-lived executable ~9 ms per ADD (bench:cni).
// EXEC (below) carries a whole CNI invocation from the static front end (frontend/ziti-cni.c),
// which cannot run the TypeScript plugin itself; its reply is raw so the C side parses no JSON.
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

/**
 * The environment variables of a CNI invocation the plugin reads (cni/request.ts): the front
 * end sends exactly these, when set; anything else is refused.
 */
export const EXEC_ENV_KEYS = ['CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_ARGS', 'CNI_PATH'] as const

/** A raw CNI invocation for the agent to run through the same runPlugin() the executable runs. */
export interface ExecRequest {
  command: 'EXEC'
  env: Partial<Record<(typeof EXEC_ENV_KEYS)[number], string>>
  /** The executable's stdin (the network config), as text; at most MAX_MESSAGE_BYTES. */
  stdin: string
}

/** Checks a decoded EXEC request; returns a problem naming the field, or undefined. */
export function execRequestProblem(v: unknown): string | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'request must be a JSON object'
  const r = v as Record<string, unknown>
  for (const k of Object.keys(r)) if (!['command', 'env', 'stdin'].includes(k)) return `unknown field ${JSON.stringify(k)}`
  if (r.command !== 'EXEC') return 'command must be EXEC'
  if (typeof r.env !== 'object' || r.env === null || Array.isArray(r.env)) return 'env must be an object of strings'
  for (const [k, val] of Object.entries(r.env)) {
    if (!(EXEC_ENV_KEYS as readonly string[]).includes(k)) return `env: unknown key ${JSON.stringify(k)} (known: ${EXEC_ENV_KEYS.join(', ')})`
    if (typeof val !== 'string') return `env.${k} must be a string`
  }
  if (typeof (r.env as Record<string, unknown>).CNI_COMMAND !== 'string') return 'env.CNI_COMMAND is required'
  if (typeof r.stdin !== 'string') return 'stdin must be a string'
  if (Buffer.byteLength(r.stdin) > MAX_MESSAGE_BYTES) return `stdin must be at most ${MAX_MESSAGE_BYTES} bytes`
  return undefined
}

/**
 * The EXEC reply, raw so the front end needs no JSON parser: `<exitCode> <stdoutBytes>\n`
 * then exactly that many bytes of the plugin's stdout. The byte count lets it tell a complete
 * reply from an agent that died mid-answer.
 */
export function renderExecReply(exitCode: number, stdout: string): Buffer {
  const body = Buffer.from(stdout, 'utf8')
  return Buffer.concat([Buffer.from(`${exitCode} ${body.length}\n`), body])
}

/** Any first line that is not `<digits> <digits>`: the front end runs the Node plugin instead. */
export function renderExecFallback(reason: string): Buffer {
  return Buffer.from(`fallback: ${reason.replace(/\n/g, ' ')}\n`)
}
