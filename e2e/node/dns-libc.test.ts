// Name resolution by the two C libraries apps ship with, in each interception mode, on the
// real-runtime tier. An app container holds e2e/node/images/resolve.c built static with musl
// (an Alpine app) and dynamic with glibc (a Debian app); each calls getaddrinfo() for a Ziti
// service name and for a name only the cluster DNS serves, with AF_INET, AF_INET6 and
// AF_UNSPEC, five times, timing each call. musl sends A and AAAA at once to every nameserver
// and takes the first acceptable answer of each (res_msend.c); it ignores REFUSED, and an
// NXDOMAIN or error rcode for either query drops the other's addresses (lookup_name.c
// name_from_dns). glibc asks one nameserver at a time and moves on after REFUSED.
//   proxy   ClusterFirst resolv.conf (the kubelet's: search path, ndots:5); Ziti names are the
//           webhook's hostAliases in /etc/hosts
//   tun     upstream's ziti-edge-tunnel v1.18.2 answers at 100.64.0.2 inside the device, then
//           the cluster DNS (the webhook's dnsConfig: same search path and ndots:5)
//   tproxy  the contract stand-in answers at 100.64.0.2 through the catch-all, then the cluster DNS
// The cluster DNS stand-in forwards other names "upstream", which knows no `.ziti` (NXDOMAIN),
// and answers www.example.org with one A and one AAAA record. musl in tun and tproxy pods races
// the two nameservers (counted, see README "Compatibility"); a fourth pod runs the way out:
// the tunneler as the only nameserver, forwarding the rest (--dns-upstream).
import t from 'tap'
import type { V1Pod } from '@kubernetes/client-node'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, sweepLeftovers, type PodManifest } from './lib/node.ts'
import { appPod, infraPod, STANDINS } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import type { RunningPod } from './lib/kubelet.ts'
import { startWebhook } from './lib/webhook.ts'
import { FakeZitiController } from './standins/ziti-controller.ts'
import { FakeEdgeRouter } from './standins/ziti-router.ts'

const RUNS = 5
const RACE_RUNS = 50
/** musl retries a query after timeout/attempts = 2.5 s (res_msend.c), glibc after 5 s: a lookup
 * that took this long waited for an answer that never came. */
const STALL_MS = 2500
const ZITI_NAME = 'pg.ziti'
const OTHER_NAME = 'www.example.org'
const OTHER_ADDRS = ['192.0.2.53', '2001:db8::53']
const TPROXY_ZITI_ADDR = '100.64.0.7' // tproxy-standin.c dns_answer
const LIBCS = ['musl', 'glibc'] as const
const FAMILIES = ['4', '6', 'unspec'] as const
type Libc = typeof LIBCS[number]
type Family = typeof FAMILIES[number]

interface Lookup { libc: Libc; name: string; family: Family; rc: number; error: string; ms: number; addresses: string[] }
/** What a lookup must return: these addresses (any order), or no address and this error. */
type Expected = { addresses: string[] } | { error: string }

function withClients(manifest: PodManifest): PodManifest {
  const spec = (manifest as V1Pod).spec!
  return { ...manifest, spec: { ...spec, containers: spec.containers.map((c) => (c.name === 'app' ? { ...c, image: IMAGES.libcApps } : c)) } }
}

async function resolve(node: TestNode, rp: RunningPod, libc: Libc, name: string, family: Family): Promise<Lookup[]> {
  const r = await node.exec(rp, 'app', [`/usr/local/bin/resolve-${libc}`, name, family, String(RUNS)], 60)
  const lines = r.stdout.trim().split('\n').filter(Boolean)
  if (lines.length !== RUNS) throw new Error(`resolve-${libc} ${name} ${family}: ${lines.length} results (exit ${r.code}): ${r.stdout}${r.stderr}`)
  return lines.map((l) => JSON.parse(l) as Lookup)
}

