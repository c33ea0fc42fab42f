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
//   tun     upstream's ziti-edge-tunnel v1.18.2 answers at 100.64.0.2 inside the device, the
//           pod's only nameserver (tun.dns: forward), and relays other names to the cluster DNS
//           (--dns-upstream; ziti_dns.c query_upstream)
//   tproxy  the contract stand-in answers at 100.64.0.2 through the catch-all, the only
//           nameserver too, and relays the rest to $ZITI_CNI_DNS_UPSTREAM (contract item 5)
// The cluster DNS stand-in forwards other names "upstream", which knows no `.ziti` (NXDOMAIN),
// and answers www.example.org with one A and one AAAA record, big.example.org with 40 A records
// (cut to 512 bytes with TC over UDP, all of them over TCP). Two more pods run the old layout
// (tun.dns/tproxy.dns: parallel: the tunneler, then the cluster DNS), where musl races the two
// nameservers: counted and printed, the figures in README "Compatibility".
// DNS_LIBC_PATH=parallel runs the main pods with the old layout too: the zero-failure
// assertions then fail (that is the race this test exists for).
import t from 'tap'
import type { V1Pod } from '@kubernetes/client-node'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, sweepLeftovers, type PodManifest } from './lib/node.ts'
import { appPod, infraPod, STANDINS } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import type { RunningPod } from './lib/kubelet.ts'
import { startWebhook } from './lib/webhook.ts'
import { startZitiFabric } from './lib/tun-world.ts'

const RUNS = 5
const RACE_RUNS = 50
/** musl retries a query after timeout/attempts = 2.5 s (res_msend.c), glibc after 5 s: a lookup
 * that took this long waited for an answer that never came. */
