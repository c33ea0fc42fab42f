// Kubernetes Events on a pod, for what its user must see: the agent refused the pod's intent,
// failed to program it, or repair acted on it. A CNI error reaches the user only inside the
// kubelet's FailedCreatePodSandBox event text; a log line on the node reaches nobody.
//
// core/v1 Events as client-go's legacy recorder writes them (tools/record/event.go
// makeEvent): name `<pod>.<hex>`, involvedObject the pod, type Normal|Warning, source, first
// and last timestamps, count 1; plus reportingComponent/reportingInstance, which the API
// validates when set (pkg/apis/core/validation/events.go: the involved object's namespace
// must be the event's). Identical events for the same pod are sent once per 10 minutes, as
// client-go's correlator would fold them (tools/record/events_cache.go), so a kubelet
// retrying a failing sandbox every few seconds does not flood the API. Sending never delays
// the CNI answer and a failure to send is only logged.
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { AgentRequest, AgentResponse } from '../cni/agent-protocol.ts'
import { ErrorCode } from '../cni/spec.ts'

export const REPORTING_CONTROLLER = 'ziti-cni-agent'
/** events.k8s.io NoteLengthLimit; also keeps core/v1 messages readable. */
const MESSAGE_LIMIT = 1024
const DEDUPE_MS = 10 * 60_000

export interface EventPod { namespace: string; name: string; uid?: string | undefined }
export type EventType = 'Normal' | 'Warning'

/** Pure: the core/v1 Event body. */
export function podEvent(pod: EventPod, type: EventType, reason: string, message: string, node: string, now: Date, suffix: string): object {
  const at = now.toISOString().replace(/\.\d+Z$/, 'Z') // metav1.Time: RFC 3339, seconds
  return {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { name: `${pod.name}.${suffix}`, namespace: pod.namespace },
    involvedObject: { apiVersion: 'v1', kind: 'Pod', namespace: pod.namespace, name: pod.name, ...(pod.uid ? { uid: pod.uid } : {}) },
    type,
    reason,
    message: message.length > MESSAGE_LIMIT ? `${message.slice(0, MESSAGE_LIMIT - 3)}...` : message,
    source: { component: REPORTING_CONTROLLER, host: node },
    reportingComponent: REPORTING_CONTROLLER,
    reportingInstance: node,
    firstTimestamp: at,
    lastTimestamp: at,
    count: 1,
  }
}

export interface EventRecorderOptions {
  node: string
  /** POST /api/v1/namespaces/{ns}/events. */
  post: (namespace: string, body: object) => Promise<void>
  log: Logger
  now?: () => number
}

export class EventRecorder {
  private readonly o: EventRecorderOptions
  private readonly sent = new Map<string, number>()
  constructor(o: EventRecorderOptions) {
    this.o = o
  }

  /** Fire and forget; resolves when sent (or dropped), never rejects. */
  record(pod: EventPod, type: EventType, reason: string, message: string): Promise<void> {
    const now = (this.o.now ?? Date.now)()
    const key = `${pod.namespace}/${pod.name}/${pod.uid ?? ''}/${reason}/${message}`
    const last = this.sent.get(key)
    if (last !== undefined && now - last < DEDUPE_MS) return Promise.resolve()
    this.sent.set(key, now)
    if (this.sent.size > 4096) for (const [k, at] of this.sent) if (now - at >= DEDUPE_MS || this.sent.size > 4096) this.sent.delete(k)
    const body = podEvent(pod, type, reason, message, this.o.node, new Date(now), randomBytes(8).toString('hex'))
    return this.o.post(pod.namespace, body).catch((e: unknown) => {
      this.o.log.warn({ pod: `${pod.namespace}/${pod.name}`, reason, err: (e as Error).message }, 'could not record an event')
    })
  }
}

/** Pure: the Event a failed ADD gives its pod (reason, message), or none. */
export function addFailureEvent(e: unknown): { reason: string; message: string } | undefined {
  const code = (e as { code?: number }).code
  const msg = (e as Error).message ?? String(e)
  const details = (e as { details?: string }).details
  const text = details ? `${msg} (${details})` : msg
  if (code === ErrorCode.InvalidIntent) return { reason: 'InterceptionRefused', message: `ziti-cni refused the pod's interception intent; the sandbox is not started: ${text}` }
  if (code === ErrorCode.PodLookupFailed) return { reason: 'InterceptionFailed', message: `ziti-cni could not read the pod to learn its intent; the kubelet retries: ${text}` }
  return { reason: 'InterceptionFailed', message: `ziti-cni could not program the pod's interception; nothing was left half-applied and the kubelet retries: ${text}` }
}

type Handler = { handle(req: AgentRequest & { command: 'ADD' | 'DEL' | 'CHECK' | 'GC' }): Promise<AgentResponse> }

/** The CNI handler, with a Warning Event on the pod for every ADD it fails. */
export function withFailureEvents(inner: Handler, events: EventRecorder): Handler {
  return {
    async handle(req) {
      try {
        return await inner.handle(req)
      } catch (e) {
        const ev = req.command === 'ADD' && req.pod ? addFailureEvent(e) : undefined
        if (ev && req.pod) void events.record(req.pod, 'Warning', ev.reason, ev.message)
        throw e
      }
    },
  }
}
