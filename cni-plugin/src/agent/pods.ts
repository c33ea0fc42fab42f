// Pod lookups for ADD/CHECK: a node-scoped cache (list+watch on spec.nodeName) first, a
// direct GET when the cache misses or holds another incarnation, bounded by a deadline.
import { CoreV1Api, ListWatch, Watch, type KubeConfig, type V1Pod } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import type { PodRef } from '../cni/spec.ts'

export interface PodLookup {
  pod: V1Pod | undefined
  source: 'cache' | 'api'
}

export interface PodSource {
  get(ref: PodRef, deadlineMs: number): Promise<PodLookup>
  cachedCount(): number
  synced(): boolean
  /** Every pod of this node as the watch sees it (added or updated). */
  onPod(cb: (pod: V1Pod) => void): void
  stop(): Promise<void>
}

export interface PodSourceHooks {
  onLookup?: (source: 'cache' | 'api', outcome: 'hit' | 'miss' | 'error') => void
}

const RETRY_MS = [100, 200, 400, 800, 1600]

export function createPodSource(kc: KubeConfig, nodeName: string, log: Logger, hooks: PodSourceHooks = {}): PodSource {
  const core = kc.makeApiClient(CoreV1Api)
  const fieldSelector = `spec.nodeName=${nodeName}`
  const informer = new ListWatch<V1Pod>('/api/v1/pods', new Watch(kc),
    () => core.listPodForAllNamespaces({ fieldSelector }), false, undefined, fieldSelector)
  let synced = false
  informer.on('connect', () => { synced = true; log.debug('pod watch connected') })
  informer.on('error', (err) => {
    synced = false
    log.warn({ err: String(err) }, 'pod watch failed; restarting in 2s (lookups fall back to GET)')
    setTimeout(() => { informer.start().catch(() => { /* logged by the next error */ }) }, 2000).unref()
  })
  informer.start().then(() => { synced = true }, (err: unknown) => log.warn({ err: String(err) }, 'initial pod list failed'))

  const matches = (pod: V1Pod | undefined, ref: PodRef) => !!pod && (!ref.uid || pod.metadata?.uid === ref.uid)

  return {
    async get(ref, deadlineMs) {
      const cached = informer.get(ref.name, ref.namespace)
      if (matches(cached, ref)) {
        hooks.onLookup?.('cache', 'hit')
        return { pod: cached, source: 'cache' }
      }
      hooks.onLookup?.('cache', 'miss')
      const deadline = Date.now() + deadlineMs
      let lastError: unknown
      for (let attempt = 0; ; attempt++) {
        try {
          const pod = await core.readNamespacedPod({ name: ref.name, namespace: ref.namespace })
          if (matches(pod, ref)) {
            hooks.onLookup?.('api', 'hit')
            return { pod, source: 'api' }
          }
          lastError = new Error(`pod ${ref.namespace}/${ref.name} has uid ${pod.metadata?.uid}, expected ${ref.uid}`)
        } catch (e) {
          const code = (e as { code?: number }).code
          if (code === 404) {
            hooks.onLookup?.('api', 'miss')
            return { pod: undefined, source: 'api' }
          }
          lastError = e
        }
        const wait = RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)]!
        if (Date.now() + wait >= deadline) break
        await new Promise((r) => setTimeout(r, wait))
      }
      hooks.onLookup?.('api', 'error')
      throw new Error(`pod ${ref.namespace}/${ref.name} lookup failed before the deadline: ${(lastError as Error)?.message ?? lastError}`)
    },
    cachedCount: () => informer.list().length,
    onPod: (cb) => { informer.on('add', cb); informer.on('update', cb) },
    synced: () => synced,
    stop: () => informer.stop(),
  }
}
