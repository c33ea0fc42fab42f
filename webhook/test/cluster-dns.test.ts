// Cluster DNS found, not assumed: the pure reading of the Service, the config override, the
// admission refusal while it is unknown, and the follower against the API stand-in (real
// client-node GET + watch, as in a cluster).
import t from 'tap'
import { KubeConfig } from '@kubernetes/client-node'
import { pino } from 'pino'
import { clusterDnsAddresses, parseServiceRef } from '../src/cluster-dns.ts'
import { ClusterDnsFollower, followClusterDns } from '../src/cluster-dns-watch.ts'
import { ConfigError, validateConfig } from '../src/config.ts'
import { review } from '../src/admission.ts'
import { kubeDnsService } from '../../e2e/node/lib/kube-services.ts'
import { startApiStandIn, TEST_CONFIG } from './helpers.ts'

const tproxyPod = (annotations: Record<string, string> = {}) => ({
  metadata: { name: 'tp', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/mode': 'tproxy', ...annotations } },
  spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] },
})
const admit = (cfg: ReturnType<typeof validateConfig>, pod: object) => review({ uid: 'u', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'apps', object: pod as never }, cfg)
const nameservers = (cfg: ReturnType<typeof validateConfig>, pod: object) => {
  const r = admit(cfg, pod)
  const op = r.ops?.find((o) => o.path === '/spec/dnsConfig') as { value: { nameservers: string[] } } | undefined
  return op?.value.nameservers
}

t.test('the Service is read for its cluster IPs, primary family first; unusable ones are named', async (t) => {
  t.same(clusterDnsAddresses(kubeDnsService(['10.100.0.10']) as never), ['10.100.0.10'], 'EKS (10.0.0.0/16 VPCs)')
  t.same(clusterDnsAddresses(kubeDnsService(['172.20.0.10', 'fd00:10::a']) as never), ['172.20.0.10', 'fd00:10::a'], 'dual-stack: both, as clusterIPs orders them')
  t.same(clusterDnsAddresses({ spec: { clusterIP: '10.96.0.10' } }), ['10.96.0.10'], 'clusterIP alone (pre-1.20 objects)')
  t.match(clusterDnsAddresses({ spec: { clusterIP: 'None', clusterIPs: ['None'] } }), /headless/)
  t.match(clusterDnsAddresses({ spec: {} }), /no cluster IP/)
  t.match(clusterDnsAddresses({ spec: { clusterIPs: ['10.0.0.300'] } }), /not an address: "10.0.0.300"/)
  t.same(parseServiceRef('kube-system/coredns'), { namespace: 'kube-system', name: 'coredns' })
  for (const bad of ['kube-dns', 'a/b/c', 'kube-system/', 'Kube/dns', 'a.b/c']) t.type(parseServiceRef(bad), 'string', `${bad} refused`)
})

t.test('config: discovery by default, an explicit list overrides, a bad Service name is named', async (t) => {
  const d = validateConfig({}, {})
  t.same(d.tproxy.clusterDns, [], 'nothing assumed (10.96.0.10 would be wrong on EKS)')
  t.equal(d.tproxy.clusterDnsService, 'kube-system/kube-dns')
  t.same(validateConfig({ tproxy: { clusterDns: ['172.20.0.10'] } }, {}).tproxy.clusterDns, ['172.20.0.10'])
  let problems: string[] = []
  try { validateConfig({ tproxy: { clusterDnsService: 'kube-dns' } }, {}) } catch (e) { if (e instanceof ConfigError) problems = e.problems }
  t.same(problems, ['tproxy.clusterDnsService: must be namespace/name of a Service (e.g. kube-system/kube-dns)'])
})

t.test('admission while the cluster DNS is unknown: DNS-using tproxy and tun pods refused by name, the rest untouched', async (t) => {
  const cfg = validateConfig({ ...TEST_CONFIG, tproxy: { ...TEST_CONFIG.tproxy, clusterDns: [] } }, {})
  const r = admit(cfg, tproxyPod())
  t.notOk(r.response.allowed)
  t.equal(r.response.status?.message, 'ziti-cni: cni.openziti.io/dns-capture: the cluster DNS is unknown (Service kube-system/kube-dns is missing, headless or not read yet: see the webhook log); the pod\'s resolver would have no server for names that are not Ziti services. Set tproxy.clusterDns in the webhook config, or tproxy.clusterDnsService to the Service your cluster uses')
  t.notOk(admit(cfg, { ...tproxyPod(), metadata: { ...tproxyPod().metadata, annotations: { ...tproxyPod().metadata.annotations, 'cni.openziti.io/mode': 'tun' } } }).response.allowed, 'tun too')
  t.ok(admit(cfg, tproxyPod({ 'cni.openziti.io/dns-capture': 'false' })).response.allowed, 'a pod that keeps its own DNS does not need it')
  t.ok(admit(cfg, { metadata: { name: 'p', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } }, spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] } }).response.allowed, 'proxy pods never need it')
  cfg.tproxy.clusterDns = ['10.100.0.10']
  t.same(nameservers(cfg, tproxyPod()), ['100.64.0.2'], 'once known: the tunneler alone (dns: forward)')
})

