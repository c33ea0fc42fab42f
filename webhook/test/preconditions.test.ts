// One test per precondition of an injected pod, each with its exact message, plus the
// capability arithmetic (the runtime's default set, add/drop order, root vs no_new_privs).
import t from 'tap'
import type { V1Container, V1Pod } from '@kubernetes/client-node'
import { ValidationError } from '@ziti-cni/shared'
import { capabilitySet, checkPreconditions, reachableCapabilities, REFUSED_CAPABILITIES, RUNTIME_DEFAULT_CAPABILITIES, type PreconditionContext } from '../src/inject/preconditions.ts'

const CTX: PreconditionContext = { uid: 2171, gid: 2171, tunResource: 'tun.openziti.io/tun', secretNames: ['app-identity'], injected: false }
const SAFE = { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }
const app = (extra: Partial<V1Container> = {}): V1Container => ({ name: 'app', image: 'x/app:1', securityContext: SAFE, ...extra })
const pod = (spec: Partial<V1Pod['spec']> = {}): V1Pod => ({ metadata: { name: 'p' }, spec: { securityContext: { runAsNonRoot: true, runAsUser: 1000 }, containers: [app()], ...spec } as V1Pod['spec'] })

function refused(t: Tap, p: V1Pod, message: string, ctx: PreconditionContext = CTX) {
  try {
    checkPreconditions(p, ctx)
    t.fail(`expected refusal: ${message}`)
  } catch (e) {
    t.ok(e instanceof ValidationError, 'a ValidationError')
    t.equal((e as Error).message, message)
  }
}
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

t.test('a restricted pod passes', async (t) => {
  t.doesNotThrow(() => checkPreconditions(pod(), CTX))
  t.doesNotThrow(() => checkPreconditions(pod({ initContainers: [app({ name: 'init' })] }), CTX))
  t.doesNotThrow(() => checkPreconditions(pod({ securityContext: { runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, supplementalGroups: [4, 5] } }), CTX), 'other groups are fine')
})

t.test('pod-level namespaces', async (t) => {
  refused(t, pod({ shareProcessNamespace: true }), 'spec.shareProcessNamespace: must not be true in an injected pod: another container could read the sidecar\'s identity through /proc (its environment and its root)')
  refused(t, pod({ hostPID: true }), 'spec.hostPID: must not be true in an injected pod: the node\'s processes, the sidecar\'s among them, would be visible through /proc')
  refused(t, pod({ hostIPC: true }), 'spec.hostIPC: must not be true in an injected pod: the node\'s IPC namespace is shared with every hostIPC pod on the node')
  refused(t, pod({ hostNetwork: true }), 'spec.hostNetwork: must not be true in an injected pod: the node\'s network namespace cannot be given per-pod interception')
  t.doesNotThrow(() => checkPreconditions(pod({ shareProcessNamespace: false, hostPID: false }), CTX), 'false is fine')
})

t.test('pod-level uid and groups', async (t) => {
  refused(t, pod({ securityContext: { runAsUser: 2171 } }), 'spec.securityContext.runAsUser: 2171 is the Ziti sidecar\'s uid; traffic from it is never intercepted, so the app would escape capture')
  refused(t, pod({ securityContext: { runAsUser: 1000, runAsGroup: 2171 } }), 'spec.securityContext.runAsGroup: must not be 2171, the Ziti sidecar\'s gid: its processes would own what the sidecar\'s group owns')
  refused(t, pod({ securityContext: { runAsUser: 1000, fsGroup: 2171 } }), 'spec.securityContext.fsGroup: must not be 2171, the Ziti sidecar\'s gid: every container would join the sidecar\'s group')
  refused(t, pod({ securityContext: { runAsUser: 1000, supplementalGroups: [10, 2171] } }), 'spec.securityContext.supplementalGroups: must not contain 2171, the Ziti sidecar\'s gid: every container would join the sidecar\'s group')
  refused(t, pod({ securityContext: { runAsUser: 1000, runAsGroup: 3000 } }), 'spec.securityContext.runAsGroup: must not be 3000, the Ziti sidecar\'s gid: its processes would own what the sidecar\'s group owns', { ...CTX, gid: 3000 })
})

