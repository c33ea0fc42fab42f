// Real HTTPS AdmissionReviews against the real fastify server: golden patches, rejections,
// skips, reinvocation, and the Pod Security "restricted" verdict on every injected pod.
import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import type { V1Pod } from '@kubernetes/client-node'
import jsonpatch from 'fast-json-patch'
import { parseIntent } from '@ziti-cni/shared'
import { FIXTURES } from './fixtures.ts'
import { https, startWebhook } from './helpers.ts'
import { restrictedViolations } from './pss-restricted.ts'

const update = process.env.UPDATE_GOLDEN === '1'
const golden = (name: string) => new URL(`./golden/${name}.patch.json`, import.meta.url)

function reviewBody(uid: string, pod: V1Pod, namespace = 'apps', extra: object = {}) {
  return JSON.stringify({
    apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview',
    request: { uid, kind: { group: '', version: 'v1', kind: 'Pod' }, resource: { group: '', version: 'v1', resource: 'pods' }, operation: 'CREATE', namespace, name: pod.metadata?.name ?? '', object: pod, dryRun: false, ...extra },
  })
}

t.test('admission over HTTPS', async (t) => {
  const wh = await startWebhook()
  t.teardown(() => wh.app.close())
  const post = (body: string) => https(`${wh.url}/mutate`, wh.ca, 'POST', body)

  for (const f of FIXTURES) {
    await t.test(f.name, async (t) => {
      const res = await post(reviewBody(`uid-${f.name}`, f.pod, f.namespace))
      t.equal(res.status, 200)
      const review = JSON.parse(res.text)
      t.equal(review.apiVersion, 'admission.k8s.io/v1')
      t.equal(review.response.uid, `uid-${f.name}`, 'uid echoed')
      if (f.warning) t.match(review.response.warnings?.join('\n'), f.warning)
      if (f.expect === 'skip') {
        t.equal(review.response.allowed, true)
        t.notOk(review.response.patch, 'no patch')
        return
      }
      if (typeof f.expect === 'object') {
        t.equal(review.response.allowed, false)
        t.equal(review.response.status.message, f.expect.reject)
        t.equal(review.response.status.code, 400)
        return
      }
      t.equal(review.response.allowed, true)
      t.equal(review.response.patchType, 'JSONPatch')
      const ops = JSON.parse(Buffer.from(review.response.patch, 'base64').toString('utf8')) as jsonpatch.Operation[]
      const text = JSON.stringify(ops, null, 2) + '\n'
      if (update) writeFileSync(golden(f.name), text)
      t.equal(text, readFileSync(golden(f.name), 'utf8'), 'patch matches golden (UPDATE_GOLDEN=1 rewrites)')
      t.ok(ops.some((o) => o.path === '/metadata/annotations/cni.openziti.io~1interception'), 'annotation keys with "/" are JSON-Pointer escaped')

      const mutated = jsonpatch.applyPatch(structuredClone(f.pod), ops, true).newDocument
      t.equal(jsonpatch.validate(ops, structuredClone(f.pod)), undefined, 'patch validates against the pod')
      const intent = parseIntent(mutated.metadata!.annotations!['cni.openziti.io/interception']!)
      t.equal(intent.uid, 2171)
      t.same(mutated.spec!.initContainers!.slice(0, 2).map((c) => c.name), ['ziti-cni-validator', 'ziti-tunnel'], 'validator first, then the native sidecar, then the app\'s own')
      t.equal(mutated.spec!.initContainers![1]!.restartPolicy, 'Always')
      t.equal(mutated.spec!.initContainers![0]!.env![0]!.value, mutated.metadata!.annotations!['cni.openziti.io/interception'], 'the validator checks the same intent')
      t.equal(mutated.spec!.initContainers![0]!.securityContext!.runAsUser, 2172, 'not the sidecar uid')
      const violations = restrictedViolations(mutated)
      t.same(violations, [], 'injected pod passes Pod Security "restricted"')
      if (intent.mode === 'proxy') {
        const hosts = new Map(mutated.spec!.hostAliases!.flatMap((a) => (a.hostnames ?? []).map((h) => [h, a.ip] as const)))
        for (const d of intent.dnat) t.ok([...hosts.values()].includes(d.dst), `${d.dst} is reachable by name`)
      }
      for (const a of Object.keys(f.pod.metadata?.annotations ?? {})) if (a !== 'cni.openziti.io/interception') t.equal(mutated.metadata!.annotations![a], f.pod.metadata!.annotations![a], `annotation ${a} kept`)

      // Reinvocation (reinvocationPolicy: IfNeeded) or a repeated call: nothing more to do.
      const again = JSON.parse((await post(reviewBody(`uid-${f.name}-2`, mutated, f.namespace))).text)
      t.equal(again.response.allowed, true)
      t.notOk(again.response.patch, 'already-injected pod gets an empty patch')
    })
  }

  await t.test('non-pod kinds and non-CREATE operations pass untouched', async (t) => {
    const body = JSON.parse(reviewBody('u-kind', FIXTURES[0]!.pod))
    body.request.kind = { group: 'apps', version: 'v1', kind: 'Deployment' }
    t.notOk(JSON.parse((await post(JSON.stringify(body))).text).response.patch)
    const upd = JSON.parse(reviewBody('u-upd', FIXTURES[0]!.pod, 'apps', { operation: 'UPDATE' }))
    t.notOk(JSON.parse((await post(JSON.stringify(upd))).text).response.patch)
  })

  await t.test('dryRun gets the same verdict (the webhook has no side effects)', async (t) => {
    const res = JSON.parse((await post(reviewBody('u-dry', FIXTURES[0]!.pod, 'apps', { dryRun: true }))).text)
    t.ok(res.response.patch)
  })

  await t.test('malformed reviews are HTTP 400; oversize bodies 413', async (t) => {
    t.equal((await post('{"kind":"Nope"}')).status, 400)
    t.match((await post('{"kind":"Nope"}')).text, /expected admission.k8s.io\/v1 AdmissionReview/)
    t.equal((await post('{not json')).status, 400)
    t.equal((await post(JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: {} }))).status, 400)
    t.equal((await post(JSON.stringify({ pad: 'x'.repeat(7 * 1024 * 1024) }))).status, 413)
  })

  await t.test('health, readiness and metrics', async (t) => {
    t.equal((await https(`${wh.url}/healthz`, wh.ca, 'GET')).status, 200)
    t.equal((await https(`${wh.url}/readyz`, wh.ca, 'GET')).status, 200)
    const m = (await https(`${wh.url}/metrics`, wh.ca, 'GET')).text
    t.match(m, /ziti_cni_admission_requests_total\{outcome="injected"\} \d+/)
    t.match(m, /ziti_cni_admission_requests_total\{outcome="rejected"\} \d+/)
    t.match(m, /ziti_cni_injections_total\{mode="tproxy"\} 4/)
    t.match(m, /ziti_cni_rejections_total \d+/)
    t.match(m, /ziti_cni_admission_duration_seconds_bucket\{le="0.005",outcome="injected"\} \d+/)
  })
})
