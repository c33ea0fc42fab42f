// The controller-identities component, rendered into the production overlay as a user's
// overlay would: the identity controller alone holds the OpenZiti credential, in its own
// namespace under Pod Security "restricted", with exactly the RBAC it needs; the webhook gains
// nothing (no Secret verbs, no pod list, no Lease); both read the same controller section;
// both run on system nodes in production.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { parse as parseYaml, parseAllDocuments } from 'yaml'
import { validateConfig } from '../../webhook/src/config.ts'
import { restrictedViolations } from '../../webhook/test/pss-restricted.ts'

const ROOT = new URL('../', import.meta.url).pathname
type Doc = Record<string, any>
const kubectl = spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).status === 0
const opts = { skip: !kubectl && process.env.CI !== 'true' ? 'needs kubectl (kustomize)' : false } as const
const find = (docs: Doc[], kind: string, name: string, ns?: string) => docs.find((d) => d.kind === kind && d.metadata.name === name && (ns === undefined || d.metadata.namespace === ns))

function render(t: Tap, resources: string, components: string[]): Doc[] {
  const dir = mkdtempSync(`${ROOT}test/.render-`)
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(`${dir}/kustomization.yaml`, `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [${resources}]\ncomponents: [${components.map((c) => `../../components/${c}`).join(', ')}]\n`)
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc)
}
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