const tunPod = () => ({ ...tproxyPod(), metadata: { ...tproxyPod().metadata, annotations: { ...tproxyPod().metadata.annotations, 'cni.openziti.io/mode': 'tun' } } })
const sidecar = (cfg: ReturnType<typeof validateConfig>, pod: object) => {
  const op = admit(cfg, pod).ops?.find((o) => o.path === '/spec/initContainers') as { value: Array<{ name: string; args: string[]; env: Array<{ name: string; value?: string }> }> } | undefined
  return op!.value.find((c) => c.name === 'ziti-tunnel')!
}

t.test('dns: forward (default) lists the tunneler alone and hands it the cluster DNS; parallel keeps both nameservers', async (t) => {
  const cfg = validateConfig(TEST_CONFIG, {})
  t.equal(cfg.tun.dns, 'forward')
  t.equal(cfg.tproxy.dns, 'forward')
  cfg.tproxy.clusterDns = ['10.100.0.10', 'fd00:10::a']
  t.same(nameservers(cfg, tunPod()), ['100.64.0.2'], 'tun: one nameserver, so musl has nothing to race')
  const options = (c: typeof cfg) => (admit(c, tunPod()).ops?.find((o) => o.path === '/spec/dnsConfig') as { value: { options: unknown[] } }).value.options
  t.same(options(cfg), [{ name: 'ndots', value: '5' }, { name: 'edns0' }], 'forward: EDNS0, so glibc takes answers up to 1200 bytes over UDP (the tunneler has no TCP)')
  t.same(sidecar(cfg, tunPod()).args.slice(-2), ['--dns-upstream', '10.100.0.10'], 'tun: ziti-edge-tunnel forwards to the first cluster DNS address (it takes one)')
  t.same(nameservers(cfg, tproxyPod()), ['100.64.0.2'], 'tproxy: one nameserver')
  t.same(sidecar(cfg, tproxyPod()).env.find((e) => e.name === 'ZITI_CNI_DNS_UPSTREAM')?.value, '10.100.0.10,fd00:10::a', 'tproxy: every cluster DNS address (contract item 5)')
  cfg.tproxy.clusterDns = ['172.20.0.10']
  t.same(sidecar(cfg, tunPod()).args.slice(-1), ['172.20.0.10'], 'a new cluster DNS reaches the next pod of the same template (part of the cache key)')
  const par = validateConfig({ ...TEST_CONFIG, tun: { ...TEST_CONFIG.tun, dns: 'parallel' }, tproxy: { ...TEST_CONFIG.tproxy, dns: 'parallel' } }, {})
  t.same(nameservers(par, tunPod()), ['100.64.0.2', ...par.tproxy.clusterDns], 'parallel: the tunneler, then the cluster DNS')
  t.notOk(sidecar(par, tunPod()).args.includes('--dns-upstream'), 'parallel: no upstream for the tunneler')
  t.same(options(par), [{ name: 'ndots', value: '5' }], 'parallel: no EDNS0 (glibc falls back to TCP on the cluster DNS)')
  t.notOk(sidecar(par, tproxyPod()).env.some((e) => e.name === 'ZITI_CNI_DNS_UPSTREAM'), 'parallel: no ZITI_CNI_DNS_UPSTREAM')
  const ownDns = { ...tunPod(), metadata: { ...tunPod().metadata, annotations: { ...tunPod().metadata.annotations, 'cni.openziti.io/dns-capture': 'false' } } }
  t.equal(nameservers(cfg, ownDns), undefined, 'dns-capture false: the pod keeps its DNS')
  t.notOk(sidecar(cfg, ownDns).args.includes('--dns-upstream'), 'dns-capture false: the tunneler forwards nothing')
  for (const [raw, want] of [
    [{ tun: { dns: 'race' } }, 'tun.dns: must be forward or parallel'],
    [{ tproxy: { dns: true } }, 'tproxy.dns: must be forward or parallel'],
    [{ tun: { args: ['run', '--dns-upstream', '1.1.1.1'] } }, 'tun.args: --dns-upstream is set by the webhook (the cluster DNS) while tun.dns is forward; drop it, or set tun.dns: parallel'],
  ] as const) {
    let problems: string[] = []
    try { validateConfig(raw, {}) } catch (e) { if (e instanceof ConfigError) problems = e.problems }
    t.same(problems, [want], want)
  }
  t.same(validateConfig({ tun: { dns: 'parallel', args: ['run', '--dns-upstream', '1.1.1.1'] } }, {}).tun.args, ['run', '--dns-upstream', '1.1.1.1'], 'parallel: an upstream of your own is yours')
})

