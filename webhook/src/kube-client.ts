// Kubernetes API clients that retry what client-go's REST client retries on its own and
// client-node does not: an answer of 429 (API Priority and Fairness) or a 5xx that carries
// Retry-After is sent again after that many seconds, at most 10 times (client-go
// rest/with_retry.go:309-318 checkWait, rest/client.go maxRetries 10). Without it, every
// 429 a real API server sends under load fails one TokenReview, pod read, list or Lease
// renewal of ours outright.
import { IsomorphicFetchHttpLibrary, ServerConfiguration, createConfiguration, wrapHttpLibrary, type HttpLibrary, type KubeConfig, type RequestContext, type ResponseContext } from '@kubernetes/client-node'
import { resendWhileAsked, retryAfterMs, type ResendOptions } from '../../shared/src/backoff.ts'

export type RetryOptions = ResendOptions

/** An HttpLibrary that sends a request again while the answer asks for it (429/5xx + Retry-After). */
export function retryingHttpLibrary(inner: HttpLibrary = new IsomorphicFetchHttpLibrary(), o: RetryOptions = {}): HttpLibrary {
  return wrapHttpLibrary({
    send: (request: RequestContext): Promise<ResponseContext> => resendWhileAsked(
      () => inner.send(request).toPromise(),
      (res) => (request.getSignal()?.aborted ? 0 : retryAfterMs(res.httpStatusCode, res.headers['retry-after'])),
      (res) => res.body.text().catch(() => undefined),
      o),
  })
}

/** kc.makeApiClient(api), with the retrying HttpLibrary (and client-node's own User-Agent middleware dropped: none of ours depends on it). */
export function makeApiClient<T>(kc: KubeConfig, api: new (config: ReturnType<typeof createConfiguration>) => T, o: RetryOptions = {}): T {
  const cluster = kc.getCurrentCluster()
  if (!cluster) throw new Error('kubeconfig: no current cluster')
  return new api(createConfiguration({ baseServer: new ServerConfiguration(cluster.server, {}), authMethods: { default: kc }, httpApi: retryingHttpLibrary(undefined, o) }))
}