t.test('container uid and group, init containers too', async (t) => {
  refused(t, pod({ containers: [app({ securityContext: { ...SAFE, runAsUser: 2171 } })] }), 'spec.containers[0].securityContext.runAsUser: container "app" runs as 2171, the Ziti sidecar\'s uid; its traffic would escape capture')
  refused(t, pod({ initContainers: [app({ name: 'init', securityContext: { ...SAFE, runAsGroup: 2171 } })] }), 'spec.initContainers[0].securityContext.runAsGroup: container "init" must not run as group 2171, the Ziti sidecar\'s gid')
})

t.test('privileged', async (t) => {
  refused(t, pod({ containers: [app({ securityContext: { ...SAFE, privileged: true } })] }), 'spec.containers[0].securityContext.privileged: container "app" must not be privileged in an injected pod: it could change the pod\'s rules and become the sidecar')
})

const rootDefaults = 'spec.containers[0].securityContext.capabilities: container "app" can hold SETUID, SETGID, NET_RAW, MKNOD (it may run as root, and Kubernetes keeps the runtime\'s default capabilities unless they are dropped): ' +
  `SETUID ${REFUSED_CAPABILITIES.SETUID}; SETGID ${REFUSED_CAPABILITIES.SETGID}; NET_RAW ${REFUSED_CAPABILITIES.NET_RAW}; MKNOD ${REFUSED_CAPABILITIES.MKNOD}. Drop them (capabilities.drop: [ALL]), or run it as a non-root uid with allowPrivilegeEscalation: false`

t.test('capabilities: a root app with the runtime defaults (Pod Security baseline) is refused', async (t) => {
  refused(t, pod({ securityContext: {}, containers: [{ name: 'app', image: 'x/app:1' }] }), rootDefaults)
  refused(t, pod({ securityContext: { runAsUser: 0 }, containers: [{ name: 'app', image: 'x/app:1', securityContext: { runAsNonRoot: true } }] }), rootDefaults, CTX)
})