t.test('the follower reads kube-system/kube-dns from the API and follows it through a watch', async (t) => {
  const { api, url, ca } = await startApiStandIn(t, 'tok')
  const kc = new KubeConfig()
  kc.loadFromOptions({ clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }], users: [{ name: 'u', token: 'tok' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
  const cfg = validateConfig(TEST_CONFIG, {})
  cfg.tproxy.clusterDns = []
  const stop = await followClusterDns(kc, cfg, pino({ level: 'silent' }))
  t.teardown(stop)
  t.same(cfg.tproxy.clusterDns, ['10.96.0.10'], 'the stand-in serves a kubeadm cluster\'s Service; read before the webhook listens')
  const until = async (want: string[], what: string) => {
    const end = Date.now() + 10_000
    while (JSON.stringify(cfg.tproxy.clusterDns) !== JSON.stringify(want)) {
      if (Date.now() > end) throw new Error(`${what}: still ${JSON.stringify(cfg.tproxy.clusterDns)}`)
      await new Promise((r) => setTimeout(r, 20))
    }
    t.pass(what)
  }
  api.put('services', kubeDnsService(['172.20.0.10', 'fd00:20::a']) as never)
  await until(['172.20.0.10', 'fd00:20::a'], 'a changed Service reaches the config through the watch')
  t.same(sidecar(cfg, tproxyPod()).env.find((e) => e.name === 'ZITI_CNI_DNS_UPSTREAM')?.value, '172.20.0.10,fd00:20::a', 'the next pod\'s tunneler forwards to the new addresses')
  api.delete('services', 'kube-system', 'kube-dns')
  await until([], 'a deleted Service empties it')
  t.notOk(admit(cfg, tproxyPod()).response.allowed, 'and DNS-using pods are refused, not sent to a stale address')
  api.put('services', kubeDnsService(['10.100.0.10']) as never)
  await until(['10.100.0.10'], 'a re-created Service is picked up')
  api.put('services', { ...kubeDnsService(['10.9.9.9'], 'other-dns') } as never)
  await new Promise((r) => setTimeout(r, 200))
  t.same(cfg.tproxy.clusterDns, ['10.100.0.10'], 'another Service in kube-system changes nothing')
  stop()
  await new Promise((r) => setTimeout(r, 200))
  const paths = api.requests.map((r) => r.path).filter((p) => p.includes('/services'))
  t.ok(paths.length > 0 && paths.every((p) => p === '/api/v1/namespaces/kube-system/services/kube-dns' || p.includes('fieldSelector=metadata.name%3Dkube-dns')), `only the one Service is read (RBAC resourceNames): ${[...new Set(paths)].join(' ')}`)
})

t.test('a cluster without the Service: the follower reports it, and picks it up when it appears', async (t) => {
  const { api, url, ca } = await startApiStandIn(t, 'tok')
  api.delete('services', 'kube-system', 'kube-dns')
  const kc = new KubeConfig()
  kc.loadFromOptions({ clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }], users: [{ name: 'u', token: 'tok' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
  const seen: Array<[string[], string | undefined]> = []
  const follower = new ClusterDnsFollower(kc, { namespace: 'kube-system', name: 'kube-dns' }, pino({ level: 'silent' }), (ips, problem) => seen.push([ips, problem]))
  await follower.start()
  t.teardown(() => follower.stop())
  t.same(seen, [[[], 'was not found']], 'missing at start: reported (the webhook starts; DNS-using pods are refused)')
  api.put('services', kubeDnsService(['10.100.0.10']) as never)
  const end = Date.now() + 10_000
  while (seen.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
  t.same(seen[1], [['10.100.0.10'], undefined], 'created later: followed')
})

t.test('address-range sanity at start: our ranges against the stated pod and Service networks and the cluster DNS', async (t) => {
  const problems = (raw: unknown) => { try { validateConfig(raw, {}) } catch (e) { if (e instanceof ConfigError) return e.problems; throw e } return [] }
  // EKS custom networking: pods in the VPC's secondary 100.64.0.0/16.
  t.same(problems({ clusterNetworks: { podCidrs: ['100.64.0.0/16'], serviceCidrs: ['172.20.0.0/16'] } }), [
    'proxy.aliasRange: the proxy alias range 100.64.0.0/10 overlaps the cluster\'s pod network 100.64.0.0/16 (clusterNetworks.podCidrs); pods could not reach it. Choose a range outside it',
    'tproxy.defaultCidrs: a default tproxy intercept range 100.64.0.0/10 overlaps the cluster\'s pod network 100.64.0.0/16 (clusterNetworks.podCidrs); pods could not reach it. Choose a range outside it',
    'tun.addr: the tun device\'s network 100.64.0.0/10 overlaps the cluster\'s pod network 100.64.0.0/16 (clusterNetworks.podCidrs); pods could not reach it. Choose a range outside it',
  ])
  t.same(problems({ clusterNetworks: { podCidrs: ['100.64.0.0/16'] }, proxy: { aliasRange: '198.18.0.0/15' }, tproxy: { defaultCidrs: ['198.18.0.0/15'] }, tun: { addr: '198.18.0.1/15', dnsServer: '198.18.0.2' } }), [], 'moved out of the way: accepted')
  t.match(problems({ tproxy: { clusterDns: ['100.64.0.10'] } }), [/^proxy\.aliasRange: .* overlaps the cluster DNS address 100\.64\.0\.10\/32 \(tproxy\.clusterDns\)/], 'an explicit DNS address inside the ranges')
  t.match(problems({ clusterNetworks: { podCidrs: ['10.0.0.1/16'] } }), ['clusterNetworks.podCidrs[0]: host bits are set (did you mean 10.0.0.0/16?)'])

  const { api, url, ca } = await startApiStandIn(t, 'tok')
  api.put('services', kubeDnsService(['100.64.0.10']) as never)
  const kc = new KubeConfig()
  kc.loadFromOptions({ clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }], users: [{ name: 'u', token: 'tok' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
  const cfg = validateConfig(TEST_CONFIG, {})
  cfg.tproxy.clusterDns = []
  const stop = await followClusterDns(kc, cfg, pino({ level: 'silent' }))
  t.teardown(stop)
  t.same(cfg.tproxy.clusterDns, [], 'a discovered DNS address inside the intercept range is not used (it would be captured)')
  t.notOk(admit(cfg, tproxyPod()).response.allowed, 'DNS-using pods refused')
})

t.test('a busy API server (429, Retry-After 3 s): the follower waits as asked, then follows', async (t) => {
  const { api, url, ca } = await startApiStandIn(t, 'tok')
  const kc = new KubeConfig()
  kc.loadFromOptions({ clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }], users: [{ name: 'u', token: 'tok' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
  const seen: string[][] = []
  api.overload(4_000, 3)
  const began = Date.now()
  const follower = new ClusterDnsFollower(kc, { namespace: 'kube-system', name: 'kube-dns' }, pino({ level: 'silent' }), (ips) => seen.push(ips))
  // The read is sent again after the Retry-After by the API client itself (kube-client.ts, as
  // client-go's REST client), so start() settles once the server accepts.
  const started = follower.start()
  t.teardown(() => follower.stop())
  await new Promise((r) => setTimeout(r, 2_900 - (Date.now() - began)))
  t.same(seen, [], 'nothing known while the server refuses')
  const early = api.requests.filter((r) => r.path.includes('kube-dns'))
  t.same(early.map((r) => r.status), [429], 'one request, then nothing before the Retry-After')
  await started
  const end = Date.now() + 15_000
  while (!seen.length && Date.now() < end) await new Promise((r) => setTimeout(r, 50))
  t.same(seen[0], ['10.96.0.10'], 'read once the server accepts again')
  api.put('services', kubeDnsService(['10.100.0.10']) as never)
  while (seen.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
  t.same(seen[1], ['10.100.0.10'], 'and followed through the watch')
  const refused = api.requests.filter((r) => r.path.includes('kube-dns') && r.status === 429)
  t.ok(refused.length <= 3, `few requests while refused (${refused.length}), not a 2 s loop`)
})
