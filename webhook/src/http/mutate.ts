// POST /mutate as an encapsulated fastify plugin: the AdmissionReview in, the verdict out,
// one child logger per request carrying the admission uid, namespace and pod name.
import type { FastifyPluginAsync } from 'fastify'
import type { WebhookConfig } from '../config.ts'
import { BadReview, admit, parseReview, type AdmissionReview } from '../admission.ts'
import { InjectionCache } from '../inject/mutate.ts'
import type { WebhookMetrics } from '../metrics.ts'

/** The route the MutatingWebhookConfiguration's clientConfig.service.path must name. */
export const MUTATE_PATH = '/mutate'

export interface MutateOptions {
  config: WebhookConfig
  metrics: WebhookMetrics
}

export const mutateRoutes: FastifyPluginAsync<MutateOptions> = async (app, { config, metrics }) => {
  const cache = new InjectionCache()
  app.post(MUTATE_PATH, async (request, reply) => {
    const started = process.hrtime.bigint()
    let req
    try {
      req = parseReview(request.body)
    } catch (e) {
      if (!(e instanceof BadReview)) throw e
      metrics.requests.inc({ outcome: 'bad-request' })
      return reply.code(400).send({ message: e.message })
    }
    // Request context on every line; plain fields instead of a child logger (hot path).
    const ctx = {
      admissionUid: req.uid, namespace: req.namespace ?? req.object?.metadata?.namespace,
      pod: req.name || req.object?.metadata?.name || `${req.object?.metadata?.generateName ?? ''}<generated>`,
      dryRun: req.dryRun ?? false,
    }
    const log = request.log
    let result
    try {
      result = admit(req, config, cache)
    } catch (e) {
      log.error({ ...ctx, err: e }, 'admission failed unexpectedly')
      result = { response: { uid: req.uid, allowed: false, status: { code: 500, message: `ziti-cni: internal error: ${(e as Error).message}` } }, outcome: 'error' as const }
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    metrics.requests.inc({ outcome: result.outcome })
    metrics.latency.observe({ outcome: result.outcome }, seconds)
    if (result.outcome === 'injected') metrics.injections.inc({ mode: result.mode ?? 'unknown' })
    if (result.outcome === 'rejected') metrics.rejections.inc()
    const fields = { ...ctx, outcome: result.outcome, mode: result.mode, ms: seconds * 1000 }
    if (result.outcome === 'rejected') log.warn({ ...fields, reason: result.response.status?.message }, 'pod rejected')
    else log.info({ ...fields, warnings: result.response.warnings }, `admission ${result.outcome}`)
    const body: AdmissionReview = { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: result.response }
    return reply.code(200).send(body)
  })
}
