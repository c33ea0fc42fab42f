// The API server limits all annotations of an object to 262,144 bytes together and checks it
// after mutating admission (422). The webhook refuses such a pod itself, naming the
// annotations, instead of handing the API server a patch it will refuse.
import t from 'tap'
import type { V1Pod } from '@kubernetes/client-node'
import jsonpatch from 'fast-json-patch'
import { annotationsTotalBytes, annotationsTotalProblem, LIMITS } from '@ziti-cni/shared'
import { review } from '../src/admission.ts'
import { validateConfig } from '../src/config.ts'
import { TEST_CONFIG } from './helpers.ts'

const cfg = validateConfig(TEST_CONFIG, {})

/** The Ziti range and `n` - 1 distinct host routes in 10.0.0.0/8. */
function cidrs(n: number): string {
  return ['100.64.0.0/10', ...Array.from({ length: n - 1 }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.1/32`)].join(', ')
}

function tproxyPod(n: number): V1Pod {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: 'big', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'big-id', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': cidrs(n) } },
    spec: { securityContext: { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } }, containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] },
  }
}

t.test('the total counts keys and values in UTF-8 bytes, as the API server does', async (t) => {
  t.equal(annotationsTotalBytes(undefined), 0)
  t.equal(annotationsTotalBytes({ ab: 'cde' }), 5)
  t.equal(annotationsTotalBytes({ k: 'é' }), 3, 'é is two bytes')
  t.equal(LIMITS.annotationsTotalBytes, 262144)
  const at = { k: 'x'.repeat(262144 - 1) }
  t.equal(annotationsTotalProblem(at), undefined, 'exactly at the limit is allowed')
  t.match(annotationsTotalProblem({ k: 'x'.repeat(262144) }), /262145 bytes, more than the 262144 bytes/)
})

t.test('a pod with ~9,500 intercept CIDRs is refused at admission, naming the annotations', async (t) => {
  const pod = tproxyPod(9500)
  t.ok(annotationsTotalBytes(pod.metadata!.annotations) < LIMITS.annotationsTotalBytes, 'the pod as written fits')
  const r = review({ uid: 'u1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'apps', object: pod }, cfg)
  t.equal(r.response.allowed, false)
  t.equal(r.outcome, 'rejected')
  t.equal(r.response.status?.code, 400)
  const msg = r.response.status?.message ?? ''
  t.match(msg, /^ziti-cni: metadata\.annotations: all annotations of the pod together would be \d+ bytes, more than the 262144 bytes Kubernetes allows/)
  t.match(msg, /cni\.openziti\.io\/interception \(\d+ bytes\)/, 'names the intent the webhook would write')
  t.match(msg, /cni\.openziti\.io\/intercept-cidrs \(\d+ bytes\)/, 'names the user annotation')
  t.notOk(r.response.patch, 'no patch')
})

t.test('a pod under the total is injected, and its patched annotations fit', async (t) => {
  const pod = tproxyPod(6000)
  const r = review({ uid: 'u2', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'apps', object: pod }, cfg)
  t.equal(r.response.allowed, true, r.response.status?.message ?? 'allowed')
  const patched = jsonpatch.applyPatch(structuredClone(pod), r.ops!, false, true).newDocument
  const total = annotationsTotalBytes(patched.metadata?.annotations)
  t.ok(total > annotationsTotalBytes(pod.metadata!.annotations) && total <= LIMITS.annotationsTotalBytes, `${total} bytes after injection`)
})