const STALL_MS = 2500
const ZITI_NAME = 'pg.ziti'
const OTHER_NAME = 'www.example.org'
const OTHER_ADDRS = ['192.0.2.53', '2001:db8::53']
const BIG_NAME = 'big.example.org'
const BIG_RECORDS = 40 // dns-server.ts BIG_RECORDS
const BIG_UDP_RECORDS = 29 // as many 16-byte A records as fit 512 bytes after a 33-byte header and question
const HUGE_NAME = 'huge.example.org'
const HUGE_RECORDS = 70 // dns-server.ts HUGE_RECORDS: 1154 bytes, over the tunneler's 1024-byte relay buffer
const PATH = (process.env.DNS_LIBC_PATH ?? 'forward') as 'forward' | 'parallel'
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
  webhook = await startWebhook({ validator: { image: IMAGES.validator }, tun: { image: IMAGES.tun, dns: PATH }, tproxy: { image: IMAGES.tproxy, args: [], datapath: 'ebpf', clusterDns: [infra.ip], dns: PATH } })
  node.api.admission = webhook.admission

  // tun: the controller and an edge router on the gateway (as in tun.test.ts), one dialable service.
  const { ctrl } = await startZitiFabric(node.gateway, closers)
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

  // The old layout, for the figures: the tunneler, then the cluster DNS.
  const parallel = await startWebhook({ validator: { image: IMAGES.validator }, tun: { image: IMAGES.tun, dns: 'parallel' }, tproxy: { image: IMAGES.tproxy, args: [], datapath: 'ebpf', clusterDns: [infra.ip], dns: 'parallel' } })
  closers.push(() => parallel.close())
  node.api.admission = parallel.admission
  const par = ctrl.addCertIdentity('dnspar-pod', [])
  par.identity.roleAttributes.push('dnsapp')
  await node.createSecret('apps', 'par-identity', { 'identity.json': JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${par.cert}`, key: `pem:${par.key}`, ca: `pem:${ctrl.ca.certPem}` } }) })
  const parPods = {
    tun: await node.runPod(await node.createPod(withClients(appPod('dns-tun-par', 'apps', { 'cni.openziti.io/identity-secret': 'par-identity', 'cni.openziti.io/mode': 'tun', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10' })))),
    tproxy: await node.runPod(await node.createPod(withClients(appPod('dns-tproxy-par', 'apps', { 'cni.openziti.io/identity-secret': 'standin-identity', 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'ebpf' })))),
  }
  node.api.admission = webhook.admission

  const alias = proxyPod.spec?.hostAliases?.find((a) => a.hostnames?.includes(ZITI_NAME))?.ip
  t.ok(alias, `proxy: the webhook maps ${ZITI_NAME} to an alias address (${alias})`)

  await t.test('each pod has the resolv.conf a kubelet writes for it', async (t) => {
    const search = 'search apps.svc.cluster.local svc.cluster.local cluster.local'
    const ours = PATH === 'forward' ? ['100.64.0.2'] : ['100.64.0.2', infra.ip]
    for (const [mode, servers, rp] of [['proxy', [infra.ip], pods.proxy], ['tun', ours, pods.tun], ['tproxy', ours, pods.tproxy], ['tun (parallel)', ['100.64.0.2', infra.ip], parPods.tun], ['tproxy (parallel)', ['100.64.0.2', infra.ip], parPods.tproxy]] as const) {
      // Every container of the pod mounts the sandbox's resolv.conf; the sidecar's image has cat.
      const text = (await node.exec(rp, 'ziti-tunnel', ['cat', '/etc/resolv.conf'])).stdout
      t.same(text.split('\n').filter((l) => l.startsWith('nameserver ')).map((l) => l.slice(11).trim()), servers, `${mode}: nameservers ${servers.join(', ')}`)
      t.match(text, new RegExp(`^${search}$`, 'm'), `${mode}: the pod's search path`)
      t.match(text, servers.length === 1 && mode !== 'proxy' ? /^options ndots:5 edns0$/m : /^options ndots:5$/m, `${mode}: ndots:5${servers.length === 1 && mode !== 'proxy' ? ' edns0' : ''}`)
    }
    if (PATH === 'forward') {
      t.match(node.kubelet.logs(pods.tun, 'ziti-tunnel'), new RegExp(`DNS upstream\\[\\d\\] is set to ${infra.ip.replace(/\./g, '\\.')}:53`), 'tun: the tunneler forwards to the cluster DNS (ziti_dns.c ziti_dns_set_upstream)')
      t.match(node.kubelet.logs(pods.tproxy, 'ziti-tunnel'), `forwarding to ${infra.ip}`, 'tproxy: the stand-in forwards to the cluster DNS')
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
  // parallel (DNS_LIBC_PATH=parallel): musl asks both nameservers at once and keeps the first
  // acceptable answer to each query (res_msend.c), the cluster DNS's NXDOMAIN for a Ziti name
  // included: these lookups then fail now and then, and the test says so.
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
            t.same(results, Array(RUNS).fill(wanted), `${what}: ${wanted} every time (got ${[...new Set(got)].join(' | ')})`)
            const ms = runs.map((r) => r.ms).sort((a, b) => a - b)
            t.ok(ms.at(-1)! < STALL_MS, `${what}: slowest of ${RUNS} took ${ms.at(-1)!.toFixed(1)} ms (< ${STALL_MS} ms)`)
            table.push(`| ${mode} | ${libc} | ${name} | ${family} | ${[...new Set(got)].join(' / ')} | ${ms[Math.floor(RUNS / 2)]!.toFixed(2)} | ${ms.at(-1)!.toFixed(2)} |`)
          }
        }
      }
    })
  }
  t.comment(['getaddrinfo() latency per lookup (median and max of ' + RUNS + ', ms)', '| mode | libc | name | family | result | median | max |', '| --- | --- | --- | --- | --- | --- | --- |', ...table].join('\n'))

  const many = async (rp: RunningPod, libc: Libc, name: string, family: Family, n: number) => {
    const r = await node.exec(rp, 'app', [`/usr/local/bin/resolve-${libc}`, name, family, String(n)], 120)
    return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Lookup)
  }
  const fam = (f: Family) => `AF_${f === '4' ? 'INET' : f === '6' ? 'INET6' : 'UNSPEC'}`

  await t.test(`the Ziti name ${RACE_RUNS} times per libc and family: every lookup right (dns: ${PATH})`, async (t) => {
    const counts: string[] = []
    for (const mode of ['tun', 'tproxy'] as const) {
      const want = mode === 'tun' ? tunAddr : TPROXY_ZITI_ADDR
      for (const libc of LIBCS) {
        for (const family of ['4', 'unspec'] as const) {
          const runs = await many(pods[mode], libc, ZITI_NAME, family, RACE_RUNS)
          t.equal(runs.length, RACE_RUNS, `${mode} ${libc} ${fam(family)}: ${RACE_RUNS} lookups`)
          const lost = runs.filter((x) => show(x) !== want)
          t.equal(lost.length, 0, `${mode} ${libc} ${fam(family)}: ${want} in all ${RACE_RUNS} (wrong: ${[...new Set(lost.map(show))].join(' | ') || 'none'})`)
          const ms = runs.map((x) => x.ms).sort((a, b) => a - b)
          t.ok(ms.at(-1)! < STALL_MS, `${mode} ${libc} ${fam(family)}: slowest ${ms.at(-1)!.toFixed(1)} ms`)
          counts.push(`${mode} ${libc} ${fam(family)}: ${lost.length}/${runs.length} lost, median ${ms[RACE_RUNS >> 1]!.toFixed(2)} ms, max ${ms.at(-1)!.toFixed(2)} ms`)
        }
      }
    }
    t.comment(`dns: ${PATH}, ${ZITI_NAME} x${RACE_RUNS}: ${counts.join('; ')}`)
  })

  await t.test('dns: parallel (the old layout): how often the cluster DNS\'s NXDOMAIN for a Ziti name beats the tunneler under musl', async (t) => {
    const rates: string[] = []
    const parTunAddr = (await resolve(node, parPods.tun, 'glibc', ZITI_NAME, '4'))[0]!.addresses[0] ?? ''
    for (const mode of ['tun', 'tproxy'] as const) {
      const want = mode === 'tun' ? parTunAddr : TPROXY_ZITI_ADDR
      for (const family of ['4', 'unspec'] as const) {
        const runs = await many(parPods[mode], 'musl', ZITI_NAME, family, RACE_RUNS)
        t.equal(runs.length, RACE_RUNS, `${mode} ${family}: ${RACE_RUNS} lookups`)
        const lost = runs.filter((x) => x.rc !== 0)
        t.ok(runs.every((x) => (x.rc === 0 && x.addresses.join() === want) || x.error === 'EAI_NONAME'), `${mode} ${fam(family)}: every answer is the tunneler's address or the cluster DNS's NXDOMAIN, never a wrong address`)
        t.ok(runs.every((x) => x.ms < STALL_MS), `${mode} ${fam(family)}: no lookup stalled`)
        rates.push(`${mode} ${fam(family)}: ${lost.length}/${runs.length} EAI_NONAME`)
      }
    }
    t.comment(`dns: parallel, musl ${ZITI_NAME} lost to the cluster DNS's NXDOMAIN: ${rates.join('; ')}`)
  })

  await t.test(`large answers: ${BIG_NAME} (${BIG_RECORDS} A records, 673 bytes) and ${HUGE_NAME} (${HUGE_RECORDS}, 1154 bytes)`, async (t) => {
    if (PATH === 'forward') {
      const tcp = await node.exec(pods.tun, 'ziti-tunnel', ['bash', '-c', 'exec 3<>/dev/tcp/100.64.0.2/53 && echo connected'])
      t.match(tcp.stderr, /Connection refused/, `tun: TCP to the tunneler's 53 is refused (ziti_dns.c:190 intercepts udp only) (${tcp.stderr.trim()})`)
    }
    // musl 1.2.3 sends no EDNS0 and has no TCP fallback (res_msend.c: UDP only until 1.2.4):
    // it keeps the records that fit 512 bytes, everywhere. glibc: parallel, it asks the cluster
    // DNS after the tunneler's REFUSED and retries the TC answer over TCP there: everything.
    // forward, with edns0 it asks for 1200 bytes over UDP: the tproxy stand-in relays that (and
    // TCP); ziti-edge-tunnel relays at most 1024 bytes (dns_upstream_alloc), so 1154 bytes
    // arrive cut, which glibc reads as no data.
    const lines: string[] = []
    for (const [what, rp, forward] of [[`tun (${PATH})`, pods.tun, PATH === 'forward'], [`tproxy (${PATH})`, pods.tproxy, PATH === 'forward'], ['tun (parallel)', parPods.tun, false], ['tproxy (parallel)', parPods.tproxy, false]] as const) {
      for (const [name, records] of [[BIG_NAME, BIG_RECORDS], [HUGE_NAME, HUGE_RECORDS]] as const) {
        for (const libc of LIBCS) {
          const runs = await resolve(node, rp, libc, name, '4')
          const ms = runs.map((x) => x.ms).sort((a, b) => a - b)
          const got = [...new Set(runs.map((x) => (x.rc === 0 ? `${x.addresses.length} addresses` : x.error)))].join(' | ')
          lines.push(`${what} ${libc} ${name}: ${got}, median ${ms[RUNS >> 1]!.toFixed(1)} ms, max ${ms.at(-1)!.toFixed(1)} ms`)
          const want = libc === 'musl' ? `${BIG_UDP_RECORDS} addresses` : forward && rp === pods.tun && name === HUGE_NAME ? 'EAI_NODATA' : `${records} addresses`
          t.equal(got, want, `${what} ${libc} ${name}: ${want} every time`)
          t.ok(runs.every((x) => x.ms < STALL_MS && x.addresses.every((a) => a.startsWith('198.51.100.'))), `${what} ${libc} ${name}: only the name's addresses, no stall`)
        }
      }
    }
    t.comment(`large answers, AF_INET x${RUNS}: ${lines.join('; ')}`)
  })
})
