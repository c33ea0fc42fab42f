// The mutating admission chain as kube-apiserver runs it for MutatingWebhookConfigurations
// (apiserver pkg/admission/plugin/webhook): which webhooks are called (rules, namespace and
// object selectors, CEL matchConditions), how (AdmissionReview v1 over HTTPS within
// timeoutSeconds), what their answers become (patch, warnings, the denial's own code), and
// reinvocation. The shipped deploy/base/webhook/mutatingwebhookconfiguration.yaml is what
// the suites evaluate.
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { request } from 'node:https'
import { parse as parseCel } from '@marcbachmann/cel-js'
import jsonpatch from 'fast-json-patch'
import { parse as parseYaml } from 'yaml'
import { StatusError, type Obj } from './objects.ts'
import { labelSelectorRequirements, labelsMatch, type LabelRequirement } from './selectors.ts'

export interface WebhookEndpoint { url: string; ca: string }

interface Rule { apiGroups?: string[]; apiVersions?: string[]; operations?: string[]; resources?: string[]; scope?: string }
type Selector = { matchLabels?: Record<string, string>; matchExpressions?: LabelRequirement[] }
export interface MutatingWebhook {
  name: string
  clientConfig: { service?: { name: string; namespace: string; path?: string; port?: number }; url?: string; caBundle?: string }
  rules?: Rule[]
  namespaceSelector?: Selector
  objectSelector?: Selector
  matchConditions?: Array<{ name: string; expression: string }>
  timeoutSeconds?: number
  failurePolicy?: 'Fail' | 'Ignore'
  reinvocationPolicy?: 'Never' | 'IfNeeded'
  sideEffects?: string
}
export interface MutatingWebhookConfiguration { metadata: { name: string }; webhooks: MutatingWebhook[] }

/** Where a webhook's clientConfig points, as the service resolver would find it. */
export type Resolver = (clientConfig: MutatingWebhook['clientConfig']) => WebhookEndpoint | undefined

export const SHIPPED_CONFIGURATION = new URL('../../../../deploy/base/webhook/mutatingwebhookconfiguration.yaml', import.meta.url)

export function loadShippedConfiguration(): MutatingWebhookConfiguration {
  return parseYaml(readFileSync(SHIPPED_CONFIGURATION, 'utf8')) as MutatingWebhookConfiguration
}

export interface AdmissionAttributes {
  object: Obj
  namespace: Obj | undefined
  operation: 'CREATE'
  resource: { group: string; version: string; resource: string; kind: string }
  dryRun: boolean
  userInfo: { username: string; groups?: string[] }
}

/** One webhook call, as the test can observe it. */
export interface WebhookCall { webhook: string; round: number; outcome: 'patched' | 'allowed' | 'denied' | 'failed-open' | 'failed' }

/**
 * A mutating webhook dispatcher (apiserver pkg/admission/plugin/webhook/mutating/dispatcher.go
 * Dispatch) with the reinvoker around it (pkg/admission/reinvocation.go:35-50).
 */
export class MutatingAdmission {
  private configs: Array<{ config: MutatingWebhookConfiguration; resolve: Resolver }> = []
  readonly calls: WebhookCall[] = []
  /** Re-applied to the object after every patch, as the decoder defaults it. */
  private defaulter: (o: Obj) => Obj

  constructor(defaulter: (o: Obj) => Obj) {
    this.defaulter = defaulter
  }

  get empty(): boolean { return this.configs.length === 0 }

  /** Adds (or replaces, by name) a configuration. */
  register(config: MutatingWebhookConfiguration, resolve: Resolver): void {
    this.configs = this.configs.filter((c) => c.config.metadata.name !== config.metadata.name)
    this.configs.push({ config, resolve })
    // Configurations run in name order (admission/configuration/mutating_webhook_manager.go:125).
    this.configs.sort((a, b) => (a.config.metadata.name < b.config.metadata.name ? -1 : a.config.metadata.name > b.config.metadata.name ? 1 : 0))
  }

  unregister(name: string): void {
    this.configs = this.configs.filter((c) => c.config.metadata.name !== name)
  }