t.test('capabilities: each refused one, added to a non-root app, is refused only without no_new_privs', async (t) => {
  for (const cap of Object.keys(REFUSED_CAPABILITIES)) {
    const c = app({ securityContext: { capabilities: { drop: ['ALL'], add: [cap] } } })
    refused(t, pod({ containers: [c] }), `spec.containers[0].securityContext.capabilities: container "app" can hold ${cap} (allowPrivilegeEscalation is not false, so a setuid or file-capability binary in its image gains its bounding set): ${cap} ${REFUSED_CAPABILITIES[cap]}. Drop them (capabilities.drop: [ALL]), or run it as a non-root uid with allowPrivilegeEscalation: false`)
    // A non-root process under no_new_privs never gets a capability from Kubernetes (no ambient set).
    t.doesNotThrow(() => checkPreconditions(pod({ containers: [app({ securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'], add: [cap] } } })] }), CTX), `${cap}: bounding only, unreachable`)
  }
  refused(t, pod({ containers: [app({ securityContext: { capabilities: { add: ['CAP_SYS_PTRACE'], drop: ['ALL'] } } })] }), `spec.containers[0].securityContext.capabilities: container "app" can hold SYS_PTRACE (allowPrivilegeEscalation is not false, so a setuid or file-capability binary in its image gains its bounding set): SYS_PTRACE ${REFUSED_CAPABILITIES.SYS_PTRACE}. Drop them (capabilities.drop: [ALL]), or run it as a non-root uid with allowPrivilegeEscalation: false`, CTX)
})

t.test('capabilities: root may keep the harmless defaults if it drops the refused ones and sets no_new_privs', async (t) => {
  const keep = { allowPrivilegeEscalation: false, capabilities: { drop: ['SETUID', 'SETGID', 'NET_RAW', 'MKNOD'] } }
  t.doesNotThrow(() => checkPreconditions(pod({ securityContext: {}, containers: [app({ securityContext: keep })] }), CTX))
  refused(t, pod({ securityContext: {}, containers: [app({ securityContext: { capabilities: keep.capabilities } })] }),
    'spec.containers[0].securityContext.allowPrivilegeEscalation: container "app" may run as root with CHOWN and FOWNER, so it could make a file setuid to the sidecar\'s uid 2171 and run it; set allowPrivilegeEscalation: false (or drop CHOWN and FOWNER)')
  t.doesNotThrow(() => checkPreconditions(pod({ securityContext: {}, containers: [app({ securityContext: { capabilities: { drop: ['ALL'] } } })] }), CTX), 'root with nothing at all')
})

t.test('capability arithmetic follows containerd (add ALL, drop ALL, then named)', async (t) => {
  const c = (add?: string[], drop?: string[]): V1Container => ({ name: 'c', securityContext: { capabilities: { ...(add ? { add } : {}), ...(drop ? { drop } : {}) } } })
  t.same(capabilitySet({ name: 'c' }).sort(), [...RUNTIME_DEFAULT_CAPABILITIES].sort(), 'nothing asked: the runtime default')
  t.same(capabilitySet(c(['NET_ADMIN'], ['ALL'])), ['NET_ADMIN'], 'drop ALL then add')
  t.same(capabilitySet(c(['ALL'], ['ALL'])), [], 'add ALL then drop ALL: nothing')
  t.ok(capabilitySet(c(['ALL'])).includes('SYS_ADMIN'), 'add ALL: everything')
  t.notOk(capabilitySet(c(['ALL'], ['SYS_ADMIN'])).includes('SYS_ADMIN'), 'add ALL, drop one')
  t.same(capabilitySet(c(['NET_ADMIN'], ['NET_ADMIN'])).includes('NET_ADMIN'), false, 'a named drop wins over a named add')
  t.same(reachableCapabilities(pod(), app({ securityContext: { allowPrivilegeEscalation: false, capabilities: { add: ['SYS_ADMIN'] } } })), [], 'non-root + no_new_privs: nothing reachable')
  t.ok(reachableCapabilities(pod(), app({ securityContext: { capabilities: { add: ['SYS_ADMIN'] } } })).includes('SYS_ADMIN'), 'non-root without no_new_privs: the bounding set')
  t.ok(reachableCapabilities(pod({ securityContext: { runAsNonRoot: false } }), app({ securityContext: { allowPrivilegeEscalation: false } })).includes('SETUID'), 'root + no_new_privs: still the effective set')
})

t.test('the identity volume and Secret are the sidecar\'s', async (t) => {
  refused(t, pod({ volumes: [{ name: 'ziti-identity', emptyDir: {} }] }), 'spec.volumes[0].name: "ziti-identity" is reserved for the Ziti sidecar\'s identity')
  refused(t, pod({ containers: [app({ volumeMounts: [{ name: 'ziti-identity', mountPath: '/steal' }] })] }), 'spec.containers[0].volumeMounts[0]: container "app" must not mount "ziti-identity": it holds the sidecar\'s enrolled identity')
  refused(t, pod({ containers: [app({ volumeDevices: [{ name: 'ziti-identity', devicePath: '/dev/x' }] })] }), 'spec.containers[0].volumeDevices[0]: container "app" must not use "ziti-identity": it holds the sidecar\'s enrolled identity')
  refused(t, pod({ volumes: [{ name: 'id', secret: { secretName: 'app-identity' } }] }), 'spec.volumes[0]: must not mount Secret "app-identity": it holds the pod\'s Ziti identity, which only the injected sidecar may read')
  refused(t, pod({ volumes: [{ name: 'id', projected: { sources: [{ configMap: { name: 'x' } }, { secret: { name: 'app-identity' } }] } }] }), 'spec.volumes[0]: must not mount Secret "app-identity": it holds the pod\'s Ziti identity, which only the injected sidecar may read')
  refused(t, pod({ containers: [app({ env: [{ name: 'A', value: '1' }, { name: 'K', valueFrom: { secretKeyRef: { name: 'app-identity', key: 'identity.json' } } }] })] }), 'spec.containers[0].env[1].valueFrom.secretKeyRef: container "app" must not read Secret "app-identity": it holds the pod\'s Ziti identity, which only the injected sidecar may read')
  refused(t, pod({ containers: [app({ envFrom: [{ secretRef: { name: 'app-identity' } }] })] }), 'spec.containers[0].envFrom[0].secretRef: container "app" must not read Secret "app-identity": it holds the pod\'s Ziti identity, which only the injected sidecar may read')
  t.doesNotThrow(() => checkPreconditions(pod({ volumes: [{ name: 'db', secret: { secretName: 'db-password' } }], containers: [app({ envFrom: [{ secretRef: { name: 'db-password' } }] })] }), CTX), 'other Secrets are the app\'s business')
})

t.test('the tun device is the sidecar\'s alone', async (t) => {
  refused(t, pod({ containers: [app({ resources: { limits: { 'tun.openziti.io/tun': '110' } } })] }), 'spec.containers[0].resources.limits: container "app" must not request tun.openziti.io/tun: the tun device is the injected sidecar\'s alone (one per pod)')
  refused(t, pod({ initContainers: [app({ name: 'i', resources: { requests: { 'tun.openziti.io/tun': '1' } } })] }), 'spec.initContainers[0].resources.requests: container "i" must not request tun.openziti.io/tun: the tun device is the injected sidecar\'s alone (one per pod)')
})

t.test('reserved names; on a marked pod our own two are skipped, ephemeral ones never', async (t) => {
  const sidecar: V1Container = { name: 'ziti-tunnel', image: 'z', securityContext: { runAsUser: 2171, runAsGroup: 2171 }, volumeMounts: [{ name: 'ziti-identity', mountPath: '/netfoundry' }], env: [{ name: 'ZITI_IDENTITY_JSON', valueFrom: { secretKeyRef: { name: 'app-identity', key: 'k' } } }] }
  refused(t, pod({ initContainers: [sidecar] }), 'spec.initContainers[0].name: "ziti-tunnel" is reserved for the injected Ziti sidecar')
  refused(t, pod({ containers: [app(), app({ name: 'ziti-cni-validator' })] }), 'spec.containers[1].name: "ziti-cni-validator" is reserved for the injected Ziti sidecar')
  const marked = pod({ initContainers: [sidecar], volumes: [{ name: 'ziti-identity', emptyDir: {} }] })
  t.doesNotThrow(() => checkPreconditions(marked, { ...CTX, injected: true }))
  refused(t, { ...marked, spec: { ...marked.spec!, containers: [app({ volumeMounts: [{ name: 'ziti-identity', mountPath: '/x' }] })] } }, 'spec.containers[0].volumeMounts[0]: container "app" must not mount "ziti-identity": it holds the sidecar\'s enrolled identity', { ...CTX, injected: true })
})

t.test('ephemeral containers', async (t) => {
  const debug = { name: 'debug', image: 'busybox', securityContext: SAFE }
  refused(t, pod({ ephemeralContainers: [{ ...debug, targetContainerName: 'ziti-tunnel' }] }), 'spec.ephemeralContainers[0].targetContainerName: ephemeral container "debug" must not target the Ziti sidecar: it would share its processes and see its identity')
  refused(t, pod({ ephemeralContainers: [{ ...debug, securityContext: { ...SAFE, runAsUser: 2171 } }] }), 'spec.ephemeralContainers[0].securityContext.runAsUser: container "debug" runs as 2171, the Ziti sidecar\'s uid; its traffic would escape capture')
  refused(t, pod({ ephemeralContainers: [{ name: 'ziti-tunnel', image: 'x' }] }), 'spec.ephemeralContainers[0].name: "ziti-tunnel" is reserved for the injected Ziti sidecar', { ...CTX, injected: true })
  t.doesNotThrow(() => checkPreconditions(pod({ ephemeralContainers: [{ ...debug, targetContainerName: 'app' }] }), CTX), 'debugging the app is fine')
})
