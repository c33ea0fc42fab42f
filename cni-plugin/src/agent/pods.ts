// Pod lookups for ADD/CHECK: a node-scoped cache (list+watch on spec.nodeName, our own
// reflector: see reflector.ts for why not client-node's informer) first, a direct GET when the
// cache misses or holds another incarnation, bounded by a deadline.
import type { IncomingMessage } from 'node:http'
import { request, type RequestOptions } from 'node:https'
import { CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import type { PodRef } from '../cni/spec.ts'
import { httpListerWatcher, Reflector, type ApiGet, type ReflectorOptions } from './reflector.ts'

export interface PodLookup {
  pod: V1Pod | undefined
  source: 'cache' | 'api'
}

export interface PodSource {
  get(ref: PodRef, deadlineMs: number): Promise<PodLookup>
  cachedCount(): number
  /** True once a list of this node's pods has succeeded (and from then on). */
  synced(): boolean
  /** Every pod of this node as the cache sees it (listed, added or updated). */
  onPod(cb: (pod: V1Pod) => void): void
  stop(): Promise<void>
}

export interface PodSourceHooks {
  onLookup?: (source: 'cache' | 'api', outcome: 'hit' | 'miss' | 'error') => void
  /** Reflector tuning (tests). */
  reflector?: Pick<ReflectorOptions<V1Pod>, 'backoff' | 'minWatchTimeoutSeconds' | 'rand'>
}

const RETRY_MS = [100, 200, 400, 800, 1600]

/**
 * GETs against the kubeconfig's server with its TLS and credentials, applied per request so a
 * rotated token file is read again (client-node's tokenFile authenticator).
 */
export function kubeGet(kc: KubeConfig): ApiGet {
  return async (pathAndQuery, signal) => {
    const server = kc.getCurrentCluster()?.server
    if (!server) throw new Error('the kubeconfig names no server')
    const url = new URL(pathAndQuery, server)
    // The API is HTTPS; client-node refuses http:// unless TLS verification is off.
    if (url.protocol !== 'https:') throw new Error(`the API server must be https, not ${url.protocol}`)
    const opts: RequestOptions = { headers: { accept: 'application/json' } }
    await kc.applyToHTTPSOptions(opts)
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = request(url, { ...opts, method: 'GET', signal }, resolve)
      req.on('error', reject)
      req.end()
    })
  }
}

export function createPodSource(kc: KubeConfig, nodeName: string, log: Logger, hooks: PodSourceHooks = {}): PodSource {
  const core = kc.makeApiClient(CoreV1Api)
  const listeners: Array<(pod: V1Pod) => void> = []
  const reflector = new Reflector<V1Pod>(httpListerWatcher<V1Pod>(kubeGet(kc), '/api/v1/pods', `spec.nodeName=${nodeName}`), {
    name: 'pods', log, ...hooks.reflector,
    onUpsert: (pod) => { for (const cb of listeners) cb(pod) },
  })
  reflector.start()

  const matches = (pod: V1Pod | undefined, ref: PodRef) => !!pod && (!ref.uid || pod.metadata?.uid === ref.uid)

  return {
    async get(ref, deadlineMs) {
      const cached = reflector.get(ref.namespace, ref.name)
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
    cachedCount: () => reflector.list().length,
    onPod: (cb) => { listeners.push(cb) },
    synced: () => reflector.synced,
    stop: () => reflector.stop(),
  }
}
