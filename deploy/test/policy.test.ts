// The shipped ValidatingAdmissionPolicy, evaluated with a real CEL implementation
// (@marcbachmann/cel-js) the way the API server evaluates it
// (k8s.io/apiserver/pkg/admission/plugin/policy/validating): variables lazily, on first use,
// each once; every validation; a CEL error under failurePolicy Fail refuses. Inputs are
// real-shaped: pods injected by the real webhook core, AdmissionRequest fields as the API
// server fills them (request.operation, subResource), oldObject null on CREATE.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { parseAllDocuments } from 'yaml'
import { Environment, evaluate } from '@marcbachmann/cel-js'
import { createRequire } from 'node:module'
import { DEFAULT_CONFIG, type WebhookConfig } from '../../webhook/src/config.ts'
import { applyMutation, mutatePod } from '../../webhook/src/inject/mutate.ts'
import { REFUSED_CAPABILITIES, RUNTIME_DEFAULT_CAPABILITIES } from '../../webhook/src/inject/preconditions.ts'
import { ANNOTATION_STATUS, SIDECAR_NAME, SIDECAR_VOLUME } from '../../shared/src/index.ts'

type Doc = Record<string, any>
type V1Pod = Parameters<typeof mutatePod>[0]
type V1EphemeralContainer = NonNullable<NonNullable<V1Pod['spec']>['ephemeralContainers']>[number]
const docs = parseAllDocuments(readFileSync(new URL('../base/policy/validatingadmissionpolicy.yaml', import.meta.url), 'utf8')).map((d) => d.toJS() as Doc)
const policy = docs.find((d) => d.kind === 'ValidatingAdmissionPolicy')!
const binding = docs.find((d) => d.kind === 'ValidatingAdmissionPolicyBinding')!

/** JSON numbers are int64 in the API server's CEL (the Pod schema's integer fields). */
function toCel(v: unknown): unknown {
  if (typeof v === 'number') return Number.isInteger(v) ? BigInt(v) : v
  if (Array.isArray(v)) return v.map(toCel)
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toCel(x)]))
  return v
}

interface Request { operation: 'CREATE' | 'UPDATE'; subResource?: string; object: V1Pod; oldObject?: V1Pod; namespaceLabels?: Record<string, string>; namespace?: string }

/** The API server's verdict: the messages of the failed validations (empty: admitted). */
function admit(r: Request): string[] {
  const ns = r.namespace ?? 'apps'
  const resource = r.subResource ? `pods/${r.subResource}` : 'pods'
  const matched = policy.spec.matchConstraints.resourceRules.some((rule: Doc) => rule.resources.includes(resource) && rule.operations.includes(r.operation))
  if (!matched) return []
  const ctx: Record<string, unknown> = {
    object: toCel(r.object),
    oldObject: r.oldObject ? toCel(r.oldObject) : null,
    request: toCel({ operation: r.operation, subResource: r.subResource ?? '', namespace: ns, kind: { group: '', version: 'v1', kind: 'Pod' }, resource: { group: '', version: 'v1', resource: 'pods' } }),
    namespaceObject: toCel({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: { 'kubernetes.io/metadata.name': ns, ...r.namespaceLabels } } }),
  }
  const variables: Record<string, unknown> = {}
  ctx.variables = variables
  for (const v of policy.spec.variables as Array<{ name: string; expression: string }>) {
    let done = false
    let value: unknown
    Object.defineProperty(variables, v.name, {
      enumerable: true,
      get() {
        if (!done) { value = evaluate(v.expression, ctx); done = true }
        return value
      },
    })
  }
  const failures: string[] = []
  for (const val of policy.spec.validations as Array<{ expression: string; messageExpression: string }>) {
    try {
      if (evaluate(val.expression, ctx) !== true) failures.push(String(evaluate(val.messageExpression, ctx)))
    } catch (e) {
      failures.push(`CEL error (failurePolicy ${policy.spec.failurePolicy}): ${(e as Error).message}`)
    }
  }
  return failures
}

