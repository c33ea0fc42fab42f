// Renders every overlay with `kubectl kustomize` and holds the YAML to its invariants:
// least-privilege RBAC and nothing more, pinned images, probes, consistent selectors,
// Pod Security labels, and the webhook configuration's safety settings.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { parse as parseYaml, parseAllDocuments } from 'yaml'
import { validateConfig } from '../../webhook/src/config.ts'

const ROOT = new URL('../', import.meta.url).pathname
type Doc = Record<string, any>
const kubectl = spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).status === 0
const opts = { skip: !kubectl && process.env.CI !== 'true' ? 'needs kubectl (kustomize)' : false } as const

function render(overlay: string): Doc[] {
  const r = spawnSync('kubectl', ['kustomize', `${ROOT}overlays/${overlay}`], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`kubectl kustomize ${overlay} failed: ${r.stderr || r.error}`)
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc)
}
const find = (docs: Doc[], kind: string, name: string) => docs.find((d) => d.kind === kind && d.metadata.name === name)
const matches = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels?.[k] === v)

for (const overlay of ['kind', 'production']) {
  t.test(`overlay ${overlay}`, opts, async (t) => {
    const docs = render(overlay)
    const ns = find(docs, 'Namespace', 'ziti-cni-system')!
    t.equal(ns.metadata.labels['pod-security.kubernetes.io/enforce'], 'privileged', 'agent namespace is privileged (documented why)')

    await t.test('RBAC is exactly what the components need', async (t) => {
      const rules = (kind: string, name: string) => find(docs, kind, name)?.rules
      t.same(rules('ClusterRole', 'ziti-cni-webhook'), [{ apiGroups: ['admissionregistration.k8s.io'], resources: ['mutatingwebhookconfigurations'], resourceNames: ['ziti-cni-webhook'], verbs: ['get', 'patch'] }])
      t.same(rules('Role', 'ziti-cni-webhook-tls'), [{ apiGroups: [''], resources: ['secrets'], resourceNames: ['ziti-cni-webhook-tls'], verbs: ['get', 'update'] }])
      const repairByDeletion = find(docs, 'DaemonSet', 'ziti-cni-agent')!.spec.template.spec.containers[0].args.includes('--repair=delete')
      t.same(rules('ClusterRole', 'ziti-cni-agent'), [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch', ...(repairByDeletion ? ['delete'] : [])] }], 'pods: read, and delete only with repair-by-deletion')
      t.same(rules('Role', 'ziti-cni-agent-lifecycle'), [{ apiGroups: ['apps'], resources: ['daemonsets'], resourceNames: ['ziti-cni-agent'], verbs: ['get'] }])
      const roles = docs.filter((d) => d.kind === 'Role' || d.kind === 'ClusterRole').map((d) => `${d.kind}/${d.metadata.name}`).sort()
      t.same(roles, ['ClusterRole/ziti-cni-agent', 'ClusterRole/ziti-cni-webhook', 'Role/ziti-cni-agent-lifecycle', 'Role/ziti-cni-webhook-tls'], 'no other roles')
      for (const b of docs.filter((d) => d.kind.endsWith('RoleBinding'))) {
        t.ok(find(docs, b.roleRef.kind, b.roleRef.name), `${b.metadata.name} binds an existing role`)
        for (const s of b.subjects) t.ok(find(docs, 'ServiceAccount', s.name), `${b.metadata.name}: subject ${s.name} exists`)
      }
      t.notMatch(JSON.stringify(docs.filter((d) => /Role$/.test(d.kind))), /"\*"/, 'no wildcards')
    })

    await t.test('images are pinned, probes present', async (t) => {
      const workloads = docs.filter((d) => d.kind === 'Deployment' || d.kind === 'DaemonSet')
      t.equal(workloads.length, 2)
      for (const w of workloads) {
        for (const c of w.spec.template.spec.containers) {
          t.match(c.image, /^[^:@]+(:[A-Za-z0-9._-]+|@sha256:[a-f0-9]{64})$/, `${c.name}: image has a tag or digest`)
          t.notMatch(c.image, /:latest$/, `${c.name}: not latest`)
          t.ok(c.readinessProbe && c.livenessProbe, `${c.name}: readiness and liveness probes`)
          t.ok(c.resources?.requests && c.resources?.limits?.memory, `${c.name}: requests and a memory limit`)
        }
      }
      t.notMatch(JSON.stringify(find(docs, 'ConfigMap', docs.find((d) => d.kind === 'ConfigMap')!.metadata.name)), /:latest/, 'sidecar images pinned too')
    })

    await t.test('selectors agree', async (t) => {
      const dep = find(docs, 'Deployment', 'ziti-cni-webhook')!
      const ds = find(docs, 'DaemonSet', 'ziti-cni-agent')!
      const svc = find(docs, 'Service', 'ziti-cni-webhook')!
      const pdb = find(docs, 'PodDisruptionBudget', 'ziti-cni-webhook')!
      t.ok(matches(dep.spec.selector.matchLabels, dep.spec.template.metadata.labels), 'Deployment selects its pods')
      t.ok(matches(ds.spec.selector.matchLabels, ds.spec.template.metadata.labels), 'DaemonSet selects its pods')
      t.ok(matches(svc.spec.selector, dep.spec.template.metadata.labels), 'Service selects the webhook pods')
      t.notOk(matches(svc.spec.selector, ds.spec.template.metadata.labels), 'Service does not select the agent')
      t.ok(matches(pdb.spec.selector.matchLabels, dep.spec.template.metadata.labels), 'PDB covers the webhook pods')
      t.equal(svc.spec.ports[0].targetPort, dep.spec.template.spec.containers[0].ports[0].name, 'Service targets the container port')
      const cm = dep.spec.template.spec.volumes.find((v: Doc) => v.configMap).configMap.name
      t.ok(find(docs, 'ConfigMap', cm), `the Deployment mounts the generated ConfigMap ${cm}`)
    })

    await t.test('webhook: available, unprivileged', async (t) => {
      const dep = find(docs, 'Deployment', 'ziti-cni-webhook')!
      const pod = dep.spec.template.spec
      const c = pod.containers[0]
      t.ok(dep.spec.replicas >= 2, 'at least 2 replicas')
      t.ok(pod.affinity.podAntiAffinity, 'anti-affinity')
      t.equal(pod.securityContext.runAsNonRoot, true)
      t.equal(c.securityContext.readOnlyRootFilesystem, true)
      t.equal(c.securityContext.allowPrivilegeEscalation, false)
      t.same(c.securityContext.capabilities.drop, ['ALL'])
    })

    await t.test('MutatingWebhookConfiguration', async (t) => {
      const mwc = find(docs, 'MutatingWebhookConfiguration', 'ziti-cni-webhook')!
      const svc = find(docs, 'Service', 'ziti-cni-webhook')!
      t.equal(mwc.webhooks.length, 2)
      for (const w of mwc.webhooks) {
        t.equal(w.sideEffects, 'None')
        t.ok(w.timeoutSeconds <= 5, 'timeoutSeconds <= 5')
        t.equal(w.reinvocationPolicy, 'IfNeeded')
        t.equal(w.failurePolicy, 'Fail', 'deliberate failurePolicy (documented in the manifest)')
        t.same(w.admissionReviewVersions, ['v1'])
        t.same(w.rules, [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'], scope: 'Namespaced' }])
        t.equal(w.clientConfig.service.name, svc.metadata.name)
        t.equal(w.clientConfig.service.namespace, svc.metadata.namespace)
        t.equal(w.clientConfig.service.port, svc.spec.ports[0].port)
        const names = w.namespaceSelector.matchExpressions.find((e: Doc) => e.key === 'kubernetes.io/metadata.name')
        t.same(names, { key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: ['kube-system', 'kube-node-lease', 'ziti-cni-system'] })
        t.match(w.matchConditions[0].expression, /hostNetwork/, 'hostNetwork pods are skipped')
      }
      t.same(mwc.webhooks[0].objectSelector.matchExpressions, [{ key: 'cni.openziti.io/inject', operator: 'NotIn', values: ['disabled'] }], 'pods can opt out')
    })

    await t.test('node agent DaemonSet', async (t) => {
      const ds = find(docs, 'DaemonSet', 'ziti-cni-agent')!
      const pod = ds.spec.template.spec
      const c = pod.containers[0]
      t.equal(pod.priorityClassName, 'system-node-critical')
      t.same(pod.tolerations, [{ operator: 'Exists' }], 'tolerates everything')
      t.equal(pod.hostNetwork, true)
      t.ok(pod.terminationGracePeriodSeconds >= 15, 'long enough for in-flight ADDs (the executable waits 10 s at most)')
      t.same(ds.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } })
      const hostPaths = Object.fromEntries(pod.volumes.filter((v: Doc) => v.hostPath).map((v: Doc) => [v.name, v.hostPath.path]))
      t.same(hostPaths, { 'cni-bin': '/opt/cni/bin', 'cni-conf': '/etc/cni/net.d', netns: '/var/run/netns', run: '/var/run/ziti-cni' })
      t.equal(c.volumeMounts.find((m: Doc) => m.name === 'netns').mountPropagation, 'HostToContainer')
      t.notOk(c.securityContext.privileged, 'not privileged')
      t.same(c.securityContext.capabilities, { drop: ['ALL'], add: ['NET_ADMIN', 'SYS_ADMIN'] })
      t.equal(c.readinessProbe.httpGet.host, '127.0.0.1', 'health port stays on the node loopback')
    })
  })
}

t.test('every shipped webhook config passes the webhook\'s own validation', opts, async (t) => {
  for (const dir of ['overlays/kind', 'overlays/production', '../e2e/kind/overlay']) {
    const r = spawnSync('kubectl', ['kustomize', `${ROOT}${dir}`], { encoding: 'utf8' })
    const cm = parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc).find((d) => d.kind === 'ConfigMap')!
    const cfg = validateConfig(parseYaml(cm.data['config.yaml']), { POD_NAMESPACE: 'ziti-cni-system' })
    t.ok(cfg.validator.enabled, `${dir}: valid, validator on`)
    const dep = parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc).find((d) => d.kind === 'Deployment')!
    t.equal(dep.spec.template.spec.volumes.find((v: Doc) => v.configMap).configMap.name, cm.metadata.name, `${dir}: the Deployment mounts this ConfigMap`)
  }
})

t.test('production adds a NetworkPolicy and three replicas', opts, async (t) => {
  const docs = render('production')
  t.ok(find(docs, 'NetworkPolicy', 'ziti-cni-webhook'))
  t.equal(find(docs, 'Deployment', 'ziti-cni-webhook')!.spec.replicas, 3)
  t.equal(find(docs, 'PodDisruptionBudget', 'ziti-cni-webhook')!.spec.minAvailable, 2)
})

t.test('the kind suite and helper scripts pass shellcheck', { skip: spawnSync('sh', ['-c', 'command -v shellcheck']).status !== 0 && process.env.CI !== 'true' ? 'needs shellcheck' : false }, async (t) => {
  const scripts = spawnSync('sh', ['-c', `ls ${ROOT}../e2e/kind/*.sh ${ROOT}../e2e/node/*.sh`], { encoding: 'utf8' }).stdout.trim().split('\n')
  t.ok(scripts.length >= 2)
  const r = spawnSync('shellcheck', ['-x', ...scripts], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stdout + r.stderr)
})
