// Leader election over a coordination.k8s.io/v1 Lease, as client-go's leaderelection does:
// the holder renews every leaseSeconds/3; another replica takes over only after the lease has
// gone unrenewed for leaseSeconds. Updates carry the resourceVersion read, so two replicas
// racing for an expired lease cannot both win (the loser gets 409).
import { CoordinationV1Api, V1MicroTime, type KubeConfig, type V1Lease } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { makeApiClient } from './kube-client.ts'

export class LeaderElector {
  private readonly api: CoordinationV1Api
  private readonly namespace: string
  private readonly name: string
  private readonly identity: string
  private readonly leaseSeconds: number
  private readonly log: Logger
  private renewedAt = 0
  private timer: NodeJS.Timeout | undefined
  private readonly listeners: Array<(leading: boolean) => void> = []

  constructor(kc: KubeConfig, opts: { namespace: string; name: string; identity: string; leaseSeconds: number }, log: Logger) {
    this.api = makeApiClient(kc, CoordinationV1Api)
    this.namespace = opts.namespace
    this.name = opts.name
    this.identity = opts.identity
    this.leaseSeconds = opts.leaseSeconds
    this.log = log.child({ component: 'leader', lease: `${opts.namespace}/${opts.name}`, identity: opts.identity })
  }

  /** Leader only while the last renewal is fresher than the lease: a partitioned leader steps down on its own. */
  isLeader(): boolean {
    return Date.now() - this.renewedAt < this.leaseSeconds * 1000
  }

  /** Called on every change of leadership (e.g. to reconcile what was missed while following). */
  onChange(fn: (leading: boolean) => void): void {
    this.listeners.push(fn)
  }

  start(): () => void {
    const tick = () => { void this.tryAcquireOrRenew() }
    tick()
    this.timer = setInterval(tick, Math.max(1000, (this.leaseSeconds * 1000) / 3))
    this.timer.unref()
    return () => { if (this.timer) clearInterval(this.timer) }
  }

  async tryAcquireOrRenew(): Promise<boolean> {
    // MicroTime: the API server wants exactly six fractional digits (apimachinery
    // micro_time.go); a plain Date serialises three and the write is refused with 400.
    const now = new V1MicroTime()
    const was = this.isLeader()
    try {
      let lease: V1Lease | undefined
      try {
        lease = await this.api.readNamespacedLease({ name: this.name, namespace: this.namespace })
      } catch (e) {
        if ((e as { code?: number }).code !== 404) throw e
      }
      const spec = { holderIdentity: this.identity, leaseDurationSeconds: this.leaseSeconds, renewTime: now, acquireTime: now, leaseTransitions: 0 }
      if (!lease) {
        await this.api.createNamespacedLease({ namespace: this.namespace, body: { metadata: { name: this.name, namespace: this.namespace }, spec } })
      } else {
        const held = lease.spec?.holderIdentity
        const renewed = lease.spec?.renewTime ? new Date(lease.spec.renewTime).getTime() : 0
        const expired = renewed + (lease.spec?.leaseDurationSeconds ?? this.leaseSeconds) * 1000 < now.getTime()
        if (held && held !== this.identity && !expired) { this.renewedAt = 0; return this.report(was) }
        const mine = held === this.identity
        await this.api.replaceNamespacedLease({
          name: this.name, namespace: this.namespace,
          body: {
            metadata: { ...lease.metadata, name: this.name, namespace: this.namespace },
            spec: { ...spec, acquireTime: mine && lease.spec?.acquireTime ? lease.spec.acquireTime : now, leaseTransitions: (lease.spec?.leaseTransitions ?? 0) + (mine ? 0 : 1) },
          },
        })
      }
      this.renewedAt = now.getTime()
    } catch (e) {
      // 409: another write won the race (another replica, or our own overlapping tick): this
      // write proves nothing, but neither does it end a lease we renewed before; isLeader()
      // still expires on our own clock. Anything else: we cannot prove we hold it.
      if ((e as { code?: number }).code !== 409) {
        this.log.warn({ err: String(e) }, 'cannot read or renew the lease')
        this.renewedAt = 0
      }
    }
    return this.report(was)
  }

  private report(was: boolean): boolean {
    const is = this.isLeader()
    if (is !== was) {
      this.log.info({ leader: is }, is ? 'became the leader' : 'no longer the leader')
      for (const fn of this.listeners) fn(is)
    }
    return is
  }
}
