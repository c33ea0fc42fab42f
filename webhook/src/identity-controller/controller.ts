// The identity controller's loop: a watch on pods labelled for `identity: auto` (informer:
// list, then watch from its resourceVersion, relisting on errors), and a periodic reconcile
// for whatever the watch missed while this process, the API server or the OpenZiti
// controller was down. Only the Lease holder creates and deletes from here; every replica
// serves enrollments (enroll-server.ts), which only ensure an identity for a vouched-for pod.
import { CoreV1Api, makeInformer, type Informer, type KubeConfig, type ObjectCache, type V1Pod } from '@kubernetes/client-node'
import { LABEL_AUTO_IDENTITY } from '@ziti-cni/shared'
import type { Logger } from 'pino'
import type { ControllerConfig } from '../config.ts'
import type { ControllerMetrics } from '../ziti/metrics.ts'
import type { Identities } from './identities.ts'
import { planReconcile, wantedIdentity, type ReconcilePlan } from './plan.ts'
import { identityName } from '../ziti/identity.ts'
import { Backoff, retryAfterOf } from '../../../shared/src/backoff.ts'
import { makeApiClient } from '../kube-client.ts'

export const POD_SELECTOR = `${LABEL_AUTO_IDENTITY}=true`

export interface IdentityControllerDeps {
  kc: KubeConfig
  identities: Identities
  cfg: ControllerConfig
  /** This cluster's tag (configured, or derived from the kube-system namespace uid). */
  cluster: string
  metrics: ControllerMetrics
  log: Logger
  isLeader: () => boolean
}

export class IdentityController {
  private readonly core: CoreV1Api
  private readonly d: IdentityControllerDeps
  private informer: (Informer<V1Pod> & ObjectCache<V1Pod>) | undefined
  /** The pass in progress: a reconcile asked for meanwhile runs after it, never beside it. */
  private current: Promise<ReconcilePlan | undefined> | undefined
  private stopped = false
  /** Pod uids whose identity exists: status updates of a pod cost no controller call. */
  private readonly ensured = new Set<string>()

  constructor(d: IdentityControllerDeps) {
    this.d = d
    this.core = makeApiClient(d.kc, CoreV1Api)
  }

  private deadline(): number {
    return Date.now() + 10_000
  }

  /** Creates the identity of a pod the API server stored (leader only). */
  async onPod(pod: V1Pod): Promise<void> {
    if (!this.d.isLeader()) return
    const want = wantedIdentity(pod, this.d.cfg, this.d.cluster)
    if (!want.ok) {
      this.d.log.debug({ pod: `${pod.metadata?.namespace}/${pod.metadata?.name}`, reason: want.reason }, 'no identity for this pod')
      return
    }
    if (this.ensured.has(want.pod.uid)) return
    await this.d.identities.ensure(want.spec, this.deadline())
    this.ensured.add(want.pod.uid)
  }

  /** Deletes the identity of a pod that is gone (leader only); a failure is left to the reconcile. */
  async onPodDeleted(pod: V1Pod): Promise<void> {
    const m = pod.metadata
    if (!this.d.isLeader() || !m?.uid || !m.name || !m.namespace) return
    this.ensured.delete(m.uid)
    await this.d.identities.removeByName(identityName(this.d.cfg.identityPrefix, { namespace: m.namespace, name: m.name, uid: m.uid }), this.deadline(), 'pod-deleted')
  }

  start(): () => void {
    const log = this.d.log
    const list = () => this.core.listPodForAllNamespaces({ labelSelector: POD_SELECTOR })
    const informer = makeInformer<V1Pod>(this.d.kc, '/api/v1/pods', list, POD_SELECTOR)
    this.informer = informer
    const guard = (what: string, p: Promise<void>) => p.catch((e: unknown) => log.warn({ err: String(e) }, `${what} failed; the reconcile retries`))
    informer.on('add', (p) => void guard('creating an identity', this.onPod(p)))
    informer.on('update', (p) => void guard('creating an identity', this.onPod(p)))
    informer.on('delete', (p) => void guard('deleting an identity', this.onPodDeleted(p)))
    // client-node 2.0.1's ListWatch stops for good on any error but 410 and its own timeout
    // (cache.js doneHandler: the error callbacks, then return), and a throw while starting a
    // watch only rejects start(). Either way: start it again after client-go's back-off
    // (800 ms doubling to 30 s, never before a 429's Retry-After; reflector.go:652-657), so a
    // busy API server (APF) is not hammered and the watch never stays dead.
    const backoff = new Backoff()
    let pending: NodeJS.Timeout | undefined
    const restart = (e: unknown) => {
      if (this.stopped || pending) return
      const wait = backoff.next(retryAfterOf(e))
      log.warn({ err: String(e), retryInMs: wait }, 'pod watch failed; restarting after a back-off')
      pending = setTimeout(() => { pending = undefined; run() }, wait)
      pending.unref()
    }
    const run = () => { if (!this.stopped) informer.start().catch(restart) }
    informer.on('error', restart)
    run()
    const timer = setInterval(() => { void this.reconcile() }, this.d.cfg.reconcileSeconds * 1000)
    timer.unref()
    return () => { this.stopped = true; clearInterval(timer); if (pending) clearTimeout(pending); void informer.stop() }
  }

  /**
   * One pass (leader only): ensure every live pod's identity, delete every identity of this
   * cluster whose pod is gone. Pods first: an identity is deleted only when a successful list
   * proves its pod gone; any failure deletes nothing and the next pass retries.
   */
  async reconcile(): Promise<ReconcilePlan | undefined> {
    // A pass waiting out an API server's Retry-After can take seconds: queue behind it rather
    // than skip, so a pass asked for always sees the world as it is after the call.
    while (this.current) await this.current.catch(() => undefined)
    if (!this.d.isLeader()) return undefined
    const pass = this.pass()
    this.current = pass
    try {
      return await pass
    } finally {
      if (this.current === pass) this.current = undefined
    }
  }

  private async pass(): Promise<ReconcilePlan | undefined> {
    const { identities, cfg, cluster, metrics, log } = this.d
    try {
      const pods = (await this.core.listPodForAllNamespaces({ labelSelector: POD_SELECTOR })).items
      const deadline = Date.now() + Math.max(10_000, cfg.reconcileSeconds * 500)
      // One list for the whole pass: create only what is missing, delete only what is orphaned.
      const existing = await identities.list(cfg.identityPrefix, deadline)
      const names = new Set(existing.map((i) => i.name))
      for (const p of pods) {
        const want = wantedIdentity(p, cfg, cluster)
        if (want.ok && !names.has(want.spec.name)) await identities.ensure(want.spec, deadline)
        if (want.ok) this.ensured.add(want.pod.uid)
      }
      const live = pods.filter((p) => p.metadata?.uid && p.metadata.namespace).map((p) => ({ namespace: p.metadata!.namespace!, uid: p.metadata!.uid! }))
      const plan = planReconcile(existing, live, Date.now(), cluster, cfg.graceSeconds)
      for (const d of plan.delete) {
        await identities.remove(d.id, d.name, deadline, 'reconciled-deleted')
        this.ensured.delete(d.podUid)
      }
      metrics.reconciles.inc({ result: 'ok' })
      return plan
    } catch (e) {
      metrics.reconciles.inc({ result: 'error' })
      log.warn({ err: String(e) }, 'identity reconcile pass failed; retrying next period')
      return undefined
    }
  }
}