t.test('controller-identities: the identity controller alone holds the credential, with exactly its RBAC', opts, async (t) => {
  const docs = render(t, '../../overlays/production', ['controller-identities'])
  const ns = find(docs, 'Namespace', 'ziti-cni-identity')!
  t.equal(ns.metadata.labels['pod-security.kubernetes.io/enforce'], 'restricted', 'its own namespace, Pod Security restricted')
  const dep = find(docs, 'Deployment', 'ziti-cni-identity-controller')!
  t.equal(dep.metadata.namespace, 'ziti-cni-identity')
  const pod = dep.spec.template.spec
  t.same(restrictedViolations({ metadata: { name: 'x' }, spec: pod } as never), [], 'its pod passes "restricted"')
  t.equal(pod.serviceAccountName, 'ziti-cni-identity-controller')
  t.ok(find(docs, 'ServiceAccount', 'ziti-cni-identity-controller', 'ziti-cni-identity'))

  // The shared controller section, as both Deployments read it.
  const cms = docs.filter((d) => d.kind === 'ConfigMap' && d.metadata.name === 'ziti-cni-identity')
  t.same(cms.map((c) => c.metadata.namespace).sort(), ['ziti-cni-identity', 'ziti-cni-system'], 'one file, a ConfigMap in each namespace')
  t.equal(cms[0]!.data['identity.yaml'], cms[1]!.data['identity.yaml'], 'identical: one policy for admission and for the controller')
  const section = parseYaml(cms[0]!.data['identity.yaml']) as { controller: Record<string, unknown> }
  const cfg = validateConfig({ controller: { ...section.controller, enrollCa: '-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n' } }, {})
  t.same(cfg.controller.attributePolicy, [], 'shipped deny-all: no pod may request an attribute until the platform says so')
  t.equal(cfg.controller.cluster, '', 'the cluster tag defaults to the kube-system uid, never a shared constant')
  t.equal(cfg.controller.namespace, dep.metadata.namespace, 'the Lease lives in the controller\'s namespace')
  const c = pod.containers[0]
  t.same(c.args, ['--identity-config', '/etc/ziti-cni-identity/identity.yaml'])
  const mountOf = (file: string) => c.volumeMounts.filter((m: Doc) => file.startsWith(`${m.mountPath}/`)).sort((a: Doc, b: Doc) => b.mountPath.length - a.mountPath.length)[0]
  for (const [what, file] of [['credential', cfg.controller.credentialFile], ['enrollment certificate', cfg.controller.enrollCertFile], ['enrollment key', cfg.controller.enrollKeyFile]] as const) {
    const m = mountOf(file)
    const v = pod.volumes.find((x: Doc) => x.name === m?.name)
    t.ok(v?.secret?.items?.some((i: Doc) => `${m.mountPath}/${i.path}` === file), `the ${what} lands at ${file}`)
    t.equal(v?.secret?.defaultMode, 0o440, `${what}: owner and group only`)
  }
  t.equal(pod.securityContext.fsGroup, pod.securityContext.runAsGroup, 'read through the fsGroup')
  t.ok(c.env.some((e: Doc) => e.name === 'POD_NAME' && e.valueFrom?.fieldRef?.fieldPath === 'metadata.name'), 'POD_NAME: each replica\'s Lease identity')
  t.ok(dep.spec.replicas >= 2, 'two replicas, one leader')
  const svc = find(docs, 'Service', 'ziti-cni-identity-controller', 'ziti-cni-identity')!
  t.equal(cfg.controller.enrollUrl, `https://${svc.metadata.name}.${svc.metadata.namespace}.svc:${svc.spec.ports[0].port}`, 'controller.enrollUrl is the Service')
  t.equal(c.ports[0].containerPort, cfg.controller.enrollPort)

  const secretHolders = docs.filter((d) => d.kind === 'Deployment' && JSON.stringify(d).includes('ziti-cni-controller-credential')).map((d) => d.metadata.name)
  t.same(secretHolders, ['ziti-cni-identity-controller'], 'only the identity controller mounts the OpenZiti credential')

  const rules = (kind: string, name: string) => find(docs, kind, name)?.rules
  t.same(rules('ClusterRole', 'ziti-cni-identity-controller'), [
    { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] },
    { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
    { apiGroups: [''], resources: ['namespaces'], resourceNames: ['kube-system'], verbs: ['get'] },
  ], 'pods read, TokenReview, the kube-system namespace: nothing else, no Secret verbs')
  t.same(rules('Role', 'ziti-cni-identity-controller-leader'), [
    { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
    { apiGroups: ['coordination.k8s.io'], resources: ['leases'], resourceNames: [cfg.controller.leaseName], verbs: ['get', 'update'] },
  ])
  t.equal(find(docs, 'Role', 'ziti-cni-identity-controller-leader')!.metadata.namespace, 'ziti-cni-identity')

  // The webhook: the same rights as without the component (no Secret verbs for identities, no
  // pod list, no Lease), and the shared controller section.
  const roles = docs.filter((d) => (d.kind === 'Role' || d.kind === 'ClusterRole') && JSON.stringify(docs.filter((b) => b.kind.endsWith('RoleBinding') && b.roleRef.name === d.metadata.name)).includes('"ziti-cni-webhook"')).map((d) => `${d.kind}/${d.metadata.name}`).sort()
  t.same(roles, ['ClusterRole/ziti-cni-webhook', 'Role/ziti-cni-webhook'], 'the webhook gains no role')
  const webhookRules = roles.flatMap((r) => find(docs, r.split('/')[0]!, r.split('/')[1]!)!.rules as Doc[])
  t.same(webhookRules.filter((r) => r.resources.includes('secrets')), [], 'no Secret verbs at all: neither a pod\'s nor a TLS Secret (production: tls.mode files)')
  t.same(webhookRules.filter((r) => r.resources.includes('mutatingwebhookconfigurations')), [], 'and no right on its webhook configuration (cainjector sets caBundle)')
  const wh = find(docs, 'Deployment', 'ziti-cni-webhook')!.spec.template.spec
  t.same(wh.containers[0].args, ['--config', '/etc/ziti-cni/config.yaml', '--identity-config', '/etc/ziti-cni-identity/identity.yaml'])
  t.ok(wh.volumes.some((v: Doc) => v.configMap?.name === 'ziti-cni-identity'), 'the webhook mounts the shared section')
  for (const w of find(docs, 'MutatingWebhookConfiguration', 'ziti-cni-webhook')!.webhooks) t.equal(w.sideEffects, 'None', `${w.name}: admission has no side effects, dry run or not`)

  // Production: both on system nodes (the webhook by the overlay, the controller by the component).
  for (const d of [dep, find(docs, 'Deployment', 'ziti-cni-webhook')!]) {
    const spec = d.spec.template.spec
    t.equal(spec.nodeSelector['ziti-cni.openziti.io/system'], 'true', `${d.metadata.name}: system nodes only`)
    t.ok(spec.tolerations.some((x: Doc) => x.key === 'CriticalAddonsOnly'), `${d.metadata.name}: tolerates the system-pool taint`)
  }
})

t.test('outside production the webhook may run anywhere; the identity controller stays on system nodes', opts, async (t) => {
  const docs = render(t, '../../overlays/kind', ['controller-identities'])
  t.equal(find(docs, 'Deployment', 'ziti-cni-webhook')!.spec.template.spec.nodeSelector['ziti-cni.openziti.io/system'], undefined)
  t.equal(find(docs, 'Deployment', 'ziti-cni-identity-controller')!.spec.template.spec.nodeSelector['ziti-cni.openziti.io/system'], 'true')
})
