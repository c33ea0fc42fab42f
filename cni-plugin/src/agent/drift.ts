// Drift detection that does not wait for CHECK: containerd 1.6 never sends it and the AWS VPC
// CNI's 10-aws.conflist sets "disableCheck": true, so rules lost under a running pod (a
// flushed table, a deleted route, a detached program) would go unnoticed (istio #61182: a
// pod outside the mesh for 29 days). Every interval the agent runs CHECK itself over every
// attachment it recorded, against the RECORDED intent (not the pod's current annotation, which
// anyone allowed to patch the pod can edit), and reports each drift as a metric, a log line
// and a Warning Event on the pod. Then, per --drift: `reprogram` runs ADD again from the
// record (what ADD did once, so nothing new is granted), `report` leaves it to an operator or
// to --repair.
import { ANNOTATION_INTERCEPTION } from '@ziti-cni/shared'
import type { CoreV1Event } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { Counter, Gauge, type Registry } from 'prom-client'
import type { AgentRequest } from '../cni/agent-protocol.ts'
import { CniError, ErrorCode, type PodRef } from '../cni/spec.ts'
import { Programmer, type ProgrammerDeps } from './programmer.ts'
import type { PodSource } from './pods.ts'
import type { AttachmentState } from './state.ts'

export type DriftAction = 'reprogram' | 'report'

export interface DriftDeps extends Omit<ProgrammerDeps, 'pods'> {
  action: DriftAction
  nodeName: string
  /** Attachments recorded younger than this are left to their ADD (it may still be writing). */
  minAgeMs: number
  /** Creates the Warning Event (a failure is logged, never fatal). */
  emitEvent: (event: CoreV1Event) => Promise<unknown>
  registry?: Registry
  /** True while CNI requests are in flight: the pass waits, pod start-up comes first. */
  busy?: () => boolean
}

export interface DriftPass { checked: number; drifted: number; reprogrammed: number; failed: number; ms: number }

const key = (p: PodRef) => `${p.namespace}/${p.name}/${p.uid ?? ''}`

/** The Event a drift leaves on the pod (core/v1, as the kubelet writes its own). */
export function driftEvent(s: AttachmentState, nodeName: string, message: string, action: DriftAction, now: Date): CoreV1Event {
  return {
    metadata: { name: `${s.pod.name}.${(BigInt(now.getTime()) * 1_000_000n).toString(16)}`, namespace: s.pod.namespace },
    involvedObject: { apiVersion: 'v1', kind: 'Pod', namespace: s.pod.namespace, name: s.pod.name, ...(s.pod.uid ? { uid: s.pod.uid } : {}) },
    type: 'Warning', reason: 'ZitiInterceptionDrift',
    // Event messages are cut at 1024 bytes by the API server's validation.
    message: `${message}; ${action === 'reprogram' ? 'the ziti-cni agent re-programmed it from its record' : 'left as found (agent --drift=report)'}`.slice(0, 1000),
    source: { component: 'ziti-cni-agent', host: nodeName }, reportingComponent: 'ziti-cni-agent', reportingInstance: nodeName,
    firstTimestamp: now, lastTimestamp: now, count: 1,
  }
}

export class DriftDetector {
  private readonly d: DriftDeps
  private readonly programmer: Programmer
  /** The record under check, keyed by pod: what the programmer's pod lookups answer from. */
  private readonly recorded = new Map<string, string>()
  private running = false
  private readonly drifts: Counter<'outcome'> | undefined
  private readonly lastPass: Gauge<'what'> | undefined

  constructor(deps: DriftDeps) {
    this.d = deps
    const recorded: PodSource = {
      get: async (ref) => {
        const intent = this.recorded.get(key(ref))
        return { source: 'cache', pod: intent === undefined ? undefined : { metadata: { namespace: ref.namespace, name: ref.name, uid: ref.uid, annotations: { [ANNOTATION_INTERCEPTION]: intent } } } }
      },
      cachedCount: () => this.recorded.size, synced: () => true, onPod: () => {}, stop: async () => {},
    }
    this.programmer = new Programmer({ ...deps, pods: recorded })
    if (deps.registry) {
      this.drifts = new Counter({ name: 'ziti_cni_drift_total', help: 'Attachments found differing from what ADD programmed, by what followed', labelNames: ['outcome'] as const, registers: [deps.registry] })
      this.lastPass = new Gauge({ name: 'ziti_cni_drift_last_pass', help: 'The last drift pass: attachments checked, drifted, and its duration in seconds', labelNames: ['what'] as const, registers: [deps.registry] })
    }
  }

