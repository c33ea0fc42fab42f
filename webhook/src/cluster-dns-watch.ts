// Follows the cluster DNS Service (see cluster-dns.ts for what it is and why).
import { CoreV1Api, Watch, type KubeConfig, type V1Service } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { clusterDnsAddresses, parseServiceRef, type ServiceRef } from './cluster-dns.ts'
import { clusterDnsRanges, takenRanges, type WebhookConfig } from './config.ts'
import { rangeClashes } from '../../shared/src/ranges.ts'

/**
 * Follows the Service: one GET at start, then a watch on that one name (RBAC grants
 * get/list/watch with resourceNames, which the API server matches for list and watch only
 * through `fieldSelector=metadata.name=`). `onChange` gets the addresses, or [] and the reason
 * while the Service is missing or unusable; admissions that need it are refused meanwhile.
 */
export class ClusterDnsFollower {
  readonly ref: ServiceRef
  private readonly kc: KubeConfig
  private readonly core: CoreV1Api
  private readonly log: Logger
  private readonly onChange: (ips: string[], problem?: string) => void
  private abort: AbortController | undefined
  private stopped = false
  private timer: NodeJS.Timeout | undefined
  private last = ''

  constructor(kc: KubeConfig, ref: ServiceRef, log: Logger, onChange: (ips: string[], problem?: string) => void) {
    this.kc = kc
    this.ref = ref
    this.core = kc.makeApiClient(CoreV1Api)
    this.log = log.child({ component: 'cluster-dns', service: `${ref.namespace}/${ref.name}` })
    this.onChange = onChange
  }

  /** Reads the Service once (a missing one is reported, not thrown), then keeps watching it. */
  async start(): Promise<void> {
    const rv = await this.read()
    void this.watch(rv)
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

  private async read(): Promise<string | undefined> {
    try {
      const svc = await this.core.readNamespacedService({ name: this.ref.name, namespace: this.ref.namespace })
      this.report(svc)
      return svc.metadata?.resourceVersion
    } catch (e) {
      if ((e as { code?: number }).code === 404) { this.report(undefined); return undefined }
      this.log.warn({ err: String(e) }, 'cannot read the cluster DNS Service; keeping what is known and retrying')
      return undefined
    }
  }

  private async watch(rv: string | undefined): Promise<void> {
    if (this.stopped) return
    const again = (delayMs: number) => {
      if (this.stopped) return
      this.timer = setTimeout(() => { void this.read().then((next) => this.watch(next)) }, delayMs)
      this.timer.unref()
    }
    try {
      this.abort = await new Watch(this.kc).watch(
        `/api/v1/namespaces/${this.ref.namespace}/services`,
        { fieldSelector: `metadata.name=${this.ref.name}`, ...(rv ? { resourceVersion: rv } : {}), allowWatchBookmarks: true },
        (phase, obj: V1Service) => {
          if (phase === 'ADDED' || phase === 'MODIFIED') this.report(obj)
          else if (phase === 'DELETED') this.report(undefined)
        },
        (err: unknown) => { if (err && !this.stopped) this.log.warn({ err: String(err) }, 'cluster DNS watch ended; re-reading'); again(err ? 2_000 : 0) },
      )
    } catch (e) {
      this.log.warn({ err: String(e) }, 'cannot watch the cluster DNS Service; retrying')
      again(5_000)
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
