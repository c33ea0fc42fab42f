// Follows the cluster DNS Service (see cluster-dns.ts for what it is and why).
import { CoreV1Api, Watch, type KubeConfig, type V1Service } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { clusterDnsAddresses, parseServiceRef, type ServiceRef } from './cluster-dns.ts'
import { clusterDnsRanges, takenRanges, type WebhookConfig } from './config.ts'
import { rangeClashes } from '../../shared/src/ranges.ts'
import { Backoff, retryAfterOf } from '../../shared/src/backoff.ts'
import { makeApiClient } from './kube-client.ts'

/**
 * Follows the Service: one GET at start, then a watch on that one name (RBAC grants
 * get/list/watch with resourceNames, which the API server matches for list and watch only
 * through `fieldSelector=metadata.name=`). `onChange` gets the addresses, or [] and the reason
 * while the Service is missing or unusable; admissions that need it are refused meanwhile.
 *
 * As client-go's reflector (tools/cache/reflector.go at client-go 32ce75a): a watch that ends
 * is resumed from the last resourceVersion seen (events and bookmarks, reflector.go:1058-1060);
 * an ERROR 410 or a 410 answer means read again (reflector.go:1154-1160); a 429 or a
 * connection refused is retried at the same version (reflector.go:1195-1205); a watch that
 * ends in under a second with no event counts as a failure (reflector.go:1090-1091). Every
 * failure waits client-go's back-off, never less than a 429's Retry-After (backoff.ts).
 */
export class ClusterDnsFollower {
  readonly ref: ServiceRef
  private readonly kc: KubeConfig
  private readonly core: CoreV1Api
  private readonly log: Logger
  private readonly onChange: (ips: string[], problem?: string) => void
  private readonly backoff: Backoff
  private abort: AbortController | undefined
  private stopped = false
  private timer: NodeJS.Timeout | undefined
  private last = ''

  constructor(kc: KubeConfig, ref: ServiceRef, log: Logger, onChange: (ips: string[], problem?: string) => void, backoff = new Backoff()) {
    this.kc = kc
    this.ref = ref
    this.core = makeApiClient(kc, CoreV1Api)
    this.log = log.child({ component: 'cluster-dns', service: `${ref.namespace}/${ref.name}` })
    this.onChange = onChange
    this.backoff = backoff
  }

  /** Reads the Service once (a missing one is reported, a failure retried later), then keeps watching it. */
  async start(): Promise<void> {
    await this.sync()
  }

  stop(): void {
    this.stopped = true
    this.abort?.abort()
    if (this.timer) clearTimeout(this.timer)
  }

  private report(svc: V1Service | undefined): void {
    const got = svc ? clusterDnsAddresses(svc) : 'was not found'
    const key = JSON.stringify(got)
    if (key === this.last) return
    this.last = key
    if (typeof got === 'string') {
      this.log.error({ problem: got }, 'cluster DNS Service unusable: tproxy and tun pods that use DNS are refused until it is fixed or tproxy.clusterDns is set')
      this.onChange([], got)
    } else {
      this.log.info({ clusterDns: got }, 'cluster DNS from its Service')
      this.onChange(got)
    }
  }

  private later(delayMs: number, next: () => Promise<void>): void {
    if (this.stopped) return
    this.timer = setTimeout(() => { void next() }, delayMs)
    this.timer.unref()
  }

  /** GET the Service, report it, watch from its version; on failure, again after the back-off. */
  private async sync(): Promise<void> {
    if (this.stopped) return
    let rv: string | undefined
    try {
      const svc = await this.core.readNamespacedService({ name: this.ref.name, namespace: this.ref.namespace })
      this.report(svc)
      rv = svc.metadata?.resourceVersion
    } catch (e) {
      if ((e as { code?: number }).code !== 404) {
        const wait = this.backoff.next(retryAfterOf(e))
        this.log.warn({ err: String(e), retryInMs: wait }, 'cannot read the cluster DNS Service; keeping what is known and retrying')
        return this.later(wait, () => this.sync())
      }
      this.report(undefined)
    }
    void this.watch(rv)
  }

  private async watch(rv: string | undefined): Promise<void> {
    if (this.stopped) return
    let resume = rv
    let events = 0
    let expired = false
    const began = Date.now()
    const ended = (err: unknown) => {
      if (this.stopped) return
      const e = err as { statusCode?: number; name?: string; cause?: { code?: string } } | null
      if (expired || e?.statusCode === 410) return void this.sync()
      // Ended by the server after events or a while, or by client-node's inactivity timer
      // (TimeoutError; cache.js resumes those at once too): resume at the same version.
      if (e?.name === 'TimeoutError' || (!err && (events > 0 || Date.now() - began >= 1_000))) return void this.watch(resume)
      const wait = this.backoff.next()
      if (err) this.log.warn({ err: String(err), retryInMs: wait }, 'cluster DNS watch failed; retrying')
      const sameVersion = !err || e?.statusCode === 429 || e?.cause?.code === 'ECONNREFUSED'
      this.later(wait, () => (sameVersion ? this.watch(resume) : this.sync()))
    }
    try {
      this.abort = await new Watch(this.kc).watch(
        `/api/v1/namespaces/${this.ref.namespace}/services`,
        { fieldSelector: `metadata.name=${this.ref.name}`, ...(resume ? { resourceVersion: resume } : {}), allowWatchBookmarks: true },
        (phase, obj: V1Service & { code?: number }) => {
          events++
          if (phase === 'ERROR') { expired = obj.code === 410; return }
          if (obj.metadata?.resourceVersion) resume = obj.metadata.resourceVersion
          if (phase === 'ADDED' || phase === 'MODIFIED') this.report(obj)
          else if (phase === 'DELETED') this.report(undefined)
        },
        ended,
      )
    } catch (e) {
      ended(e)
    }
  }
}

/** main's hook: with no tproxy.clusterDns override, the config follows the Service. Returns stop. */
export async function followClusterDns(kc: KubeConfig, config: WebhookConfig, log: Logger): Promise<() => void> {
  const ref = parseServiceRef(config.tproxy.clusterDnsService) as ServiceRef
  const follower = new ClusterDnsFollower(kc, ref, log, (ips) => {
    // A DNS address inside a range pods intercept would be captured: refuse rather than use it.
    const clashes = rangeClashes(takenRanges(config), clusterDnsRanges(ips, `Service ${config.tproxy.clusterDnsService}`))
    if (clashes.length) log.error({ clashes }, 'the cluster DNS lies inside a range ziti-cni intercepts; DNS-using pods are refused until the config moves it')
    config.tproxy.clusterDns = clashes.length ? [] : ips
  })
  await follower.start()
  return () => follower.stop()
}
