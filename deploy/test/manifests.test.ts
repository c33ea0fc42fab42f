// Renders every overlay with `kubectl kustomize` and holds the YAML to its invariants:
// least-privilege RBAC and nothing more, pinned images, probes, consistent selectors,
// Pod Security labels, and the webhook configuration's safety settings.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { parse as parseYaml, parseAllDocuments } from 'yaml'
import { validateConfig } from '../../webhook/src/config.ts'
import { MUTATE_PATH } from '../../webhook/src/http/mutate.ts'
import { parseFlags } from '../../cni-plugin/src/agent/flags.ts'
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const ROOT = new URL('../', import.meta.url).pathname
type Doc = Record<string, any>
const kubectl = spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).status === 0
const opts = { skip: !kubectl && process.env.CI !== 'true' ? 'needs kubectl (kustomize)' : false } as const

function render(overlay: string): Doc[] {
  const r = spawnSync('kubectl', ['kustomize', `${ROOT}overlays/${overlay}`], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`kubectl kustomize ${overlay} failed: ${r.stderr || r.error}`)
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc)
}
/** The production overlay with one component, rendered as a user's overlay would. */
function renderWithComponent(t: Tap, component: string): Doc[] {
  const dir = mkdtempSync(`${ROOT}test/.render-`)
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(`${dir}/kustomization.yaml`, `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../overlays/production]\ncomponents: [../../components/${component}]\n`)
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc)
}
const find = (docs: Doc[], kind: string, name: string) => docs.find((d) => d.kind === kind && d.metadata.name === name)
const matches = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels?.[k] === v)
/** Every rule any (Cluster)RoleBinding grants the ServiceAccount `sa` of ziti-cni-system. */
const rulesOf = (docs: Doc[], sa: string): Doc[] => docs.filter((b) => b.kind.endsWith('RoleBinding') && b.subjects.some((s: Doc) => s.kind === 'ServiceAccount' && s.name === sa && s.namespace === 'ziti-cni-system'))
  .flatMap((b) => find(docs, b.roleRef.kind, b.roleRef.name)?.rules ?? [])

