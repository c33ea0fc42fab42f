// Deletes the Ziti identities of pods that are gone, whatever the reason they were missed:
// the webhook was down when the pod was deleted, the API server rejected the pod after this
// webhook admitted it, a rollback failed. And deletes each enrollment Secret once its token is
// spent. One replica does it (leader election); the decisions are pure (`planReconcile`).
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node'
import { ANNOTATION_IDENTITY_ID, LABEL_AUTO_IDENTITY } from '@ziti-cni/shared'
import type { Logger } from 'pino'
import type { ControllerConfig } from '../config.ts'
import type { ControllerClient, IdentityDetail } from './controller.ts'
import { MANAGED_BY, TAG_CLUSTER, TAG_ENROLLMENT_SECRET, TAG_MANAGED_BY, TAG_NAMESPACE } from './identity.ts'
import type { ControllerMetrics } from './metrics.ts'
import type { EnrollmentSecrets } from './provision.ts'
import { quote } from './zitiql.ts'

export interface PodLink { namespace: string; name: string; identityId: string }

export interface ReconcilePlan {
  deleteIdentities: Array<{ id: string; name: string; namespace: string; secret: string }>
  /** Enrollment Secrets of identities that have enrolled: the token is spent. */
  deleteSecrets: Array<{ namespace: string; name: string; identity: string }>
}

export function planReconcile(identities: IdentityDetail[], pods: PodLink[], now: number, cfg: Pick<ControllerConfig, 'cluster' | 'graceSeconds'>): ReconcilePlan {
  const live = new Set(pods.map((p) => p.identityId))
  const plan: ReconcilePlan = { deleteIdentities: [], deleteSecrets: [] }
  for (const i of identities) {
    const tags = i.tags ?? {}
    // Only ours, and only this cluster's: a controller may serve several clusters.
    if (tags[TAG_MANAGED_BY] !== MANAGED_BY || tags[TAG_CLUSTER] !== cfg.cluster) continue
    const namespace = String(tags[TAG_NAMESPACE] ?? '')
    const secret = String(tags[TAG_ENROLLMENT_SECRET] ?? '')
    if (live.has(i.id)) {
      if (!i.enrollment?.ott && namespace && secret) plan.deleteSecrets.push({ namespace, name: secret, identity: i.name })
      continue
    }
    // Young identities may belong to an admission still in flight (the pod is not stored yet).
    const age = now - Date.parse(i.createdAt)
    if (!(age > cfg.graceSeconds * 1000)) continue
    plan.deleteIdentities.push({ id: i.id, name: i.name, namespace, secret })
  }
  return plan
}

export interface ReconcilerDeps {
  client: ControllerClient
  secrets: EnrollmentSecrets
  cfg: ControllerConfig
  metrics: ControllerMetrics
  log: Logger
  isLeader: () => boolean
}

export class IdentityReconciler {
  private readonly core: CoreV1Api
  private readonly spent = new Set<string>()
  private running = false
  private readonly deps: ReconcilerDeps

  constructor(kc: KubeConfig, deps: ReconcilerDeps) {
    this.core = kc.makeApiClient(CoreV1Api)
    this.deps = deps
  }

  start(): () => void {
    const timer = setInterval(() => { void this.runOnce() }, this.deps.cfg.reconcileSeconds * 1000)
    timer.unref()
    return () => clearInterval(timer)
  }

  /** One pass; returns what it did (tests), or undefined when it did not run. */
  async runOnce(): Promise<ReconcilePlan | undefined> {
    const { client, secrets, cfg, metrics, isLeader } = this.deps
    const log = this.deps.log
    if (this.running || !isLeader()) return undefined
    this.running = true
    try {
      // Pods first: an identity is deleted only when a successful list proves its pod gone.
      const pods = await this.core.listPodForAllNamespaces({ labelSelector: `${LABEL_AUTO_IDENTITY}=true` })
      const links: PodLink[] = []
      for (const p of pods.items) {
        const id = p.metadata?.annotations?.[ANNOTATION_IDENTITY_ID]
        if (id) links.push({ namespace: p.metadata!.namespace ?? '', name: p.metadata!.name ?? '', identityId: id })
      }
      const deadline = Date.now() + Math.max(10_000, cfg.reconcileSeconds * 500)
      const identities = await client.listIdentities(`name contains ${quote(`${cfg.identityPrefix}-`)}`, deadline)
      const plan = planReconcile(identities, links, Date.now(), cfg)
      for (const d of plan.deleteIdentities) {
        const gone = await client.deleteIdentity(d.id, deadline)
        if (d.namespace && d.secret) await secrets.delete(d.namespace, d.secret).catch((e: unknown) => log.warn({ err: String(e), secret: `${d.namespace}/${d.secret}` }, 'cannot delete the enrollment Secret'))
        metrics.identities.inc({ event: 'reconciled-deleted' })
        log.info({ identity: d.name, identityId: d.id, namespace: d.namespace, wasThere: gone }, 'deleted the Ziti identity of a pod that is gone')
      }
      for (const s of plan.deleteSecrets) {
        const key = `${s.namespace}/${s.name}`
        if (this.spent.has(key)) continue
        const deleted = await secrets.delete(s.namespace, s.name)
        this.spent.add(key)
        if (deleted) {
          metrics.identities.inc({ event: 'enrollment-secret-deleted' })
          log.info({ identity: s.identity, secret: key }, 'deleted a spent enrollment Secret')
        }
      }
      metrics.reconciles.inc({ result: 'ok' })
      return plan
    } catch (e) {
      // Controller or API server down: nothing is deleted on a partial view; next pass retries.
      metrics.reconciles.inc({ result: 'error' })
      log.warn({ err: String(e) }, 'identity reconcile pass failed; retrying next period')
      return undefined
    } finally {
      this.running = false
    }
  }
}