  /** Runs the chain; throws a StatusError as the API server would answer the client. */
  async admit(attrs: AdmissionAttributes): Promise<{ object: Obj; warnings: string[] }> {
    const hooks = this.configs.flatMap(({ config, resolve }) => config.webhooks.map((webhook, i) => ({ webhook, resolve, uid: `${config.metadata.name}/${i}` })))
    const warnings: string[] = []
    let object = attrs.object
    // webhookReinvokeContext (mutating/reinvocationcontext.go:25-80).
    let previouslyInvoked = new Set<string>()
    const reinvoke = new Set<string>()
    let shouldReinvoke = false
    for (const round of [0, 1]) {
      if (round === 1 && !shouldReinvoke) break
      for (const { webhook, resolve, uid } of hooks) {
        if (!this.shouldCall(webhook, { ...attrs, object })) continue
        // During reinvocation a webhook is never called for the first time (dispatcher.go:145-152).
        if (round === 1 && !reinvoke.has(uid)) continue
        const result = await this.call(webhook, resolve, { ...attrs, object }, round)
        warnings.push(...result.warnings)
        if (result.object) {
          const changed = JSON.stringify(result.object) !== JSON.stringify(object)
          object = result.object
          if (changed) {
            // dispatcher.go:192-196: every earlier IfNeeded webhook becomes due again.
            for (const s of previouslyInvoked) reinvoke.add(s)
            previouslyInvoked = new Set()
            shouldReinvoke = true
          }
        }
        if (webhook.reinvocationPolicy === 'IfNeeded') previouslyInvoked.add(uid)
      }
    }
    return { object, warnings }
  }

  /**
   * ShouldCallHook (generic/webhook.go:298-384): namespace selector, object selector, rules,
   * then matchConditions. A condition that errors fails closed with 403 under failurePolicy
   * Fail (webhook.go:374-376), skips the webhook under Ignore (matchconditions/matcher.go:124-138).
   */
  private shouldCall(h: MutatingWebhook, a: AdmissionAttributes): boolean {
    if (!labelsMatch(labelSelectorRequirements(h.namespaceSelector), a.namespace?.metadata.labels)) return false
    if (!labelsMatch(labelSelectorRequirements(h.objectSelector), a.object.metadata.labels)) return false
    if (!(h.rules ?? []).some((r) => ruleMatches(r, a))) return false
    const conditions = h.matchConditions ?? []
    const errors: string[] = []
    for (const c of conditions) {
      let value: unknown
      try {
        value = parseCel(c.expression)({ object: a.object, oldObject: null, request: reviewRequest(a, '').request, params: null })
      } catch (e) {
        errors.push(`expression '${c.expression}' resulted in error: ${(e as Error).message.split('\n')[0]}`)
        continue
      }
      if (typeof value !== 'boolean') { errors.push(`expression '${c.expression}' resulted in error: no such overload`); continue }
      // Any false condition skips the webhook, whatever else failed (matcher.go:115-122).
      if (!value) return false
    }
    if (errors.length) {
      if (h.failurePolicy === 'Ignore') return false
      const name = a.object.metadata.name ?? ''
      throw new StatusError(403, 'Forbidden', `${a.resource.resource}${name ? ` "${name}"` : ''} is forbidden: ${errors.length === 1 ? errors[0] : `[${errors.join(', ')}]`}`, { name, kind: a.resource.resource })
    }
    return true
  }

