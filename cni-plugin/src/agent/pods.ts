// Pod lookups for ADD/CHECK: a node-scoped cache (list+watch on spec.nodeName, our own
// reflector: see reflector.ts for why not client-node's informer) first, a direct GET when the
// cache misses or holds another incarnation, bounded by a deadline.
import type { V1Pod } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import type { PodRef } from '../cni/spec.ts'
import { seg, type KubeClient } from './kube.ts'
import { ApiError, httpListerWatcher, Reflector, type ReflectorOptions } from './reflector.ts'

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

/** Annotations the agent reads: its own (the interception intent). */
const OWN_ANNOTATION_PREFIX = 'cni.openziti.io/'
type Container = NonNullable<V1Pod['spec']>['containers'][number]

/**
 * Pure: what the cache keeps of a pod, the fields the agent reads and nothing else: identity
 * and version, deletion, its own annotations (the intent), the node, each container's ports and
 * probes (the ingress the fence lets in: shared/ingress.ts) and the init containers' statuses
 * (repair reads the validator's). A pod from EKS carries ~6 KiB of JSON (managedFields, env,
 * volumes, last-applied-configuration) the agent never reads; 500 of them as whole V1Pod objects
 * held several MiB of heap (bench/rss.ts).
 */
export function cachedPod(pod: V1Pod): V1Pod {
  const m = pod.metadata ?? {}
  const annotations = Object.fromEntries(Object.entries(m.annotations ?? {}).filter(([k]) => k.startsWith(OWN_ANNOTATION_PREFIX)))
  const container = (c: Container): Container => {
    const { name, ports, livenessProbe, readinessProbe, startupProbe } = c
    return { name, ...(ports ? { ports } : {}), ...(livenessProbe ? { livenessProbe } : {}), ...(readinessProbe ? { readinessProbe } : {}), ...(startupProbe ? { startupProbe } : {}) }
  }
  const spec = pod.spec
  const init = pod.status?.initContainerStatuses
  return {
    metadata: {
      name: m.name, namespace: m.namespace, uid: m.uid, resourceVersion: m.resourceVersion,
      ...(m.deletionTimestamp ? { deletionTimestamp: m.deletionTimestamp } : {}),
      ...(Object.keys(annotations).length ? { annotations } : {}),
    },
    ...(spec ? { spec: { nodeName: spec.nodeName, containers: (spec.containers ?? []).map(container), ...(spec.initContainers ? { initContainers: spec.initContainers.map(container) } : {}) } } : {}),
    ...(init ? { status: { initContainerStatuses: init } } : {}),
  }
}

export function createPodSource(kube: KubeClient, nodeName: string, log: Logger, hooks: PodSourceHooks = {}): PodSource {
  const listeners: Array<(pod: V1Pod) => void> = []
  const reflector = new Reflector<V1Pod>(httpListerWatcher<V1Pod>(kube.get, '/api/v1/pods', `spec.nodeName=${nodeName}`), {
    name: 'pods', log, ...hooks.reflector,
    transform: cachedPod,
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
          const pod = await kube.json<V1Pod>('GET', `/api/v1/namespaces/${seg(ref.namespace)}/pods/${seg(ref.name)}`)
          if (matches(pod, ref)) {
            hooks.onLookup?.('api', 'hit')
            return { pod, source: 'api' }
          }
          lastError = new Error(`pod ${ref.namespace}/${ref.name} has uid ${pod.metadata?.uid}, expected ${ref.uid}`)
        } catch (e) {
          if (e instanceof ApiError && e.status === 404) {
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