// The cluster DNS as the webhook would have read it from kube-system/kube-dns (tun mode needs one).
const CFG: WebhookConfig = { ...DEFAULT_CONFIG, tproxy: { ...DEFAULT_CONFIG.tproxy, clusterDns: ['10.96.0.10'] }, tun: { ...DEFAULT_CONFIG.tun, image: 'docker.io/openziti/ziti-edge-tunnel:1.18.2' } }
const restrictedApp = { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }
function appPod(annotations: Record<string, string>, extra: Partial<V1Pod['spec']> = {}): V1Pod {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: 'web', namespace: 'apps', uid: 'u-1', annotations },
    spec: { securityContext: { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } }, containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: restrictedApp }], ...extra },
  }
}
const injected = (p: V1Pod) => applyMutation(p, mutatePod(p, CFG).ops)
const proxyPod = injected(appPod({ 'cni.openziti.io/identity-secret': 'app-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }))
const tunPod = injected(appPod({ 'cni.openziti.io/identity-secret': 'app-identity', 'cni.openziti.io/mode': 'tun' }))
const OPTED_IN = { 'cni.openziti.io/inject': 'enabled' }
const withEphemeral = (p: V1Pod, ...e: V1EphemeralContainer[]): V1Pod => ({ ...p, spec: { ...p.spec!, ephemeralContainers: [...(p.spec!.ephemeralContainers ?? []), ...e] } })
const debug = (sc: V1EphemeralContainer['securityContext'], extra: Partial<V1EphemeralContainer> = {}): V1EphemeralContainer => ({ name: 'debugger-x1', image: 'busybox:1.36', stdin: true, tty: true, ...(sc ? { securityContext: sc } : {}), ...extra })
// kubectl debug --profile=restricted (k8s.io/kubectl/pkg/cmd/debug/profiles.go restrictedProfile)
const RESTRICTED = { runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, seccompProfile: { type: 'RuntimeDefault' } }
const ephemeralUpdate = (e: V1EphemeralContainer, base: V1Pod = proxyPod): Request => ({ operation: 'UPDATE', subResource: 'ephemeralcontainers', oldObject: base, object: withEphemeral(base, e), namespaceLabels: OPTED_IN })

t.test('the policy is what the cluster needs: v1, Fail, bound with Deny, pods and their subresources', async (t) => {
  t.equal(policy.apiVersion, 'admissionregistration.k8s.io/v1')
  t.equal(policy.spec.failurePolicy, 'Fail')
  t.same(binding.spec, { policyName: policy.metadata.name, validationActions: ['Deny'] }, 'every namespace, refusing')
  t.same(policy.spec.matchConstraints.resourceRules, [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE', 'UPDATE'], resources: ['pods', 'pods/ephemeralcontainers', 'pods/status'] }])
  const value = (name: string) => evaluate(policy.spec.variables.find((v: Doc) => v.name === name).expression)
  t.same(value('defaultCaps'), [...RUNTIME_DEFAULT_CAPABILITIES], 'the same runtime defaults as the webhook')
  t.same(value('refusedCaps'), Object.keys(REFUSED_CAPABILITIES), 'the same refused capabilities as the webhook')
  const text = JSON.stringify(policy)
  for (const name of [SIDECAR_NAME, SIDECAR_VOLUME, ANNOTATION_STATUS, CFG.tun.resource]) t.match(text, name, `uses the contract's ${name}`)
})

t.test('CREATE: injected pods and ordinary pods are admitted', async (t) => {
  t.same(admit({ operation: 'CREATE', object: proxyPod, namespaceLabels: OPTED_IN }), [])
  t.same(admit({ operation: 'CREATE', object: tunPod, namespaceLabels: OPTED_IN }), [], 'the injected tun sidecar asks for its one device')
  t.same(admit({ operation: 'CREATE', object: tunPod, namespaceLabels: {}, namespace: 'other' }), [`spec.containers[${SIDECAR_NAME}].resources: tun.openziti.io/tun is for the ziti-tunnel sidecar that the ziti-cni webhook injects, one device per pod; no other container or pod may request it (a node has a fixed number of devices)`], 'a marked pod the webhook never saw gets no device')
  t.same(admit({ operation: 'CREATE', object: { ...tunPod, metadata: { ...tunPod.metadata, labels: { 'cni.openziti.io/inject': 'enabled' } } }, namespaceLabels: {}, namespace: 'other' }), [], 'a pod that opted in itself is seen by the pod webhook')
  t.same(admit({ operation: 'CREATE', object: appPod({}), namespaceLabels: {} }), [], 'a pod with nothing of ours')
  t.same(admit({ operation: 'CREATE', object: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'bare' }, spec: { containers: [{ name: 'c', image: 'x' }] } } }), [], 'a minimal pod (no optional field at all) raises no CEL error')
})

t.test('CREATE: the tun resource outside the injected sidecar (row 10)', async (t) => {
  const greedy = appPod({}, { containers: [{ name: 'app', image: 'x', resources: { limits: { 'tun.openziti.io/tun': '110' }, requests: { 'tun.openziti.io/tun': '110' } } }] })
  const msg = (names: string) => `spec.containers[${names}].resources: tun.openziti.io/tun is for the ziti-tunnel sidecar that the ziti-cni webhook injects, one device per pod; no other container or pod may request it (a node has a fixed number of devices)`
  t.same(admit({ operation: 'CREATE', object: greedy, namespaceLabels: {}, namespace: 'tenant-b' }), [msg('app')], '110 devices in a pod that is not injected')
  const extra = { ...tunPod, spec: { ...tunPod.spec!, containers: [...tunPod.spec!.containers, { name: 'app2', image: 'x', resources: { limits: { 'tun.openziti.io/tun': '1' } } }] } }
  t.same(admit({ operation: 'CREATE', object: extra, namespaceLabels: OPTED_IN }), [msg('app2')], 'a second container of an injected pod')
  const two = structuredClone(tunPod)
  two.spec!.initContainers!.find((c) => c.name === SIDECAR_NAME)!.resources!.limits!['tun.openziti.io/tun'] = '2'
  t.same(admit({ operation: 'CREATE', object: two, namespaceLabels: OPTED_IN }), [msg(SIDECAR_NAME)], 'the sidecar itself asking for two')
  const init = appPod({}, { initContainers: [{ name: 'grab', image: 'x', resources: { requests: { 'tun.openziti.io/tun': '1' } } }] })
  t.same(admit({ operation: 'CREATE', object: init, namespaceLabels: OPTED_IN }), [msg('grab')], 'an init container, by requests alone')
})

t.test('UPDATE: cni.openziti.io/ annotations and labels are frozen (row 3)', async (t) => {
  const annotate = (p: V1Pod, a: Record<string, string | undefined>): V1Pod => {
    const q = structuredClone(p)
    for (const [k, v] of Object.entries(a)) { if (v === undefined) delete q.metadata!.annotations![k]; else q.metadata!.annotations![k] = v }
    return q
  }
  const forged = '{"v":1,"mode":"proxy","uid":1000,"dnat":[],"fence":[]}'
  t.same(admit({ operation: 'UPDATE', oldObject: proxyPod, object: annotate(proxyPod, { 'cni.openziti.io/interception': forged }) }),
    ['metadata.annotations: cni.openziti.io/interception: cni.openziti.io/ annotations cannot change on a running pod: the webhook validated them at creation, and the node agent programs the pod from them at its next sandbox'], 'rewriting the intent')
  t.same(admit({ operation: 'UPDATE', oldObject: proxyPod, object: annotate(proxyPod, { 'cni.openziti.io/status': undefined }) })[0], 'metadata.annotations: cni.openziti.io/status: cni.openziti.io/ annotations cannot change on a running pod: the webhook validated them at creation, and the node agent programs the pod from them at its next sandbox', 'removing the marker')
  t.match(admit({ operation: 'UPDATE', oldObject: appPod({}), object: appPod({ 'cni.openziti.io/interception': forged }) })[0], /^metadata\.annotations: cni\.openziti\.io\/interception: /, 'adding an intent to a pod that had none')
  t.same(admit({ operation: 'UPDATE', oldObject: proxyPod, object: annotate(proxyPod, { 'example.com/note': 'x' }) }), [], 'other annotations are the owner\'s')
  const relabel = structuredClone(proxyPod)
  relabel.metadata!.labels = { 'cni.openziti.io/auto-identity': 'true' }
  t.same(admit({ operation: 'UPDATE', oldObject: proxyPod, object: relabel }), ['metadata.labels: cni.openziti.io/auto-identity: cni.openziti.io/ labels cannot change on a running pod: injection was decided at creation, and the identity reconciler lists pods by them'])
  t.same(admit({ operation: 'UPDATE', subResource: 'status', oldObject: proxyPod, object: { ...proxyPod, status: { phase: 'Running' } } }), [], 'the kubelet\'s status updates pass')
  t.match(admit({ operation: 'UPDATE', subResource: 'status', oldObject: proxyPod, object: annotate(proxyPod, { 'cni.openziti.io/interception': forged }) })[0], /cannot change on a running pod/, 'and cannot carry an intent change either')
})

t.test('ephemeral containers in an injected pod (row 4)', async (t) => {
  t.same(admit(ephemeralUpdate(debug(RESTRICTED))), [], 'kubectl debug --profile=restricted')
  t.same(admit(ephemeralUpdate(debug({ runAsUser: 0, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }))), [], 'root with nothing')
  t.same(admit(ephemeralUpdate(debug(RESTRICTED, { targetContainerName: 'app' }))), [], 'targeting the app')
  t.same(admit(ephemeralUpdate(debug(RESTRICTED, { targetContainerName: SIDECAR_NAME }))), ['spec.ephemeralContainers[debugger-x1].targetContainerName: must not be the Ziti sidecar: the container would share its processes and see its identity'])
  const asSidecar = 'spec.ephemeralContainers[debugger-x1].securityContext: must not run as the Ziti sidecar\'s uid or gid: its traffic would escape interception and it could read the sidecar\'s files'
  t.same(admit(ephemeralUpdate(debug({ ...RESTRICTED, runAsUser: 2171 }))), [asSidecar], 'uid 2171')
  t.same(admit(ephemeralUpdate(debug({ ...RESTRICTED, runAsUser: 1000, runAsGroup: 2171 }))), [asSidecar], 'gid 2171')
  const escalation = 'spec.ephemeralContainers[debugger-x1].securityContext: in a pod with a Ziti sidecar an ephemeral container must set allowPrivilegeEscalation: false and not be privileged (kubectl debug --profile=restricted)'
  const rootCaps = 'spec.ephemeralContainers[debugger-x1].securityContext.capabilities: may run as root and keeps one of SETUID, SETGID, NET_ADMIN, NET_RAW, SYS_ADMIN, SYS_PTRACE, SYS_MODULE, SYS_RAWIO, BPF, PERFMON, DAC_READ_SEARCH, MKNOD, SYS_BOOT (the runtime gives root SETUID, SETGID, NET_RAW and MKNOD unless they are dropped), which lets it become the Ziti sidecar or change the pod\'s network: drop ALL, or run as a non-root uid'
  const legacy = { ...proxyPod, spec: { ...proxyPod.spec!, securityContext: {} } }
  t.same(admit(ephemeralUpdate(debug(undefined), legacy)), [escalation, rootCaps], 'kubectl debug (legacy profile) as root with the runtime defaults')
  t.same(admit(ephemeralUpdate(debug({ privileged: true, allowPrivilegeEscalation: false, runAsUser: 1000 }))), [escalation], 'privileged')
  t.same(admit(ephemeralUpdate(debug({ runAsUser: 0, allowPrivilegeEscalation: false }))), [rootCaps], 'root keeping the defaults')
  t.same(admit(ephemeralUpdate(debug({ runAsUser: 0, allowPrivilegeEscalation: false, capabilities: { drop: ['SETUID', 'SETGID', 'NET_RAW', 'MKNOD'] } }))), [], 'root dropping the refused defaults')
  t.same(admit(ephemeralUpdate(debug({ runAsUser: 0, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'], add: ['sys_ptrace'] } }))), [rootCaps], 'root adding one back (any case, as containerd upper-cases)')
  t.same(admit(ephemeralUpdate(debug({ runAsUser: 0, allowPrivilegeEscalation: false, capabilities: { add: ['ALL'], drop: ['ALL'] } }))), [], 'add ALL then drop ALL is nothing (containerd\'s order)')
  t.same(admit(ephemeralUpdate(debug({ ...RESTRICTED, capabilities: { add: ['NET_ADMIN'] } }))), [], 'non-root under no_new_privs holds nothing it adds (no ambient set)')
  t.same(admit(ephemeralUpdate(debug(RESTRICTED, { volumeMounts: [{ name: SIDECAR_VOLUME, mountPath: '/steal' }] }))), ['spec.ephemeralContainers[debugger-x1].volumeMounts: must not mount ziti-identity: it holds the Ziti sidecar\'s enrolled identity'])
  t.same(admit(ephemeralUpdate(debug(RESTRICTED, { env: [{ name: 'K', valueFrom: { secretKeyRef: { name: 'app-identity', key: 'identity.json' } } }] }))), ['spec.ephemeralContainers[debugger-x1].env: must not read the Secret holding the pod\'s Ziti identity (app-identity): only the sidecar may'])
  t.same(admit(ephemeralUpdate(debug(RESTRICTED, { envFrom: [{ secretRef: { name: 'app-identity' } }] }))), ['spec.ephemeralContainers[debugger-x1].env: must not read the Secret holding the pod\'s Ziti identity (app-identity): only the sidecar may'])
  // Only what the request adds is judged: an earlier one was judged when it came.
  const earlier = withEphemeral(proxyPod, debug(RESTRICTED, { name: 'earlier' }))
  t.same(admit(ephemeralUpdate(debug(RESTRICTED, { name: 'second' }), earlier)), [])
  t.same(admit(ephemeralUpdate(debug({ ...RESTRICTED, runAsUser: 2171 }, { name: 'second' }), earlier)), [asSidecar.replace('debugger-x1', 'second')])
  t.same(admit({ ...ephemeralUpdate(debug(undefined, { targetContainerName: 'app' })), oldObject: appPod({}), object: withEphemeral(appPod({}), debug(undefined)) }), [], 'a pod without a sidecar is not ours to judge')
})

t.test('every overlay ships the policy and its binding unchanged', { skip: spawnSync('sh', ['-c', 'command -v kubectl']).status !== 0 && process.env.CI !== 'true' ? 'needs kubectl (kustomize)' : false }, async (t) => {
  for (const overlay of ['kind', 'production']) {
    const r = spawnSync('kubectl', ['kustomize', new URL(`../overlays/${overlay}`, import.meta.url).pathname], { encoding: 'utf8' })
    t.equal(r.status, 0, r.stderr)
    const rendered = parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc)
    t.same(rendered.find((d) => d.kind === 'ValidatingAdmissionPolicy')?.spec, policy.spec, `${overlay}: the policy as tested`)
    t.same(rendered.find((d) => d.kind === 'ValidatingAdmissionPolicyBinding')?.spec, binding.spec, `${overlay}: its binding`)
  }
})

t.test('the policy\'s idea of "the webhook saw this pod" matches the webhook configuration', async (t) => {
  const mwc = parseAllDocuments(readFileSync(new URL('../base/webhook/mutatingwebhookconfiguration.yaml', import.meta.url), 'utf8')).map((d) => d.toJS() as Doc)[0]!
  const excluded = (w: Doc) => w.namespaceSelector.matchExpressions.find((e: Doc) => e.key === 'kubernetes.io/metadata.name' && e.operator === 'NotIn').values
  const expr = policy.spec.variables.find((v: Doc) => v.name === 'webhookSelected').expression as string
  const listed = evaluate(/namespaceObject\.metadata\.name in (\[[^\]]*\])/.exec(expr)![1]!)
  for (const w of mwc.webhooks) t.same(listed, excluded(w), `${w.name}: the same excluded namespaces`)
  t.same(mwc.webhooks.map((w: Doc) => w.namespaceSelector.matchExpressions.find((e: Doc) => e.key === 'cni.openziti.io/inject')), [
    { key: 'cni.openziti.io/inject', operator: 'In', values: ['enabled'] },
    { key: 'cni.openziti.io/inject', operator: 'DoesNotExist' },
  ], 'namespace opt-in, or no namespace label and the pod label (as webhookSelected reads them)')
  t.same(mwc.webhooks.map((w: Doc) => w.rules), [0, 1].map(() => [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'], scope: 'Namespaced' }]), 'the webhook stays CREATE-only; the policy has UPDATE')
})

/**
 * The API server type-checks every expression at policy creation against the declared types
 * (object/oldObject: the Pod's OpenAPI schema; request: AdmissionRequest; namespaceObject:
 * Namespace; variables: each its expression's type, in order). Here cel-js's checker does it
 * with the Pod and Namespace schemas built from @kubernetes/client-node's model type maps
 * (generated from the same OpenAPI). What it cannot do is the cost estimate (no cel-js API),
 * README "Security model".
 */
// The webhook's dependency (the deploy tree has no package.json of its own).
const k8s = createRequire(new URL('../../webhook/package.json', import.meta.url))('@kubernetes/client-node') as Record<string, any>

function celTypes(env: InstanceType<typeof Environment>, roots: string[]): void {
  const done = new Set<string>()
  const typeOf = (ts: string, format: string): string => {
    const list = /^Array<(.+)>$/.exec(ts)
    if (list) return `list<${typeOf(list[1]!, '')}>`
    const map = /^\{ \[key: string\]: (.+); \}$/.exec(ts)
    if (map) return `map<string, ${typeOf(map[1]!, '')}>`
    if (ts === 'string') return 'string'
    if (ts === 'boolean') return 'bool'
    if (ts === 'number') return format === 'double' ? 'double' : 'int'
    // The API server types date-time fields as timestamp; cel-js 8.0.0 cannot declare a
    // timestamp field in a registered type (registry.js:1039-1042 dereferences an undefined
    // message declaration). No shipped expression reads one: dyn.
    if (ts === 'Date') return 'dyn'
    const model = k8s[ts]
    if (typeof model?.getAttributeTypeMap !== 'function') return 'dyn' // IntOrString, any, object
    register(ts)
    return ts
  }
  const register = (name: string) => {
    if (done.has(name)) return
    done.add(name)
    const attrs = k8s[name].getAttributeTypeMap() as Array<{ baseName: string; type: string; format: string }>
    const fields: Record<string, string> = {}
    for (const a of attrs) fields[a.baseName] = typeOf(a.type, a.format)
    env.registerType(name, { fields })
  }
  for (const r of roots) register(r)
}

t.test('every shipped expression type-checks against the declared variable types', async (t) => {
  const base = new Environment({ unlistedVariablesAreDyn: false })
  celTypes(base, ['V1Pod', 'V1Namespace'])
  const [pod, ns] = ['V1Pod', 'V1Namespace']
  const request = { operation: 'string', subResource: 'string', namespace: 'string', name: 'string', dryRun: 'bool', kind: { group: 'string', version: 'string', kind: 'string' }, resource: { group: 'string', version: 'string', resource: 'string' }, userInfo: { username: 'string', uid: 'string', groups: 'list<string>' } }
  base.registerVariable('object', pod).registerVariable('oldObject', pod).registerVariable('namespaceObject', ns).registerVariable({ name: 'request', schema: request })
  // variables.<name>: the type its expression checks to, declared before the next one uses it.
  const variableTypes: Record<string, string> = {}
  for (const v of policy.spec.variables as Array<{ name: string; expression: string }>) {
    const env = base.clone().registerVariable({ name: 'variables', schema: { ...variableTypes } })
    const r = env.check(v.expression)
    t.ok(r.valid, `variables.${v.name}: ${r.valid ? r.type : r.error?.message}`)
    variableTypes[v.name] = r.valid ? String(r.type) : 'dyn'
  }
  const env = base.clone().registerVariable({ name: 'variables', schema: variableTypes })
  for (const [i, val] of (policy.spec.validations as Array<{ expression: string; messageExpression: string }>).entries()) {
    const r = env.check(val.expression)
    t.ok(r.valid && r.type === 'bool', `validation ${i}: ${r.valid ? r.type : r.error?.message}`)
    const m = env.check(val.messageExpression)
    t.ok(m.valid && m.type === 'string', `validation ${i} messageExpression: ${m.valid ? m.type : m.error?.message}`)
  }
  // The checker is not a rubber stamp: a field the Pod schema lacks, and a type mismatch.
  t.notOk(env.check('object.spec.containerz.size() > 0').valid, 'an unknown Pod field is refused')
  t.notOk(env.check('object.spec.securityContext.runAsUser == "2171"').valid, 'int compared with string is refused')
  t.notOk(env.check('params.uid == 2171').valid, 'an undeclared variable is refused (the policy has no paramKind)')
})