  /** callAttrMutatingHook (dispatcher.go:238-390) with the failure policy of Dispatch (:165-231). */
  private async call(h: MutatingWebhook, resolve: Resolver, a: AdmissionAttributes, round: number): Promise<{ object?: Obj; warnings: string[] }> {
    const failed = (reason: string): { warnings: string[] } => {
      // ErrCallingWebhook (apiserver pkg/util/webhook/error.go:35-40): Ignore fails open,
      // Fail becomes NewInternalError (500, "Internal error occurred: ...", dispatcher.go:225-226).
      if (h.failurePolicy === 'Ignore') { this.calls.push({ webhook: h.name, round, outcome: 'failed-open' }); return { warnings: [] } }
      this.calls.push({ webhook: h.name, round, outcome: 'failed' })
      const message = `failed calling webhook "${h.name}": ${reason}`
      throw new StatusError(500, 'InternalError', `Internal error occurred: ${message}`, { causes: [{ message }] })
    }
    const endpoint = resolve(h.clientConfig)
    const timeout = h.timeoutSeconds ?? 10
    const base = endpoint?.url ?? h.clientConfig.url ?? `https://${h.clientConfig.service?.name}.${h.clientConfig.service?.namespace}.svc:${h.clientConfig.service?.port ?? 443}${h.clientConfig.service?.path ?? ''}`
    // The REST client sends the webhook's timeout as ?timeout= (dispatcher.go:284-294).
    const url = `${base}?timeout=${timeout}s`
    if (!endpoint) return failed(`failed to call webhook: Post "${url}": dial tcp: lookup ${h.clientConfig.service?.name}.${h.clientConfig.service?.namespace}.svc: no such host`)
    const uid = randomUUID()
    const review = reviewRequest(a, uid)
    let answer: { apiVersion?: string; kind?: string; response?: { uid?: string; allowed?: boolean; status?: { code?: number; message?: string; reason?: string; status?: string }; patch?: string; patchType?: string; warnings?: string[] } }
    try {
      const { status, text } = await post(url, endpoint.ca, JSON.stringify(review), timeout * 1000)
      if (status !== 200) return failed(`failed to call webhook: an error on the server ("${text.slice(0, 200)}") has prevented the request from succeeding`)
      answer = JSON.parse(text) as typeof answer
    } catch (e) {
      return failed(`failed to call webhook: Post "${url}": ${(e as Error).message}`)
    }
    // VerifyAdmissionResponse (webhook/request/admissionreview.go:45-85).
    const r = answer.response
    if (answer.apiVersion !== 'admission.k8s.io/v1' || answer.kind !== 'AdmissionReview') return failed(`received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got ${answer.apiVersion}, Kind=${answer.kind}`)
    if (!r) return failed('received invalid webhook response: webhook response was absent')
    if (r.uid !== uid) return failed(`received invalid webhook response: expected response.uid="${uid}", got "${r.uid}"`)
    if (r.patch && !r.patchType) return failed('received invalid webhook response: webhook returned response.patch but not response.patchType')
    const warnings = r.warnings ?? []
    if (!r.allowed) {
      // ToStatusErr (webhook/errors/statuserror.go:28-58): the webhook's own code (at least 400).
      this.calls.push({ webhook: h.name, round, outcome: 'denied' })
      const st = r.status ?? {}
      const deniedBy = `admission webhook "${h.name}" denied the request`
      const message = st.message ? `${deniedBy}: ${st.message}` : st.reason ? `${deniedBy}: ${st.reason}` : `${deniedBy} without explanation`
      throw new StatusError(!st.code || st.code < 400 ? 400 : st.code, st.reason ?? '', message, undefined, warningHeaders(warnings))
    }
    if (!r.patch) { this.calls.push({ webhook: h.name, round, outcome: 'allowed' }); return { warnings } }
    let patched: Obj
    try {
      const ops = JSON.parse(Buffer.from(r.patch, 'base64').toString('utf8')) as jsonpatch.Operation[]
      patched = jsonpatch.applyPatch(structuredClone(a.object), ops, true).newDocument
    } catch (e) {
      this.calls.push({ webhook: h.name, round, outcome: 'failed' })
      throw new StatusError(500, 'InternalError', `Internal error occurred: ${(e as Error).message}`)
    }
    this.calls.push({ webhook: h.name, round, outcome: 'patched' })
    return { object: this.defaulter(patched), warnings }
  }
}

/** rules.Matcher (webhook/predicates/rules/rules.go): group, version, operation, resource, scope. */
function ruleMatches(r: Rule, a: AdmissionAttributes): boolean {
  const has = (list: string[] | undefined, v: string) => (list ?? []).some((x) => x === '*' || x === v)
  const scopeOk = !r.scope || r.scope === '*' || r.scope === (a.namespace ? 'Namespaced' : 'Cluster')
  return has(r.apiGroups, a.resource.group) && has(r.apiVersions, a.resource.version) && has(r.operations, a.operation) && has(r.resources, a.resource.resource) && scopeOk
}

function reviewRequest(a: AdmissionAttributes, uid: string) {
  const gvk = { group: a.resource.group, version: a.resource.version, kind: a.resource.kind }
  const gvr = { group: a.resource.group, version: a.resource.version, resource: a.resource.resource }
  return {
    apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview',
    request: {
      uid, kind: gvk, resource: gvr, requestKind: gvk, requestResource: gvr,
      name: a.object.metadata.name ?? '', namespace: a.object.metadata.namespace, operation: a.operation,
      userInfo: a.userInfo, object: a.object, oldObject: null, dryRun: a.dryRun, options: { kind: 'CreateOptions', apiVersion: 'meta.k8s.io/v1' },
    },
  }
}

/**
 * The Warning headers a client sees (apiserver pkg/endpoints/filters/warning.go:40-135):
 * `299 - "<text>"`, deduplicated; past 4096 runes in total every warning is cut to 256 runes.
 */
export function warningHeaders(warnings: string[]): Record<string, string> {
  const unique = [...new Set(warnings.filter(Boolean))]
  if (!unique.length) return {}
  const total = unique.reduce((n, w) => n + [...w].length, 0)
  const texts = total <= 4096 ? unique : unique.map((w) => [...w].slice(0, 256).join(''))
  return { warning: texts.map((w) => `299 - ${JSON.stringify(w)}`).join(', ') }
}

function post(url: string, ca: string, body: string, timeoutMs: number): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', ca, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => { clearTimeout(timer); resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }) })
      res.on('error', reject)
    })
    const timer = setTimeout(() => req.destroy(new Error('context deadline exceeded')), timeoutMs)
    req.on('error', (e) => { clearTimeout(timer); reject(e) })
    req.end(body)
  })
}
