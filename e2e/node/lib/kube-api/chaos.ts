// Chaos: the faults a real API server produces on its own now and then, turned on at random
// and seeded so a failing run can be replayed. ZCNI_CHAOS=1 turns on the faults the current
// product must survive (today: all of them); ZCNI_CHAOS=all every fault; or a list, e.g.
// ZCNI_CHAOS=watch-end,bookmark,410,paging,429. ZCNI_CHAOS_SEED=<n> replays a run.

export const FAULTS = ['watch-end', 'bookmark', '410', 'paging', '429'] as const
export type Fault = (typeof FAULTS)[number]

/**
 * What ZCNI_CHAOS=1 means: every fault. The product survives a 429 everywhere it talks to the
 * API: the agent's reflector and pod lookups back off like client-go, the identity
 * controller's informer and the webhook's cluster-DNS follower wait client-go's back-off and
 * any Retry-After (shared/src/backoff.ts), and a CNI ADD that fails meanwhile is retried by the
 * kubelet harness after the pod worker's back-off (kubelet.ts SYNC_BACKOFF_MS).
 */
export const DEFAULT_FAULTS: Fault[] = [...FAULTS]

export interface Chaos {
  faults: Set<Fault>
  seed: number
  /** True with probability p, from the seeded stream. */
  chance(p: number): boolean
  /** An integer in [lo, hi]. */
  between(lo: number, hi: number): number
}

export function parseChaos(text: string | undefined, seedText?: string): Chaos | undefined {
  const spec = (text ?? '').trim()
  if (!spec || spec === '0' || spec === 'false') return undefined
  let faults: Fault[]
  if (spec === '1' || spec === 'true') faults = DEFAULT_FAULTS
  else if (spec === 'all') faults = [...FAULTS]
  else {
    faults = []
    for (const f of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
      if (!(FAULTS as readonly string[]).includes(f)) throw new Error(`ZCNI_CHAOS: unknown fault "${f}"; known: ${FAULTS.join(', ')}, or 1 (${DEFAULT_FAULTS.join(',')}), or all`)
      faults.push(f as Fault)
    }
  }
  const seed = seedText && /^\d+$/.test(seedText) ? Number(seedText) : Math.floor(Math.random() * 2 ** 31)
  // mulberry32: small, seeded, good enough to pick faults.
  let state = seed >>> 0
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    faults: new Set(faults), seed,
    chance: (p) => next() < p,
    between: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
  }
}
