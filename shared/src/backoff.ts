// The back-off client-go puts between a failed list/watch and the next (the agent's reflector
// and the webhook's informers share it): apimachinery wait.Backoff as client-go's reflector
// configures it (tools/cache/reflector.go at kubernetes/client-go 32ce75a, lines 59-67 and
// 317-336), never shorter than a Retry-After the server sent (rest/with_retry.go:309-318).

export interface BackoffOptions {
  initialMs?: number
  capMs?: number
  factor?: number
  jitter?: number
  resetMs?: number
  rand?: () => number
  now?: () => number
}

/**
 * Each delay is the current step plus up to `jitter` times itself; the step doubles up to the
 * cap (800 ms to 30 s, jitter 1.0: [30 s, 60 s) at the cap); after `resetMs` (2 minutes)
 * without a delay the next one starts from the beginning again.
 */
export class Backoff {
  private readonly o: Required<BackoffOptions>
  private step: number
  private last = -Infinity
  constructor(o: BackoffOptions = {}) {
    this.o = { initialMs: 800, capMs: 30_000, factor: 2, jitter: 1, resetMs: 120_000, rand: Math.random, now: Date.now, ...o }
    this.step = this.o.initialMs
  }

  /** The next delay in ms, never shorter than what the server asked for (Retry-After). */
  next(retryAfterMs = 0): number {
    const now = this.o.now()
    if (now - this.last > this.o.resetMs) this.step = this.o.initialMs
    this.last = now
    const base = this.step
    this.step = Math.min(this.step * this.o.factor, this.o.capMs)
    return Math.max(Math.round(base + this.o.rand() * this.o.jitter * base), retryAfterMs)
  }
}

/**
 * Retry-After in ms from a 429 or 5xx answer (with_retry.go:309-318 honours it for those
 * only), 0 when absent.
 */
export function retryAfterMs(status: number, header: string | string[] | undefined): number {
  const seconds = Number(Array.isArray(header) ? header[0] : header)
  return (status === 429 || status >= 500) && Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0
}

/**
 * The Retry-After of a failed list (client-node's ApiException carries the code and headers);
 * a failed watch (client-node's Watch keeps only statusCode) has none: the back-off alone.
 */
export function retryAfterOf(e: unknown): number {
  const err = e as { code?: unknown; statusCode?: unknown; headers?: Record<string, string> }
  const status = typeof err?.code === 'number' ? err.code : typeof err?.statusCode === 'number' ? err.statusCode : 0
  const header = err?.headers ? Object.entries(err.headers).find(([k]) => k.toLowerCase() === 'retry-after')?.[1] : undefined
  return retryAfterMs(status, header)
}

export interface ResendOptions {
  /** client-go's REST client: 10 (rest/client.go maxRetries). */
  maxRetries?: number
  /** The longest single wait honoured (client-go has none; a bound keeps a caller's deadline meaningful). */
  maxWaitMs?: number
  sleep?: (ms: number) => Promise<void>
}

/**
 * Sends a request again while its answer asks for that (`wait(answer)` > 0: a 429 or a 5xx with
 * Retry-After), after that long, at most `maxRetries` times, as client-go's REST client does
 * (rest/with_retry.go:309-318). The refused answer is `discard`ed first so its connection is
 * reused. The webhook's client-node clients and the agent's own client both send through this.
 */
export async function resendWhileAsked<R>(send: () => Promise<R>, wait: (answer: R) => number, discard: (answer: R) => unknown, o: ResendOptions = {}): Promise<R> {
  const maxRetries = o.maxRetries ?? 10
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)))
  for (let attempt = 0; ; attempt++) {
    const answer = await send()
    const ms = wait(answer)
    if (ms === 0 || attempt >= maxRetries) return answer
    await discard(answer)
    await sleep(Math.min(ms, o.maxWaitMs ?? 30_000))
  }
}