const sorted = (a: string[]) => [...a].sort()
const show = (l: Lookup) => (l.rc === 0 ? l.addresses.join(' ') : l.error)

t.test('musl and glibc resolvers in proxy, tun and tproxy pods', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr', 'gcc', 'musl-gcc']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 19, tunDevicePlugin: true })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  const closers: Array<() => Promise<unknown>> = []
  t.teardown(async () => { await node.teardown(); await webhook?.close(); for (const c of closers) await c().catch(() => {}) })
  await node.start()
  await node.deviceManager!.ready('tun.openziti.io/tun')

  // The cluster DNS: infraPod's, with an IPv6 answer too and `.ziti` unknown upstream.
  const infraManifest = infraPod()
  const dnsContainer = infraManifest.spec!.containers.find((c) => c.name === 'dns')!
  dnsContainer.command = ['node', `${STANDINS}/dns-server.ts`, '0.0.0.0', '53', OTHER_ADDRS.join(','), 'cluster.local', 'ziti']
  const infra = await node.runPod(await node.createPod(infraManifest))
  node.clusterDns.push(infra.ip)
  webhook = await startWebhook({ validator: { image: IMAGES.validator }, tun: { image: IMAGES.tun }, tproxy: { image: IMAGES.tproxy, args: [], datapath: 'ebpf', clusterDns: [infra.ip] } })
  node.api.admission = webhook.admission

  // tun: the controller and an edge router on the gateway (as in tun.test.ts), one dialable service.
  const ctrl = new FakeZitiController({ host: node.gateway })
  await ctrl.listen()
  closers.push(() => ctrl.close())
  const router = new FakeEdgeRouter(ctrl.ca, { apiSessionIdentity: (tok) => ctrl.apiSessionIdentity(tok), dialService: (d, i) => ctrl.clientApi.dialService(d, i) }, node.gateway)
  ctrl.clientApi.addRouter('er-node', await router.listen())
  closers.push(() => router.close())
  const pg = ctrl.addService('postgres', ['db'], [ctrl.addConfig('postgres-intercept', 'intercept.v1', { protocols: ['tcp'], addresses: [ZITI_NAME], portRanges: [{ low: 5432, high: 5432 }] })])
  pg.encryptionRequired = false
  const me = ctrl.addCertIdentity('dnsapp-pod', [])
  me.identity.roleAttributes.push('dnsapp')
  ctrl.addPolicy('dnsapp-dials-db', 'Dial', ['#dnsapp'], ['#db'])
  await node.createSecret('apps', 'tun-identity', { 'identity.json': JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${me.cert}`, key: `pem:${me.key}`, ca: `pem:${ctrl.ca.certPem}` } }) })
  // proxy and tproxy: the stand-in tunnelers only need an identity file to start.
  await node.createSecret('apps', 'standin-identity', { 'identity.json': JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' } }) })

  const proxyPod = await node.createPod(withClients(appPod('dns-proxy', 'apps', { 'cni.openziti.io/identity-secret': 'standin-identity', 'cni.openziti.io/services': `${ZITI_NAME}:5432=postgres` })))
  const tunPod = await node.createPod(withClients(appPod('dns-tun', 'apps', { 'cni.openziti.io/identity-secret': 'tun-identity', 'cni.openziti.io/mode': 'tun', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10' })))
  const tproxyPod = await node.createPod(withClients(appPod('dns-tproxy', 'apps', { 'cni.openziti.io/identity-secret': 'standin-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'ebpf' })))
  const pods = { proxy: await node.runPod(proxyPod), tun: await node.runPod(tunPod), tproxy: await node.runPod(tproxyPod) }

  // The race's way out, run with upstream's binary as is: the tunneler as the pod's only nameserver,
  // forwarding other names to the cluster DNS (ziti-edge-tunnel --dns-upstream,
  // ziti-edge-tunnel.c:1006-1011, ziti_dns.c query_upstream). Today a pod gets there only with
  // its own dnsConfig (the webhook then warns and leaves it) and a tun.args override.
  const forwarding = await startWebhook({ validator: { image: IMAGES.validator }, tun: { image: IMAGES.tun, args: ['run', '--dns-upstream', infra.ip] }, tproxy: { clusterDns: [infra.ip] } })
  closers.push(() => forwarding.close())
  node.api.admission = forwarding.admission
  const fwd = ctrl.addCertIdentity('dnsfwd-pod', [])
  fwd.identity.roleAttributes.push('dnsapp')
  await node.createSecret('apps', 'fwd-identity', { 'identity.json': JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${fwd.cert}`, key: `pem:${fwd.key}`, ca: `pem:${ctrl.ca.certPem}` } }) })
  const fwdManifest = withClients(appPod('dns-tun-fwd', 'apps', { 'cni.openziti.io/identity-secret': 'fwd-identity', 'cni.openziti.io/mode': 'tun', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10' }))
  Object.assign((fwdManifest as V1Pod).spec!, { dnsPolicy: 'None', dnsConfig: { nameservers: ['100.64.0.2'], searches: ['apps.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: [{ name: 'ndots', value: '5' }] } })
  const fwdPod = await node.runPod(await node.createPod(fwdManifest))
  node.api.admission = webhook.admission

  const alias = proxyPod.spec?.hostAliases?.find((a) => a.hostnames?.includes(ZITI_NAME))?.ip
  t.ok(alias, `proxy: the webhook maps ${ZITI_NAME} to an alias address (${alias})`)

  await t.test('each pod has the resolv.conf a kubelet writes for it', async (t) => {
    const search = 'search apps.svc.cluster.local svc.cluster.local cluster.local'
    for (const [mode, servers] of [['proxy', [infra.ip]], ['tun', ['100.64.0.2', infra.ip]], ['tproxy', ['100.64.0.2', infra.ip]]] as const) {
      // Every container of the pod mounts the sandbox's resolv.conf; the sidecar's image has cat.
      const text = (await node.exec(pods[mode], 'ziti-tunnel', ['cat', '/etc/resolv.conf'])).stdout
      t.same(text.split('\n').filter((l) => l.startsWith('nameserver ')).map((l) => l.slice(11).trim()), servers, `${mode}: nameservers ${servers.join(', ')}`)
      t.match(text, new RegExp(`^${search}$`, 'm'), `${mode}: the pod's search path`)
      t.match(text, /^options ndots:5$/m, `${mode}: ndots:5`)
    }
  })

  // The tunneler's address for the Ziti name: the first glibc A answer in the tun pod.
  const tunAddr = (await resolve(node, pods.tun, 'glibc', ZITI_NAME, '4'))[0]!.addresses[0] ?? ''
  t.match(tunAddr, /^100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\.\d+\.\d+$/, `tun: the tunneler answers ${ZITI_NAME} with an address of its range (${tunAddr})`)

  const other: Record<Family, Expected> = { 4: { addresses: [OTHER_ADDRS[0]!] }, 6: { addresses: [OTHER_ADDRS[1]!] }, unspec: { addresses: OTHER_ADDRS } }
  // A name with an A record and an empty AAAA answer (NOERROR, no record: what the tunneler
  // says, ziti_dns.c:648-664): glibc calls that EAI_NODATA, musl 1.2.3 EAI_NONAME (EAI_NODATA
  // from 1.2.4, musl 85050ac5).
  const ziti = (addr: string): Record<Libc, Record<Family, Expected>> => ({
    musl: { 4: { addresses: [addr] }, 6: { error: 'EAI_NONAME' }, unspec: { addresses: [addr] } },
    glibc: { 4: { addresses: [addr] }, 6: { error: 'EAI_NODATA' }, unspec: { addresses: [addr] } },
  })
  const both = (e: Record<Family, Expected>) => ({ musl: e, glibc: e })
  // /etc/hosts holds the alias for IPv4 only: musl stops there for AF_INET6 (lookup_name.c: a
  // hosts match of the other family is EAI_NONAME), glibc's files module finds no IPv6 entry
  // and asks DNS, where `.ziti` does not exist: EAI_NONAME either way.
  const proxyZiti: Record<Family, Expected> = { 4: { addresses: [alias ?? ''] }, 6: { error: 'EAI_NONAME' }, unspec: { addresses: [alias ?? ''] } }
  const expected: Record<keyof typeof pods, Record<string, Record<Libc, Record<Family, Expected>>>> = {
    proxy: { [ZITI_NAME]: both(proxyZiti), [OTHER_NAME]: both(other) },
    tun: { [ZITI_NAME]: ziti(tunAddr), [OTHER_NAME]: both(other) },
    tproxy: { [ZITI_NAME]: ziti(TPROXY_ZITI_ADDR), [OTHER_NAME]: both(other) },
  }
  // musl asks both nameservers at once and keeps the first acceptable answer to each query
  // (res_msend.c): for a Ziti name that is the tunneler's, or the cluster DNS's NXDOMAIN when
  // that one arrives first, and then no address at all (lookup_name.c name_from_dns). A race
  // the pod's nameserver list [tunneler, cluster DNS] sets up; measured below, not asserted
  // per lookup. glibc asks the tunneler first and only moves on after its REFUSED.
  const racy = (mode: keyof typeof pods, libc: Libc, name: string, family: Family) => mode !== 'proxy' && libc === 'musl' && name === ZITI_NAME && family !== '6'

  const table: string[] = []
  for (const mode of ['proxy', 'tun', 'tproxy'] as const) {
    await t.test(`${mode}: both libcs resolve the Ziti name and the cluster's names, A, AAAA and both, without a stall`, async (t) => {
      for (const name of [ZITI_NAME, OTHER_NAME]) {
        for (const family of FAMILIES) {
          for (const libc of LIBCS) {
            const runs = await resolve(node, pods[mode], libc, name, family)
            const want = expected[mode][name]![libc][family]
            const got = runs.map(show)
            const wanted = 'addresses' in want ? sorted(want.addresses).join(' ') : want.error
            const results = runs.map((r) => (r.rc === 0 ? sorted(r.addresses).join(' ') : r.error))
            const what = `${libc} ${name} AF_${family === 'unspec' ? 'UNSPEC' : `INET${family === '6' ? '6' : ''}`}`
            if (racy(mode, libc, name, family)) t.ok(results.every((r) => r === wanted || r === 'EAI_NONAME'), `${what}: ${wanted}, or EAI_NONAME when the cluster DNS's NXDOMAIN wins the race (got ${[...new Set(got)].join(' | ')})`)
            else t.same(results, Array(RUNS).fill(wanted), `${what}: ${wanted} every time (got ${[...new Set(got)].join(' | ')})`)
            const ms = runs.map((r) => r.ms).sort((a, b) => a - b)
            t.ok(ms.at(-1)! < STALL_MS, `${what}: slowest of ${RUNS} took ${ms.at(-1)!.toFixed(1)} ms (< ${STALL_MS} ms)`)
            table.push(`| ${mode} | ${libc} | ${name} | ${family} | ${[...new Set(got)].join(' / ')} | ${ms[Math.floor(RUNS / 2)]!.toFixed(2)} | ${ms.at(-1)!.toFixed(2)} |`)
          }
        }
      }
    })
  }
  t.comment(['getaddrinfo() latency per lookup (median and max of ' + RUNS + ', ms)', '| mode | libc | name | family | result | median | max |', '| --- | --- | --- | --- | --- | --- | --- |', ...table].join('\n'))

  await t.test('musl: how often the cluster DNS\'s NXDOMAIN for a Ziti name beats the tunneler\'s answer', async (t) => {
    const rates: string[] = []
    for (const mode of ['tun', 'tproxy'] as const) {
      for (const family of ['4', 'unspec'] as const) {
        const r = await node.exec(pods[mode], 'app', ['/usr/local/bin/resolve-musl', ZITI_NAME, family, String(RACE_RUNS)], 60)
        const runs = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Lookup)
        t.equal(runs.length, RACE_RUNS, `${mode} ${family}: ${RACE_RUNS} lookups`)
        const want = mode === 'tun' ? tunAddr : TPROXY_ZITI_ADDR
        const lost = runs.filter((x) => x.rc !== 0)
        t.ok(runs.every((x) => (x.rc === 0 && x.addresses.join() === want) || x.error === 'EAI_NONAME'), `${mode} ${family}: every answer is the tunneler's address or the cluster DNS's NXDOMAIN, never a wrong address`)
        t.ok(runs.every((x) => x.ms < STALL_MS), `${mode} ${family}: no lookup stalled`)
        rates.push(`${mode} AF_${family === '4' ? 'INET' : 'UNSPEC'}: ${lost.length}/${runs.length} EAI_NONAME`)
      }
    }
    t.comment(`musl ${ZITI_NAME} lost to the cluster DNS's NXDOMAIN: ${rates.join('; ')}`)
  })

  await t.test('the tunneler as the only nameserver, forwarding the rest: musl gets every answer right', async (t) => {
    const conf = (await node.exec(fwdPod, 'ziti-tunnel', ['cat', '/etc/resolv.conf'])).stdout
    t.same(conf.split('\n').filter((l) => l.startsWith('nameserver ')), ['nameserver 100.64.0.2'], 'one nameserver: the tunneler')
    t.match(node.kubelet.logs(fwdPod, 'ziti-tunnel'), new RegExp(`DNS upstream\\[\\d\\] is set to ${infra.ip.replace(/\./g, '\\.')}:53`), 'the tunneler forwards to the cluster DNS (ziti_dns.c ziti_dns_set_upstream)')
    const counts: string[] = []
    const addr = (await resolve(node, fwdPod, 'glibc', ZITI_NAME, '4'))[0]!.addresses[0] ?? ''
    t.match(addr, /^100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\.\d+\.\d+$/, `the tunneler answers ${ZITI_NAME} (${addr})`)
    for (const libc of LIBCS) {
      for (const family of ['4', 'unspec'] as const) {
        const r = await node.exec(fwdPod, 'app', [`/usr/local/bin/resolve-${libc}`, ZITI_NAME, family, String(RACE_RUNS)], 60)
        const runs = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Lookup)
        t.same(runs.map(show), Array(RACE_RUNS).fill(addr), `${libc} ${family}: ${addr} in all ${RACE_RUNS} lookups`)
        const ms = runs.map((x) => x.ms).sort((a, b) => a - b)
        t.ok(ms.at(-1)! < STALL_MS, `${libc} ${family}: slowest ${ms.at(-1)!.toFixed(1)} ms`)
        counts.push(`${libc} AF_${family === '4' ? 'INET' : 'UNSPEC'} median ${ms[RACE_RUNS >> 1]!.toFixed(2)} ms, max ${ms.at(-1)!.toFixed(2)} ms`)
      }
      for (const family of FAMILIES) {
        const runs = await resolve(node, fwdPod, libc, OTHER_NAME, family)
        const want = 'addresses' in other[family] ? sorted((other[family] as { addresses: string[] }).addresses).join(' ') : ''
        t.same(runs.map((x) => sorted(x.addresses).join(' ')), Array(RUNS).fill(want), `${libc} ${OTHER_NAME} ${family}: forwarded to the cluster DNS, ${want}`)
        t.ok(runs.every((x) => x.ms < STALL_MS), `${libc} ${OTHER_NAME} ${family}: no stall`)
      }
    }
    t.comment(`forwarding tunneler, ${ZITI_NAME} x${RACE_RUNS}: ${counts.join('; ')}`)
  })
})
