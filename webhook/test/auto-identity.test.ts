// `cni.openziti.io/identity: auto` end to end at the control plane: the real webhook (HTTPS),
// the API server stand-in (admission round trips, Secrets, Leases, pod lists) and the fake
// OpenZiti controller. The data plane of the same path runs in e2e/node/scenarios.test.ts.
import t from 'tap'
import { KubeConfig, type V1Pod } from '@kubernetes/client-node'
import type { AddressInfo } from 'node:net'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { parseIntent } from '@ziti-cni/shared'
import { validateConfig } from '../src/config.ts'
import { createWebhookMetrics } from '../src/metrics.ts'
import { buildServer } from '../src/server.ts'
import { startController } from '../src/ziti/setup.ts'
import { FakeZitiController } from '../../e2e/node/standins/ziti-controller.ts'
import { https, startApiStandIn, testCerts, TEST_CONFIG } from './helpers.ts'

const TOKEN = 'webhook-token'

async function world(t: { teardown: (fn: () => unknown) => void }, controller: Record<string, unknown> = {}) {
  const fake = new FakeZitiController()
  await fake.listen()
  t.teardown(() => fake.close())
  const { cert, key } = fake.addCertIdentity('ziti-cni-webhook', ['identity', 'service.read', 'config.read'])
  const { api, url, ca } = await startApiStandIn(t, TOKEN)
  const kc = new KubeConfig()
  kc.loadFromOptions({ clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }], users: [{ name: 'u', token: TOKEN }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
  const config = validateConfig({ ...TEST_CONFIG, controller: { url: fake.url, cluster: 'test', admissionBudgetMs: 3000, graceSeconds: 3, leaseSeconds: 2, ...controller } }, {})
  const metrics = createWebhookMetrics()
  const credential = JSON.stringify({ ztAPI: `${fake.url}/edge/client/v1`, id: { cert, key, ca: fake.ca.certPem } })
  // The test drives the leader and reconciler ticks itself.
  const rt = startController(config.controller, kc, metrics.registry, pino({ level: 'silent' }), { namespace: 'ziti-cni-system', identity: 'webhook-0', credentialText: credential, autoStart: false })
  t.teardown(() => rt.stop())
  const { ca: whCa, serving } = testCerts()
  const app = buildServer({ config, metrics, log: pino({ level: 'silent' }), tls: { cert: serving.certPem, key: serving.keyPem }, ready: () => true, provisioner: rt.provisioner })
  await app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(() => app.close())
  const mutateUrl = `https://127.0.0.1:${(app.server.address() as AddressInfo).port}/mutate`
  api.admission = { url: mutateUrl, ca: whCa.certPem }
  api.put('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'apps', labels: { 'cni.openziti.io/inject': 'enabled' } } })

  // What the operator has in the controller: billing may dial postgres, api, metrics, wild,
  // range; nobody may dial vault.
  const cfg = (name: string, type: 'intercept.v1' | 'proxy.v1', data: Record<string, unknown>) => fake.addConfig(name, type, data)
  fake.addService('postgres', ['db'], [cfg('pg-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] }), cfg('pg-p', 'proxy.v1', { port: 15432, protocols: ['tcp'] })])
  fake.addService('api', ['web'], [cfg('api-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['api.ziti', '100.127.9.9'], portRanges: [{ low: 443, high: 443 }, { low: 8443, high: 8443 }] })])
  fake.addService('metrics', ['web'], [cfg('m-i', 'intercept.v1', { protocols: ['tcp', 'udp'], addresses: ['metrics.ziti'], portRanges: [{ low: 8125, high: 8125 }] })])
  fake.addService('wild', ['web'], [cfg('w-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['*.corp.ziti'], portRanges: [{ low: 80, high: 80 }] })])
  fake.addService('range', ['web'], [cfg('r-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['10.9.0.0/24'], portRanges: [{ low: 1, high: 1000 }] })])
  fake.addService('subnet', ['web'], [cfg('s-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['10.8.0.0/24'], portRanges: [{ low: 9000, high: 9003 }] })])
  fake.addService('vault', ['secret'], [cfg('v-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['vault.ziti'], portRanges: [{ low: 8200, high: 8200 }] })])
  fake.addPolicy('billing-dials', 'Dial', ['#billing'], ['#db', '#web'])
  return { fake, api, rt, config, mutateUrl, whCa: whCa.certPem, kc, apiUrl: url, apiCa: ca.certPem }
}

function autoPod(annotations: Record<string, string> = {}, extra: Partial<V1Pod['spec']> = {}): V1Pod & { metadata: { namespace: string } } {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { generateName: 'web-7d9f-', namespace: 'apps', annotations: { 'cni.openziti.io/identity': 'auto', 'cni.openziti.io/role-attributes': 'billing, eu', ...annotations } },
    spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }], ...extra },
  }
}

/** One reconcile pass as the leader (the test drives the lease renewals). */
async function reconcile(rt: { leader: { tryAcquireOrRenew: () => Promise<boolean> }; reconciler: { runOnce: () => Promise<unknown> } }) {
  await rt.leader.tryAcquireOrRenew()
  return rt.reconciler.runOnce() as ReturnType<Awaited<ReturnType<typeof world>>['rt']['reconciler']['runOnce']>
}

const managed = (fake: FakeZitiController) => [...fake.identities.values()].filter((i) => i.tags['ziti-cni.openziti.io/managed-by'] === 'ziti-cni')

t.test('an auto pod gets its own identity, a Secret with the JWT, and the services its policies allow', async (t) => {
  const { fake, api } = await world(t)
  const pod = await api.create('pods', autoPod() as never) as unknown as V1Pod
  const [identity] = managed(fake)
  t.ok(identity, 'the identity exists at the controller')
  t.match(identity!.name, /^k8s-apps-web-7d9f-[0-9a-f]{8}$/, 'named after namespace and pod (generateName: the API server names it after admission)')
  t.same(identity!.roleAttributes, ['billing', 'eu'])
  t.match(identity!.tags, { 'ziti-cni.openziti.io/cluster': 'test', 'ziti-cni.openziti.io/namespace': 'apps', 'ziti-cni.openziti.io/pod': 'web-7d9f-' })
  const ann = pod.metadata!.annotations!
  t.equal(ann['cni.openziti.io/identity-id'], identity!.id)
  t.equal(ann['cni.openziti.io/identity-name'], identity!.name)
  t.equal(ann['cni.openziti.io/role-attributes'], 'billing, eu', 'the pod\'s own annotations are kept')
  t.equal(pod.metadata!.labels!['cni.openziti.io/auto-identity'], 'true')
  const sidecar = pod.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!
  const tokenEnv = sidecar.env!.find((e) => e.name === 'ZITI_ENROLL_TOKEN')!
  const secretName = tokenEnv.valueFrom!.secretKeyRef!.name!
  t.same(tokenEnv.valueFrom!.secretKeyRef, { name: secretName, key: 'token.jwt', optional: true })
  const secret = api.get('secrets', 'apps', secretName) as unknown as { stringData?: Record<string, string>; data?: Record<string, string>; metadata: { labels: Record<string, string> } }
  t.ok(secret, 'the per-pod Secret exists')
  const jwt = secret.stringData?.['token.jwt'] ?? Buffer.from(secret.data?.['token.jwt'] ?? '', 'base64').toString()
  t.equal(jwt, identity!.enrollment!.jwt, 'it carries the identity\'s one-time JWT')
  t.equal(secret.metadata.labels['app.kubernetes.io/managed-by'], 'ziti-cni')
  t.notOk(JSON.stringify(pod.spec).includes(jwt), 'the JWT is not in the pod spec')

  const intent = parseIntent(ann['cni.openziti.io/interception']!)
  if (intent.mode !== 'proxy') throw new Error('proxy expected')
  const alias = (h: string) => pod.spec!.hostAliases!.find((a) => a.hostnames!.includes(h))!.ip!
  t.same(intent.dnat.filter((d) => d.dst === alias('pg.ziti')), [{ dst: alias('pg.ziti'), proto: 'tcp', port: 5432, to: 15432 }], 'postgres at its proxy.v1 port')
  t.same(intent.dnat.filter((d) => d.dst === alias('api.ziti')).map((d) => d.port), [443, 8443], 'both api ports')
  t.same(intent.dnat.filter((d) => d.dst === '100.127.9.9').map((d) => d.port), [443, 8443], 'the api IP address, DNATed as is')
  t.same(intent.dnat.filter((d) => d.dst === alias('metrics.ziti')).map((d) => `${d.proto}/${d.port}`), ['tcp/8125'])
  t.notOk(pod.spec!.hostAliases!.some((a) => a.hostnames!.includes('vault.ziti')), 'no policy, no interception')
  t.same(intent.dnat.filter((d) => d.dst === '10.8.0.0/24'), [{ dst: '10.8.0.0/24', proto: 'tcp', port: 9000, portTo: 9003, to: 15102 }], 'a service\'s CIDR and port range: one interval entry')
  t.same(sidecar.args!.slice(3).sort(), ['api:15100', 'metrics:15101', 'postgres:15432', 'subnet:15102'])
})

t.test('warnings name each service proxy mode cannot carry, and why', async (t) => {
  const { mutateUrl, whCa } = await world(t)
  const body = JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'a1b2c3d4-0000-0000-0000-000000000001', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'apps', name: '', object: autoPod(), dryRun: false } })
  const raw = await https(mutateUrl, whCa, "POST", body)
  const res = JSON.parse(raw.text) as { response: { allowed: boolean; warnings: string[]; status?: { message: string } } }
  t.equal(res.response.status?.message, undefined)
  t.ok(res.response.allowed)
  const w = res.response.warnings.join('\n')
  t.match(w, /"metrics": udp is not intercepted: without a proxy\.v1 config/)
  t.match(w, /"wild": address \*\.corp\.ziti is not intercepted: a wildcard domain/)
  t.match(w, /"range" is not intercepted: its intercept\.v1 port ranges cover 1000 ports, more than 16/)
  t.notMatch(w, /vault/, 'services the identity may not dial are not mentioned')
})

t.test('bad role attributes are refused before any identity exists', async (t) => {
  const { fake, api } = await world(t)
  const e = await api.create('pods', autoPod({ 'cni.openziti.io/role-attributes': 'billing, #eu' }) as never).catch((err: Error) => err)
  t.match(String(e), /cni\.openziti\.io\/role-attributes: entry 2 "#eu": write the attribute without "#"/)
  t.equal(managed(fake).length, 0)
  t.notOk(fake.calls.some((c) => c.method === 'POST' && c.path.includes('/identities')), 'the controller was not asked')
})

t.test('controller down: auto pods are refused with the reason, other pods are not affected', async (t) => {
  const { fake, api } = await world(t)
  fake.setDown(true)
  const started = Date.now()
  const e = await api.create('pods', autoPod() as never).catch((err: Error) => err)
  t.match(String(e), /cni\.openziti\.io\/identity: auto: the OpenZiti controller is unreachable, so no identity was created/)
  t.ok(Date.now() - started < 3500, `answered within the admission budget (${Date.now() - started} ms)`)
  const plain = await api.create('pods', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'plain', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'web-id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } }, spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] } } as never) as unknown as V1Pod
  t.ok(plain.spec!.initContainers!.some((c) => c.name === 'ziti-tunnel'), 'a Secret-identity pod is injected as before')
})

t.test('credential refused: the message says so', async (t) => {
  const { fake, api } = await world(t)
  for (const i of fake.identities.values()) if (i.name === 'ziti-cni-webhook') i.permissions = ['service.read']
  const e = await api.create('pods', autoPod() as never).catch((err: Error) => err)
  t.match(String(e), /refused the webhook's credential/)
})

t.test('a dry run creates nothing', async (t) => {
  const { fake, apiUrl, apiCa } = await world(t)
  // As kubectl --dry-run=server: the API server sends dryRun: true to the webhook.
  const res = await https(`${apiUrl}/api/v1/namespaces/apps/pods?dryRun=All`, apiCa, 'POST', JSON.stringify(autoPod()), { authorization: `Bearer ${TOKEN}` })
  t.equal(res.status, 201)
  t.notOk((JSON.parse(res.text) as V1Pod).spec!.initContainers, 'nothing injected')
  t.equal(managed(fake).length, 0)
})

t.test('an admission that fails after the identity exists deletes it again', async (t) => {
  const { fake, api } = await world(t)
  // The app declares the port postgres' proxy.v1 puts the sidecar's listener on.
  const e = await api.create('pods', autoPod({}, { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', ports: [{ containerPort: 15432 }], securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] }) as never).catch((err: Error) => err)
  t.match(String(e), /port 15432 is used by the Ziti sidecar/)
  t.equal(managed(fake).length, 0, 'rolled back at once')
  t.same(api.requests.filter((r) => r.method === 'DELETE' && r.path.includes('/secrets/')).map((r) => r.status), [200], 'and its Secret')
})

t.test('reconcile: rejected-after-admission and deleted pods lose their identity; spent tokens lose their Secret', async (t) => {
  const { fake, api, rt } = await world(t)
  t.ok(await rt.leader.tryAcquireOrRenew(), 'the only replica leads')
  // 1. Another admission step refuses the pod after ours created the identity.
  api.afterAdmission = () => 'pods "web" is forbidden: exceeded quota'
  const e = await api.create('pods', autoPod() as never).catch((err: Error) => err)
  t.match(String(e), /exceeded quota/)
  api.afterAdmission = undefined
  t.equal(managed(fake).length, 1, 'the webhook cannot know: the identity exists')
  // 2. A pod that lives, and enrolls.
  const live = await api.create('pods', autoPod() as never) as unknown as V1Pod
  const liveId = live.metadata!.annotations!['cni.openziti.io/identity-id']!
  delete fake.identities.get(liveId)!.enrollment // what enrollment does at the controller
  const first = await reconcile(rt)
  t.same(first?.deleteIdentities, [], 'within the grace period nothing is deleted (an admission may be in flight)')
  t.equal(first?.deleteSecrets.length, 1, 'the spent token\'s Secret goes')
  const liveSecret = live.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!.env!.find((x) => x.name === 'ZITI_ENROLL_TOKEN')!.valueFrom!.secretKeyRef!.name!
  t.notOk(api.get('secrets', 'apps', liveSecret), 'deleted')
  await new Promise((r) => setTimeout(r, 3200))
  const second = await reconcile(rt)
  t.equal(second?.deleteIdentities.length, 1, 'the rejected pod\'s identity is deleted after the grace period')
  t.same(managed(fake).map((i) => i.id), [liveId], 'the live pod keeps its identity')
  t.equal(api.requests.filter((r) => r.method === 'GET' && r.path.includes('/secrets')).length, 0, 'the webhook never reads or lists Secrets')
  // 3. The pod is deleted (the webhook need not be up for it).
  api.delete('pods', 'apps', live.metadata!.name!)
  await reconcile(rt)
  t.equal(managed(fake).length, 0, 'gone with its pod')
})

t.test('reconcile with the controller down deletes nothing and tries again', async (t) => {
  const { fake, api, rt } = await world(t, { graceSeconds: 3 })
  await rt.leader.tryAcquireOrRenew()
  const pod = await api.create('pods', autoPod() as never) as unknown as V1Pod
  api.delete('pods', 'apps', pod.metadata!.name!)
  await new Promise((r) => setTimeout(r, 3200))
  fake.setDown(true)
  t.equal(await reconcile(rt), undefined, 'the pass fails')
  t.equal(managed(fake).length, 1)
  fake.setDown(false)
  t.equal((await reconcile(rt))?.deleteIdentities.length, 1, 'the next pass does it')
  t.equal(managed(fake).length, 0)
})

t.test('two replicas: one reconciles; the other takes over when it stops renewing', async (t) => {
  const { rt, kc } = await world(t)
  const { LeaderElector } = await import('../src/leader.ts')
  const other = new LeaderElector(kc, { namespace: 'ziti-cni-system', name: 'ziti-cni-identity-reconciler', identity: 'webhook-1', leaseSeconds: 2 }, pino({ level: 'silent' }))
  const a = await rt.leader.tryAcquireOrRenew()
  const b = await other.tryAcquireOrRenew()
  t.same([a, b], [true, false], 'exactly one leader')
  t.not(await rt.reconciler.runOnce(), undefined, 'the leader reconciles')
  t.equal(await other.tryAcquireOrRenew(), false, 'still held')
  await new Promise((r) => setTimeout(r, 2300)) // webhook-0 stops renewing (its pod died)
  t.equal(rt.leader.isLeader(), false, 'the old leader steps down on its own clock')
  t.equal(await rt.reconciler.runOnce(), undefined, 'and no longer reconciles')
  t.equal(await other.tryAcquireOrRenew(), true, 'webhook-1 takes over the expired lease')
  t.equal(await rt.leader.tryAcquireOrRenew(), false, 'webhook-0 cannot take it back while it is renewed')
})

t.test('auto-drift: what a running pod intercepts against what its identity may dial now', async (t) => {
  const { fake, api, apiUrl, apiCa, config } = await world(t)
  const pod = await api.create('pods', autoPod() as never) as unknown as V1Pod
  const dir = mkdtempSync(join(tmpdir(), 'zcni-drift-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const admin = fake.addCertIdentity('drift-reader', ['service.read', 'config.read'])
  writeFileSync(join(dir, 'config.yaml'), `controller:\n  url: ${config.controller.url}\n  credentialFile: ${join(dir, 'credential.json')}\n`)
  writeFileSync(join(dir, 'credential.json'), JSON.stringify({ ztAPI: fake.url, id: { cert: admin.cert, key: admin.key, ca: fake.ca.certPem } }))
  writeFileSync(join(dir, 'kubeconfig'), JSON.stringify({ apiVersion: 'v1', kind: 'Config', 'current-context': 'x', clusters: [{ name: 'c', cluster: { server: apiUrl, 'certificate-authority-data': Buffer.from(apiCa).toString('base64') } }], users: [{ name: 'u', user: { token: TOKEN } }], contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }] }))
  // Asynchronously: the API stand-in and the controller answer from this process.
  const drift = () => new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    const p = spawn(process.execPath, [new URL('../src/cli/auto-drift.ts', import.meta.url).pathname, '-n', 'apps', pod.metadata!.name!, '--config', join(dir, 'config.yaml'), '--kubeconfig', join(dir, 'kubeconfig')], { env: { ...process.env, NODE_OPTIONS: '' } })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d: Buffer) => { stdout += d })
    p.stderr.on('data', (d: Buffer) => { stderr += d })
    p.on('close', (status) => resolve({ status, stdout, stderr }))
  })
  const same = await drift()
  t.equal(same.status, 0, same.stderr)
  t.match(same.stdout, /intercepted and still granted: \n(  .*\n)*  pg\.ziti:5432\/tcp=postgres\n/)
  t.match(same.stdout, /granted now, not intercepted \(recreate the pod to pick them up\): none/)
  // The operator grants a new service and revokes postgres.
  fake.addService('ledger', ['ledger'], [fake.addConfig('l-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['ledger.ziti'], portRanges: [{ low: 7000, high: 7000 }] })])
  fake.addPolicy('billing-ledger', 'Dial', ['#billing'], ['#ledger'])
  for (const p of fake.policies.values()) if (p.name === 'billing-dials') p.serviceRoles = ['#web']
  const changed = await drift()
  t.equal(changed.status, 3, 'exit 3: drift')
  t.match(changed.stdout, /granted now, not intercepted \(recreate the pod to pick them up\): \n  ledger\.ziti:7000\/tcp=ledger\n/)
  t.match(changed.stdout, /intercepted, no longer granted \(dials fail at the controller\): \n  pg\.ziti:5432\/tcp=postgres\n/)
})
