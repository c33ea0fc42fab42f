// A namespace admin's attacks on admission, as real AdmissionReviews over HTTPS against the
// real server: each must be refused, with a message naming the field and the rule. (The
// ValidatingAdmissionPolicy's side of UPDATE, ephemeral containers and the tun resource is
// deploy/test/policy.test.ts; the kernel's side of shareProcessNamespace is
// e2e/node/redteam-admission.test.ts.)
import t from 'tap'
import type { V1Container, V1EphemeralContainer, V1Pod } from '@kubernetes/client-node'
import jsonpatch from 'fast-json-patch'
import { https, startWebhook } from './helpers.ts'

const restrictedApp = { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }
const ANN = { 'cni.openziti.io/identity-secret': 'app-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }
function pod(spec: Partial<V1Pod['spec']> = {}, annotations: Record<string, string> = ANN): V1Pod {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: 'web', namespace: 'apps', annotations: { ...annotations } },
    spec: { securityContext: { runAsNonRoot: true, runAsUser: 1000 }, containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: restrictedApp }], ...spec } as V1Pod['spec'],
  }
}
const app = (extra: Partial<V1Container>): V1Container => ({ name: 'app', image: 'registry.example.com/app:1.0', securityContext: restrictedApp, ...extra })

t.test('admission attacks over HTTPS', async (t) => {
  const wh = await startWebhook()
  t.teardown(() => wh.app.close())
  const send = async (request: object) => {
    const res = await https(`${wh.url}/mutate`, wh.ca, 'POST', JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'u', kind: { group: '', version: 'v1', kind: 'Pod' }, resource: { group: '', version: 'v1', resource: 'pods' }, namespace: 'apps', ...request } }))
    t.equal(res.status, 200)
    return JSON.parse(res.text).response as { allowed: boolean; patch?: string; status?: { code: number; message: string } }
  }
  const create = (p: V1Pod) => send({ operation: 'CREATE', name: p.metadata?.name, object: p })
  const refused = async (t: Tap, p: Promise<{ allowed: boolean; status?: { code: number; message: string } }>, message: string) => {
    const r = await p
    t.equal(r.allowed, false, 'refused')
    t.equal(r.status?.message, `ziti-cni: ${message}`)
  }
  // The pod as the API server stores it after our patch.
  const good = await create(pod())
  t.ok(good.allowed && good.patch, 'the honest pod is injected')
  const injected = jsonpatch.applyPatch(structuredClone(pod()), JSON.parse(Buffer.from(good.patch!, 'base64').toString()), true).newDocument
  t.equal((await create(injected)).allowed, true, 'and its reinvocation passes, unchanged')

  await t.test('a forged marker with a hand-written intent', async (t) => {
    const forged = '{"v":1,"mode":"proxy","uid":1000,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}'
    const p = structuredClone(injected)
    p.metadata!.annotations!['cni.openziti.io/interception'] = forged
    const r = await create(p)
    t.equal(r.allowed, false)
    t.match(r.status?.message, /^ziti-cni: cni\.openziti\.io\/status: the pod is marked as injected, but cni\.openziti\.io\/interception is not the intent the webhook writes for its annotations \(expected \{"v":1,"mode":"proxy","uid":2171,/)
    // Written from scratch: the attacker's own "sidecar", running as the exempt uid.
    const scratch = pod({ containers: [app({}), { name: 'ziti-tunnel', image: 'evil/app:1', securityContext: { runAsUser: 2171, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] },
      { ...ANN, 'cni.openziti.io/status': '{"version":"0.1.0","mode":"proxy","sidecar":"ziti-tunnel"}', 'cni.openziti.io/interception': forged })
    t.match((await create(scratch)).status?.message, /^ziti-cni: cni\.openziti\.io\/status: the pod is marked as injected, but cni\.openziti\.io\/interception is not the intent/)
    const rightIntent = structuredClone(injected)
    rightIntent.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!.image = 'evil/app:1'
    await refused(t, create(rightIntent), 'cni.openziti.io/status: the pod is marked as injected, but its ziti-tunnel container\'s image is not the one the webhook builds; remove cni.openziti.io/status, cni.openziti.io/interception and the ziti-tunnel container and let the webhook inject it')
    const noIntent = structuredClone(injected)
    delete noIntent.metadata!.annotations!['cni.openziti.io/interception']
    await refused(t, create(noIntent), 'cni.openziti.io/status: the pod is marked as injected, but cni.openziti.io/interception is missing; remove cni.openziti.io/status, cni.openziti.io/interception and the ziti-tunnel container and let the webhook inject it')
    // A marked pod gets the preconditions too (another webhook may add containers after us).
    const added = structuredClone(injected)
    added.spec!.containers.push(app({ name: 'late', volumeMounts: [{ name: 'ziti-identity', mountPath: '/id' }] }))
    await refused(t, create(added), 'spec.containers[1].volumeMounts[0]: container "late" must not mount "ziti-identity": it holds the sidecar\'s enrolled identity')
  })

  await t.test('a hand-written intent without a marker is replaced', async (t) => {
    const r = await create(pod({}, { ...ANN, 'cni.openziti.io/interception': '{"v":1,"mode":"proxy","uid":1000,"dnat":[],"fence":[]}' }))
    const ops = JSON.parse(Buffer.from(r.patch!, 'base64').toString()) as Array<{ path: string; value: unknown }>
    t.match(ops.find((o) => o.path === '/metadata/annotations/cni.openziti.io~1interception')?.value, /"uid":2171/)
  })

  await t.test('an UPDATE of the intent, and of the marker', async (t) => {
    const changed = structuredClone(injected)
    changed.metadata!.annotations!['cni.openziti.io/interception'] = '{"v":1,"mode":"proxy","uid":1000,"dnat":[],"fence":[]}'
    await refused(t, send({ operation: 'UPDATE', object: changed, oldObject: injected }), 'metadata.annotations[cni.openziti.io/interception]: cannot change on a running pod: the webhook validated it at creation, and the node agent programs the pod from it at its next sandbox')
    const unmarked = structuredClone(injected)
    delete unmarked.metadata!.annotations!['cni.openziti.io/status']
    await refused(t, send({ operation: 'UPDATE', object: unmarked, oldObject: injected }), 'metadata.annotations[cni.openziti.io/status]: cannot change on a running pod: the webhook validated it at creation, and the node agent programs the pod from it at its next sandbox')
    const labelled = structuredClone(injected)
    labelled.metadata!.labels = { 'cni.openziti.io/inject': 'disabled' }
    await refused(t, send({ operation: 'UPDATE', object: labelled, oldObject: injected }), 'metadata.labels[cni.openziti.io/inject]: cannot change on a running pod: the webhook validated it at creation, and the node agent programs the pod from it at its next sandbox')
    const other = structuredClone(injected)
    other.metadata!.annotations!['example.com/x'] = 'y'
    t.equal((await send({ operation: 'UPDATE', object: other, oldObject: injected })).allowed, true, 'other annotations may change')
  })

  await t.test('ephemeral containers (kubectl debug)', async (t) => {
    const debug = (e: Partial<V1EphemeralContainer>) => {
      const p = structuredClone(injected)
      p.spec!.ephemeralContainers = [{ name: 'debugger', image: 'busybox:1.36', securityContext: { runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }, ...e }]
      return send({ operation: 'UPDATE', subResource: 'ephemeralcontainers', object: p, oldObject: injected })
    }
    t.equal((await debug({})).allowed, true, 'kubectl debug --profile=restricted')
    await refused(t, debug({ targetContainerName: 'ziti-tunnel' }), 'spec.ephemeralContainers[0].targetContainerName: ephemeral container "debugger" must not target the Ziti sidecar: it would share its processes and see its identity')
    await refused(t, debug({ securityContext: { runAsUser: 2171, allowPrivilegeEscalation: false } }), 'spec.ephemeralContainers[0].securityContext.runAsUser: container "debugger" runs as 2171, the Ziti sidecar\'s uid; its traffic would escape capture')
    await refused(t, debug({ securityContext: undefined }), 'spec.ephemeralContainers[0].securityContext.allowPrivilegeEscalation: ephemeral container "debugger" must set allowPrivilegeEscalation: false in a pod with a Ziti sidecar (kubectl debug --profile=restricted)')
    await refused(t, debug({ env: [{ name: 'ID', valueFrom: { secretKeyRef: { name: 'app-identity', key: 'identity.json' } } }] }), 'spec.ephemeralContainers[0].env[0].valueFrom.secretKeyRef: container "debugger" must not read Secret "app-identity": it holds the pod\'s Ziti identity, which only the injected sidecar may read')
  })

  await t.test('CREATE: the preconditions, as an attacker writes them', async (t) => {
    await refused(t, create(pod({ shareProcessNamespace: true })), 'spec.shareProcessNamespace: must not be true in an injected pod: another container could read the sidecar\'s identity through /proc (its environment and its root)')
    await refused(t, create(pod({ securityContext: { runAsUser: 1000, runAsGroup: 2171 } })), 'spec.securityContext.runAsGroup: must not be 2171, the Ziti sidecar\'s gid: its processes would own what the sidecar\'s group owns')
    await refused(t, create(pod({ securityContext: { runAsUser: 1000, supplementalGroups: [2171] } })), 'spec.securityContext.supplementalGroups: must not contain 2171, the Ziti sidecar\'s gid: every container would join the sidecar\'s group')
    await refused(t, create(pod({ containers: [app({ securityContext: { ...restrictedApp, runAsGroup: 2171 } })] })), 'spec.containers[0].securityContext.runAsGroup: container "app" must not run as group 2171, the Ziti sidecar\'s gid')
    await refused(t, create(pod({ containers: [app({ volumeMounts: [{ name: 'ziti-identity', mountPath: '/steal' }] })] })), 'spec.containers[0].volumeMounts[0]: container "app" must not mount "ziti-identity": it holds the sidecar\'s enrolled identity')
    await refused(t, create(pod({ containers: [app({ env: [{ name: 'ID', valueFrom: { secretKeyRef: { name: 'app-identity', key: 'identity.json' } } }] })] })), 'spec.containers[0].env[0].valueFrom.secretKeyRef: container "app" must not read Secret "app-identity": it holds the pod\'s Ziti identity, which only the injected sidecar may read')
    await refused(t, create(pod({ volumes: [{ name: 'id', secret: { secretName: 'app-identity' } }] })), 'spec.volumes[0]: must not mount Secret "app-identity": it holds the pod\'s Ziti identity, which only the injected sidecar may read')
    await refused(t, create(pod({ containers: [app({ resources: { limits: { 'tun.openziti.io/tun': '110' } } })] })), 'spec.containers[0].resources.limits: container "app" must not request tun.openziti.io/tun: the tun device is the injected sidecar\'s alone (one per pod)')
    const baseline = await create(pod({ securityContext: {}, containers: [{ name: 'app', image: 'nginx:1.27' }] }))
    t.match(baseline.status?.message, /^ziti-cni: spec\.containers\[0\]\.securityContext\.capabilities: container "app" can hold SETUID, SETGID, NET_RAW, MKNOD \(it may run as root/, 'a root app with the runtime defaults (Pod Security baseline)')
  })
})
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]