  /** One pass over every recorded attachment; passes never overlap. */
  async pass(attachments: AttachmentState[]): Promise<DriftPass> {
    const started = performance.now()
    const out: DriftPass = { checked: 0, drifted: 0, reprogrammed: 0, failed: 0, ms: 0 }
    if (this.running) return out
    this.running = true
    try {
      for (const s of attachments) {
        while (this.d.busy?.()) await new Promise((r) => setTimeout(r, 100))
        if (Date.now() - Date.parse(s.createdAt) < this.d.minAgeMs) continue
        if (!this.d.netns.exists(s.netns)) continue // gone: DEL or GC cleans the record
        out.checked++
        this.recorded.clear()
        this.recorded.set(key(s.pod), s.intent)
        const req: AgentRequest = { command: 'CHECK', containerId: s.containerId, ifName: s.ifName, netns: s.netns, pod: s.pod, validAttachments: [], ...(s.podIps ? { podIps: s.podIps } : {}) }
        try {
          await this.programmer.check(req)
          continue
        } catch (e) {
          if (!(e instanceof CniError) || e.code !== ErrorCode.Drift) {
            out.failed++
            this.drifts?.inc({ outcome: 'check_failed' })
            this.d.log.warn({ err: (e as Error).message, containerId: s.containerId, pod: `${s.pod.namespace}/${s.pod.name}` }, 'drift check could not run')
            continue
          }
          out.drifted++
          await this.reportDrift(s, e)
        }
        // A DEL may have run meanwhile: never resurrect an attachment the runtime removed.
        if (this.d.action !== 'reprogram' || this.d.state.get(s.containerId, s.ifName)?.createdAt !== s.createdAt) continue
        try {
          await this.programmer.add({ ...req, command: 'ADD' })
          out.reprogrammed++
          this.drifts?.inc({ outcome: 'reprogrammed' })
          this.d.log.info({ containerId: s.containerId, pod: `${s.pod.namespace}/${s.pod.name}` }, 'drift: re-programmed the pod from its record')
        } catch (e) {
          out.failed++
          this.drifts?.inc({ outcome: 'reprogram_failed' })
          this.d.log.error({ err: (e as Error).message, details: (e as CniError).details, containerId: s.containerId, pod: `${s.pod.namespace}/${s.pod.name}` }, 'drift: re-programming failed')
        }
      }
    } finally {
      this.running = false
      this.recorded.clear()
    }
    out.ms = performance.now() - started
    this.lastPass?.set({ what: 'checked' }, out.checked)
    this.lastPass?.set({ what: 'drifted' }, out.drifted)
    this.lastPass?.set({ what: 'seconds' }, out.ms / 1000)
    return out
  }

  private async reportDrift(s: AttachmentState, e: CniError): Promise<void> {
    const pod = `${s.pod.namespace}/${s.pod.name}`
    this.drifts?.inc({ outcome: this.d.action === 'reprogram' ? 'detected' : 'reported' })
    this.d.log.warn({ containerId: s.containerId, pod, netns: s.netns, drift: e.message, details: e.details, action: this.d.action }, `drift: pod ${pod} no longer has what ADD programmed: ${e.message}`)
    try {
      await this.d.emitEvent(driftEvent(s, this.d.nodeName, `interception drift: ${e.message}`, this.d.action, new Date()))
    } catch (err) {
      this.d.log.warn({ err: String(err), pod }, 'drift: cannot create the pod Event')
    }
  }
}

/** main's hook: a pass every interval over the state store. Returns the stop function. */
export function startDriftDetection(deps: DriftDeps, list: () => AttachmentState[], everyMs: number): () => void {
  const detector = new DriftDetector(deps)
  const timer = setInterval(() => {
    detector.pass(list()).then((p) => { if (p.drifted || p.failed) deps.log.info(p, 'drift pass') }, (e: unknown) => deps.log.error({ err: String(e) }, 'drift pass failed'))
  }, everyMs)
  timer.unref()
  return () => clearInterval(timer)
}