for (const overlay of ['kind', 'production']) {
  t.test(`overlay ${overlay}`, opts, async (t) => {
    const docs = render(overlay)
    const ns = find(docs, 'Namespace', 'ziti-cni-system')!
    t.equal(ns.metadata.labels['pod-security.kubernetes.io/enforce'], 'privileged', 'agent namespace is privileged (documented why)')

    await t.test('RBAC is exactly what the components need', async (t) => {
      const rules = (kind: string, name: string) => find(docs, kind, name)?.rules
      // The base (tls.mode files): the webhook reads the agent DaemonSet and the DNS Service.
      t.same(rules('ClusterRole', 'ziti-cni-webhook'), [{ apiGroups: [''], resources: ['services'], resourceNames: ['kube-dns'], verbs: ['get', 'list', 'watch'] }])
      t.same(rules('Role', 'ziti-cni-webhook'), [{ apiGroups: ['apps'], resources: ['daemonsets'], resourceNames: ['ziti-cni-agent'], verbs: ['get'] }])
      // Self-managed TLS (kind): its own Secret and its own webhook configuration, and only there.
      const selfManaged = overlay === 'kind'
      t.same(rules('Role', 'ziti-cni-webhook-tls'), selfManaged ? [{ apiGroups: [''], resources: ['secrets'], resourceNames: ['ziti-cni-webhook-tls'], verbs: ['get', 'update'] }] : undefined)
      t.same(rules('ClusterRole', 'ziti-cni-webhook-tls'), selfManaged ? [{ apiGroups: ['admissionregistration.k8s.io'], resources: ['mutatingwebhookconfigurations'], resourceNames: ['ziti-cni-webhook'], verbs: ['get', 'patch'] }] : undefined)
      const webhookRules = rulesOf(docs, 'ziti-cni-webhook')
      if (!selfManaged) {
        t.same(webhookRules.filter((r) => r.resources.includes('secrets')), [], 'production: the webhook has no Secret verb at all')
        t.same(webhookRules.filter((r) => r.apiGroups.includes('admissionregistration.k8s.io') && r.verbs.some((v: string) => !['get', 'list', 'watch'].includes(v))), [], 'production: no write on any webhook configuration')
      }
      const repairByDeletion = find(docs, 'DaemonSet', 'ziti-cni-agent')!.spec.template.spec.containers[0].args.includes('--repair=delete')
      t.same(rules('ClusterRole', 'ziti-cni-agent'), [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch', ...(repairByDeletion ? ['delete'] : [])] }, { apiGroups: [''], resources: ['events'], verbs: ['create'] }], 'pods: read, and delete only with repair-by-deletion; events: create only')
      t.same(rules('Role', 'ziti-cni-agent-lifecycle'), [{ apiGroups: ['apps'], resources: ['daemonsets'], resourceNames: ['ziti-cni-agent'], verbs: ['get'] }])
      const roles = docs.filter((d) => d.kind === 'Role' || d.kind === 'ClusterRole').map((d) => `${d.kind}/${d.metadata.name}`).sort()
      t.same(roles, ['ClusterRole/ziti-cni-agent', 'ClusterRole/ziti-cni-webhook', ...(selfManaged ? ['ClusterRole/ziti-cni-webhook-tls'] : []), 'Role/ziti-cni-agent-lifecycle', 'Role/ziti-cni-webhook', ...(selfManaged ? ['Role/ziti-cni-webhook-tls'] : [])], 'no other roles')
      for (const b of docs.filter((d) => d.kind.endsWith('RoleBinding'))) {
        t.ok(find(docs, b.roleRef.kind, b.roleRef.name), `${b.metadata.name} binds an existing role`)
        for (const s of b.subjects) t.ok(find(docs, 'ServiceAccount', s.name), `${b.metadata.name}: subject ${s.name} exists`)
      }
      t.notMatch(JSON.stringify(docs.filter((d) => /Role$/.test(d.kind))), /"\*"/, 'no wildcards')
    })

    await t.test('the agent lands on Linux nodes that are not Fargate, and only there', async (t) => {
      const spec = find(docs, 'DaemonSet', 'ziti-cni-agent')!.spec.template.spec
      // The scheduler's nodeSelector + required node affinity (terms ORed, expressions ANDed;
      // NotIn matches a node without the label), as k8s.io/component-helpers nodeaffinity.
      const schedulable = (labels: Record<string, string>) => Object.entries(spec.nodeSelector ?? {}).every(([k, v]) => labels[k] === v) &&
        (spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms ?? [{}]).some((term: Doc) => (term.matchExpressions ?? []).every((e: Doc) =>
          e.operator === 'NotIn' ? !e.values.includes(labels[e.key]) : e.operator === 'In' ? e.values.includes(labels[e.key]) : e.operator === 'Exists' ? e.key in labels : !(e.key in labels)))
      t.ok(schedulable({ 'kubernetes.io/os': 'linux' }), 'a Linux node (kind, kubeadm)')
      t.ok(schedulable({ 'kubernetes.io/os': 'linux', 'eks.amazonaws.com/compute-type': 'ec2' }), 'an EKS EC2 node')
      t.notOk(schedulable({ 'kubernetes.io/os': 'linux', 'eks.amazonaws.com/compute-type': 'fargate' }), 'not a Fargate node, though the agent tolerates every taint')
      t.notOk(schedulable({ 'kubernetes.io/os': 'windows' }), 'not a Windows node')
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
      t.same(pod.nodeSelector, { 'kubernetes.io/os': 'linux' })
      t.ok(c.args.includes('--repair=off'), 'repair by deletion is off by default (as istio\'s deletePods)')
    })

    await t.test('objects agree with each other', async (t) => agreement(t, docs))
  })
}

/**
 * Everything one object names in another must exist and match: each of these was a silent
 * mismatch once (the manifests rendered and validated, and the install broke).
 */
function agreement(t: Tap, docs: Doc[]): void {
  const dep = find(docs, 'Deployment', 'ziti-cni-webhook')!
  const ds = find(docs, 'DaemonSet', 'ziti-cni-agent')!
  const svc = find(docs, 'Service', 'ziti-cni-webhook')!
  const mwc = find(docs, 'MutatingWebhookConfiguration', 'ziti-cni-webhook')!
  const cm = docs.find((d) => d.kind === 'ConfigMap' && d.data?.['config.yaml'])!
  const wc = dep.spec.template.spec.containers[0]
  // Env (values, and ConfigMaps) resolved as the kubelet would.
  const env: Record<string, string> = { POD_NAMESPACE: dep.metadata.namespace }
  for (const e of wc.env ?? []) {
    if (typeof e.value === 'string') env[e.name] = e.value
    const ref = e.valueFrom?.configMapKeyRef
    if (ref) {
      const source = find(docs, 'ConfigMap', ref.name)
      t.ok(source?.data?.[ref.key], `env ${e.name}: ConfigMap ${ref.name} has key ${ref.key}`)
      env[e.name] = source?.data?.[ref.key]
    }
  }
  const cfg = validateConfig(parseYaml(cm.data['config.yaml']), env)
  const agent = ds.spec.template.spec.containers[0]
  const httpsPort = wc.ports.find((p: Doc) => p.name === svc.spec.ports[0].targetPort)
  t.ok(httpsPort, 'the Service targets a named port of the webhook container')
  t.equal(httpsPort?.containerPort, cfg.listen.port, 'that port is the one the webhook listens on (config listen.port)')
  for (const w of mwc.webhooks) t.equal(w.clientConfig.service.path, MUTATE_PATH, `${w.name}: path is the server's route`)
  t.equal(mwc.metadata.name, cfg.tls.webhookConfigName, 'config tls.webhookConfigName names this MutatingWebhookConfiguration')
  t.equal(svc.metadata.name, cfg.tls.serviceName, 'config tls.serviceName names the Service (certificate SANs)')
  webhookTls(t, docs, cfg)
  t.same(find(docs, 'Role', 'ziti-cni-webhook')!.rules[0].resourceNames, [ds.metadata.name], 'the Role grants reading exactly the agent DaemonSet')
  t.same(find(docs, 'ClusterRole', 'ziti-cni-webhook')!.rules[0].resourceNames, [cfg.tproxy.clusterDnsService.split('/')[1]], 'and watching exactly the cluster DNS Service')
  const np = find(docs, 'NetworkPolicy', 'ziti-cni-webhook')
  if (np) {
    t.same(np.spec.ingress.flatMap((i: Doc) => i.ports.map((p: Doc) => p.port)), [httpsPort?.containerPort], 'the NetworkPolicy admits the webhook\'s port')
    t.ok(matches(np.spec.podSelector.matchLabels, dep.spec.template.metadata.labels), 'the NetworkPolicy selects the webhook pods')
  }
  // The agent: its identity, its dirs, its metrics.
  const envOf = (c: Doc, n: string) => c.env.find((e: Doc) => e.name === n)?.value
  t.equal(envOf(agent, 'DAEMONSET_NAME'), ds.metadata.name, 'DAEMONSET_NAME is the DaemonSet (uninstall vs upgrade)')
  t.same(find(docs, 'Role', 'ziti-cni-agent-lifecycle')!.rules[0].resourceNames, [ds.metadata.name], 'the lifecycle Role grants exactly that DaemonSet')
  t.equal(ds.spec.template.spec.serviceAccountName, find(docs, 'ClusterRoleBinding', 'ziti-cni-agent')!.subjects[0].name, 'the agent runs as the bound ServiceAccount')
  const flag = (name: string) => agent.args.find((a: string) => a.startsWith(`--${name}=`))?.split('=')[1]
  for (const [volume, name] of [['cni-bin', 'cni-bin-dir'], ['cni-conf', 'cni-conf-dir']] as const) {
    const mount = agent.volumeMounts.find((m: Doc) => m.name === volume).mountPath
    const host = ds.spec.template.spec.volumes.find((v: Doc) => v.name === volume).hostPath.path
    t.equal(flag(name), mount, `--${name} is where ${volume} is mounted`)
    t.equal(mount, host, `${volume} is mounted at its host path (paths written into the CNI config are host paths)`)
  }
  const metricsPort = agent.ports.find((p: Doc) => p.name === 'metrics')
  t.equal(String(metricsPort?.containerPort), flag('health-addr')?.split(':').at(-1), 'the metrics port is the one --health-addr binds')
  t.equal(ds.spec.template.metadata.annotations['prometheus.io/port'], String(metricsPort?.containerPort), 'scrape annotation names it')
  const msvc = find(docs, 'Service', 'ziti-cni-agent-metrics')!
  t.ok(matches(msvc.spec.selector, ds.spec.template.metadata.labels), 'the metrics Service selects the agents')
  t.equal(msvc.spec.ports[0].targetPort, 'metrics', 'and targets the metrics port')
  // The validator init container runs the agent image, read from this DaemonSet at run time:
  // one image tag moves both, and no ConfigMap string can drift from it.
  t.equal(cfg.validator.image, '', 'validator.image is not pinned separately')
  t.equal(cfg.validator.daemonSet, ds.metadata.name, 'validator.daemonSet names the agent DaemonSet')
  t.equal(ds.metadata.namespace, dep.metadata.namespace, 'in the webhook\'s namespace')
}

/**
 * The webhook's TLS as configured is the TLS deployed. files: the configured files are the items
 * of a whole (not subPath) Secret volume, that Secret is a cert-manager Certificate's for the
 * Service's name, and caBundle is injected from that Certificate. self-managed: the Secret it
 * writes exists and the rights it needs name exactly that Secret and that configuration.
 */
function webhookTls(t: Tap, docs: Doc[], cfg: ReturnType<typeof validateConfig>): void {
  const dep = find(docs, 'Deployment', 'ziti-cni-webhook')!
  const pod = dep.spec.template.spec
  const c = pod.containers[0]
  const mwc = find(docs, 'MutatingWebhookConfiguration', 'ziti-cni-webhook')!
  const svc = find(docs, 'Service', cfg.tls.serviceName)!
  const secretVolumes = pod.volumes.filter((v: Doc) => v.secret)
  if (cfg.tls.mode === 'self-managed') {
    t.ok(find(docs, 'Secret', cfg.tls.secretName), `self-managed: the TLS Secret ${cfg.tls.secretName} ships (empty: no create needed)`)
    t.same(find(docs, 'Role', 'ziti-cni-webhook-tls')!.rules[0].resourceNames, [cfg.tls.secretName], 'self-managed: the Role grants exactly that Secret')
    t.same(find(docs, 'ClusterRole', 'ziti-cni-webhook-tls')!.rules[0].resourceNames, [mwc.metadata.name], 'self-managed: and exactly this webhook configuration')
    t.same(secretVolumes, [], 'self-managed: no Secret is mounted')
    t.notOk(mwc.metadata.annotations?.['cert-manager.io/inject-ca-from'], 'self-managed: caBundle is the webhook\'s, not cainjector\'s')
    return
  }
  const mountOf = (file: string) => c.volumeMounts.filter((m: Doc) => file.startsWith(`${m.mountPath}/`)).sort((a: Doc, b: Doc) => b.mountPath.length - a.mountPath.length)[0]
  const names = new Set<string>()
  for (const file of [cfg.tls.certFile, cfg.tls.keyFile]) {
    const m = mountOf(file)
    const v = pod.volumes.find((x: Doc) => x.name === m?.name)
    t.ok(v?.secret?.items?.some((i: Doc) => `${m.mountPath}/${i.path}` === file), `files: ${file} is an item of a Secret volume`)
    t.notOk(m?.subPath, 'files: the whole volume is mounted (a subPath is never updated on rotation)')
    t.equal(v?.secret?.defaultMode, 0o440, 'files: owner and group only')
    names.add(v?.secret?.secretName)
  }
  t.equal(pod.securityContext.fsGroup, pod.securityContext.runAsGroup, 'files: read through the fsGroup')
  t.equal(names.size, 1, 'files: certificate and key come from one Secret')
  const [secretName] = [...names]
  const cert = docs.find((d) => d.kind === 'Certificate' && d.spec.secretName === secretName && d.metadata.namespace === dep.metadata.namespace)
  t.ok(cert, `files: a cert-manager Certificate writes ${secretName}`)
  t.ok(cert?.spec.dnsNames.includes(`${svc.metadata.name}.${svc.metadata.namespace}.svc`), 'files: for the name the API server calls (<service>.<namespace>.svc)')
  t.equal(mwc.metadata.annotations?.['cert-manager.io/inject-ca-from'], `${cert?.metadata.namespace}/${cert?.metadata.name}`, 'files: cainjector fills caBundle from that Certificate')
  const issuer = find(docs, cert?.spec.issuerRef.kind, cert?.spec.issuerRef.name)
  t.ok(issuer?.spec.ca, 'files: signed by a CA issuer (renewals keep caBundle)')
  const caCert = docs.find((d) => d.kind === 'Certificate' && d.spec.secretName === issuer?.spec.ca?.secretName)
  t.equal(caCert?.spec.isCA, true, 'files: that issuer\'s CA is a Certificate of its own')
  t.equal(issuer?.kind, 'Issuer', 'files: a namespaced Issuer, not a ClusterIssuer others could use')
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

t.test('tun-mode component: the device plugin\'s flags, mounts and capabilities agree', opts, async (t) => {
  const docs = renderWithComponent(t, 'tun-mode')
  const pod = find(docs, 'DaemonSet', 'ziti-cni-agent')!.spec.template.spec
  const c = pod.containers[0]
  const flags = parseFlags(c.args, { NODE_NAME: 'n' })
  t.ok(flags.tunDevicePlugin, 'the device plugin is on')
  const tun = flags.tunDevicePlugin!
  const mountOf = (p: string) => c.volumeMounts.filter((m: Doc) => p === m.mountPath || p.startsWith(`${m.mountPath}/`)).sort((a: Doc, b: Doc) => b.mountPath.length - a.mountPath.length)[0]
  const hostOf = (m: Doc) => pod.volumes.find((v: Doc) => v.name === m.name)?.hostPath?.path
  t.equal(hostOf(mountOf(tun.dir)), tun.dir, '--device-plugin-dir is the kubelet\'s dir, mounted at its host path')
  t.equal(tun.dir, '/var/lib/kubelet/device-plugins', 'the kubelet\'s DevicePluginPath')
  const nodeMount = mountOf(tun.node)
  t.equal(hostOf(nodeMount), nodeMount.mountPath, 'the device node lives on a hostPath mounted at its host path (containerd opens the host path)')
  t.same(c.securityContext.capabilities.add, ['NET_ADMIN', 'SYS_ADMIN', 'MKNOD', 'CHOWN'], 'MKNOD and CHOWN for the node, nothing else')
  const cm = docs.find((d) => d.kind === 'ConfigMap' && d.data?.['config.yaml'])!
  const cfg = validateConfig(parseYaml(cm.data['config.yaml']), { POD_NAMESPACE: 'ziti-cni-system' })
  t.same([tun.uid, tun.gid], [cfg.sidecarUid, cfg.sidecarGid], '--tun-owner is the webhook\'s sidecar uid/gid (the device\'s owner)')
  t.equal(tun.resource, cfg.tun.resource, 'the resource the plugin registers is the one the webhook requests')
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

// Where each platform keeps its CNI dirs (sources in each component's comment).
const PLATFORMS: Record<string, [bin: string, conf: string]> = {
  eks: ['/opt/cni/bin', '/etc/cni/net.d'],
  gke: ['/home/kubernetes/bin', '/etc/cni/net.d'],
  k3s: ['/var/lib/rancher/k3s/data/cni', '/var/lib/rancher/k3s/agent/etc/cni/net.d'],
  rke2: ['/opt/cni/bin', '/etc/cni/net.d'],
  k3d: ['/var/lib/rancher/k3s/data/cni', '/var/lib/rancher/k3s/agent/etc/cni/net.d'],
  microk8s: ['/var/snap/microk8s/current/opt/cni/bin', '/var/snap/microk8s/current/args/cni-network'],
  openshift: ['/var/lib/cni/bin', '/etc/cni/multus/net.d'],
}

t.test('platform components: the right dirs, mounted where the flags say, and GKE\'s quota', opts, async (t) => {
  t.same(readdirSync(`${ROOT}components`).filter((d) => d.startsWith('platform-')).map((d) => d.slice(9)).sort(), Object.keys(PLATFORMS).sort(), 'a component per platform')
  for (const [name, [bin, conf]] of Object.entries(PLATFORMS)) {
    await t.test(name, async (t) => {
      const docs = renderWithComponent(t, `platform-${name}`)
      const pod = find(docs, 'DaemonSet', 'ziti-cni-agent')!.spec.template.spec
      const host = (v: string) => pod.volumes.find((x: Doc) => x.name === v).hostPath.path
      t.same([host('cni-bin'), host('cni-conf')], [bin, conf])
      agreement(t, docs)
      const quota = docs.find((d) => d.kind === 'ResourceQuota')
      if (name === 'gke') t.match(quota?.spec.scopeSelector.matchExpressions[0].values, ['system-node-critical'], 'GKE: a quota admitting system-node-critical in our namespace')
      else t.notOk(quota)
    })
  }
})

t.test('skaffold builds every image the manifests deploy, without hooks, and a multi-arch release', async (t) => {
  const sk = parseYaml(readFileSync(`${ROOT}../skaffold.yaml`, 'utf8')) as Doc
  const base = parseYaml(readFileSync(`${ROOT}base/kustomization.yaml`, 'utf8')) as Doc
  const artifacts = sk.build.artifacts.map((a: Doc) => a.image).sort()
  t.same(artifacts, base.images.map((i: Doc) => i.name).sort(), 'one artifact per image kustomize deploys')
  t.notOk(sk.build.artifacts.some((a: Doc) => a.hooks), 'no build hooks (a cache hit skips them)')
  for (const a of sk.build.artifacts) t.ok(existsSync(`${ROOT}../${a.docker.dockerfile}`), `${a.image}: its Dockerfile exists`)
  t.same(sk.profiles.find((p: Doc) => p.name === 'release').build.platforms, ['linux/amd64', 'linux/arm64'])
  t.match(readFileSync(`${ROOT}../.dockerignore`, 'utf8'), /\*\*\/node_modules[\s\S]*\*\*\/dist/, 'host node_modules and dist stay out of build contexts')
})
