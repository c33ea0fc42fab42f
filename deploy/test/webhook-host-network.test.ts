// The webhook-host-network component: on the node's network, on one port that the container,
// the config (WEBHOOK_PORT), the Service's named target, the probes and the NetworkPolicy all
// agree on, with the replicas forced onto different nodes.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { parse as parseYaml, parseAllDocuments } from 'yaml'
import { validateConfig } from '../../webhook/src/config.ts'

type Doc = Record<string, any>
const ROOT = new URL('../', import.meta.url).pathname
const kubectl = spawnSync('sh', ['-c', 'command -v kubectl'], { encoding: 'utf8' }).status === 0

t.test('webhook on the host network', { skip: !kubectl && process.env.CI !== 'true' ? 'needs kubectl (kustomize)' : false }, async (t) => {
  const dir = mkdtempSync(`${ROOT}test/.render-`)
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(`${dir}/kustomization.yaml`, 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../overlays/production]\ncomponents: [../../components/webhook-host-network]\n')
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  const docs = parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc)
  const find = (kind: string, name: string) => docs.find((d) => d.kind === kind && d.metadata.name.startsWith(name))!
  const pod = find('Deployment', 'ziti-cni-webhook').spec.template
  const c = pod.spec.containers[0]
  t.equal(pod.spec.hostNetwork, true)
  t.equal(pod.spec.dnsPolicy, 'ClusterFirstWithHostNet', 'still resolves cluster names')
  const env = Object.fromEntries(c.env.filter((e: Doc) => e.value !== undefined).map((e: Doc) => [e.name, e.value]))
  const cfg = validateConfig(parseYaml(find('ConfigMap', 'ziti-cni-webhook-config').data['config.yaml']), env)
  t.equal(cfg.listen.port, 10260, 'the webhook listens on the host port')
  t.equal(c.ports[0].containerPort, cfg.listen.port, 'the container port is that port')
  const svc = find('Service', 'ziti-cni-webhook')
  t.equal(svc.spec.ports[0].targetPort, c.ports[0].name, 'the Service (what the API server dials) targets it by name')
  for (const p of ['readinessProbe', 'livenessProbe', 'startupProbe']) t.equal(c[p].httpGet.port, c.ports[0].name, `${p} by name`)
  t.equal(pod.metadata.annotations['prometheus.io/port'], '10260')
  t.same(find('NetworkPolicy', 'ziti-cni-webhook').spec.ingress[0].ports, [{ port: 10260, protocol: 'TCP' }])
  t.equal(pod.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey, 'kubernetes.io/hostname', 'two replicas never compete for one node\'s port')
  t.notOk(pod.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution)
  t.equal(c.securityContext.capabilities.drop[0], 'ALL', 'still no capability: 10260 is not a privileged port')
})
