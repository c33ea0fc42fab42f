// The attach shim (deploy/shim/ziti-tun-attach.c) with upstream's own ziti-edge-tunnel v1.18.2
// (built from ../shared/third-party/ziti-edge-tunnel by e2e/node/build-ziti-edge-tunnel.sh),
// run as uid 2171 with no capability at all (setpriv clears every set, the bounding set too), in
// a netns where the device was made the way the CNI makes it, against the fake controller and
// the edge-router stand-in (reached over a veth). /dev/net/tun is the private node the device
// plugin hands out (c 10:200, 0600, the sidecar's), bind-mounted in a private mount namespace,
// as is a resolv.conf naming the tunneler's resolver.
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { tunCommands } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { zitiEdgeTunnel } from './lib/test-images.ts'
import { createVethNetns, must, removeVethNetns, type VethNetns } from './lib/veth-netns.ts'
import { FakeZitiController } from './standins/ziti-controller.ts'
import { FakeEdgeRouter } from './standins/ziti-router.ts'

const REPO = new URL('../../', import.meta.url).pathname
const APP = join(REPO, 'e2e/node/standins/app-client.ts')
const UID = 2171

interface Run { code: number | null; signal: NodeJS.Signals | null; out: string }

t.test('upstream ziti-edge-tunnel on a pre-provisioned device, unprivileged, with the attach shim', rootOnly(['ip', 'gcc', 'setpriv', 'unshare', 'mknod', 'nm']), async (t) => {
  const zet = zitiEdgeTunnel()
  t.match(zet.sources, /ziti-tunnel-sdk-c\b.*v1\.18\.2/, 'the binary is built from upstream v1.18.2 (SOURCES.txt)')
  const dir = mkdtempSync(join(tmpdir(), 'zcni-shim-'))
  const n = process.pid % 10000
  const net: VethNetns = { ns: `zcnishim${process.pid}`, hostIf: `zsh${n}a`, nsIf: `zsh${n}b`, hostIp: `198.18.${n % 250}.1`, nsIp: `198.18.${n % 250}.2` }
  const { ns, hostIp } = net
  const closers: Array<() => Promise<unknown>> = []
  t.teardown(async () => {
    for (const c of closers) await c().catch(() => {})
    removeVethNetns(net)
    rmSync(dir, { recursive: true, force: true })
  })
  const shim = join(dir, 'ziti-tun-attach.so')
  must('gcc', ['-shared', '-fPIC', '-O2', '-Wall', '-Werror', '-o', shim, join(REPO, 'deploy/shim/ziti-tun-attach.c'), '-ldl'])
  t.match(spawnSync('ldd', [zet.binary], { encoding: 'utf8' }).stdout, /libc\.so\.6/, 'upstream\'s binary is dynamically linked against glibc: LD_PRELOAD applies')

  // The network: a veth to this process's controller and router; the device as the CNI makes it.
  removeVethNetns(net)
  createVethNetns(net)
  const provision = (opts: { up?: boolean; addr?: string; routes?: string[] } = {}) => {
    spawnSync('ip', ['-n', ns, 'link', 'del', 'ziti0'])
    const cmds = tunCommands({ dev: 'ziti0', uid: UID, addr: opts.addr ?? '100.64.0.1/10', routes: opts.routes ?? [] }).filter((c) => opts.up !== false || !c.includes('up'))
    for (const c of cmds) must('ip', ['-n', ns, ...c])
  }

  // The controller, as an operator configured it, and one edge router.
  const ctrl = new FakeZitiController({ host: hostIp })
  await ctrl.listen()
  closers.push(() => ctrl.close())
  const router = new FakeEdgeRouter(ctrl.ca, { apiSessionIdentity: (tok) => ctrl.apiSessionIdentity(tok), dialService: (d, i) => ctrl.clientApi.dialService(d, i) }, hostIp)
  ctrl.clientApi.addRouter('er-shim', await router.listen())
  closers.push(() => router.close())
  const svc = (name: string, intercept: object) => {
    const s = ctrl.addService(name, ['shim'], [ctrl.addConfig(`${name}-intercept`, 'intercept.v1', intercept as Record<string, unknown>)])
    s.encryptionRequired = false
    return s
  }
  svc('postgres', { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })
  svc('logs', { protocols: ['udp'], addresses: ['logs.ziti'], portRanges: [{ low: 514, high: 514 }] })
  svc('billing-api', { protocols: ['tcp'], addresses: ['10.99.0.7'], portRanges: [{ low: 443, high: 443 }] })
  const me = ctrl.addCertIdentity('tun-shim-pod', [])
  me.identity.roleAttributes.push('shim')
  ctrl.addPolicy('shim-dials', 'Dial', ['#shim'], ['#shim'])

  // The sidecar's files: its identity in a dir it owns (the pod's emptyDir), the device node.
  const home = join(dir, 'identity')
  mkdirSync(home)
  chownSync(home, UID, UID)
  const idFile = join(home, 'ziti-cni.json')
  writeFileSync(idFile, JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${me.cert}`, key: `pem:${me.key}`, ca: `pem:${ctrl.ca.certPem}` } }))
  chownSync(idFile, UID, UID)
  const node = join(dir, 'net-tun')
  must('mknod', ['-m', '0600', node, 'c', '10', '200'])
  chownSync(node, UID, UID)
  const openNode = join(dir, 'net-tun-0666')
  must('mknod', ['-m', '0666', openNode, 'c', '10', '200'])
  const resolv = join(dir, 'resolv.conf')
  writeFileSync(resolv, 'nameserver 100.64.0.2\noptions attempts:1 timeout:2\n')
  spawnSync('chmod', ['755', dir])

  // argv only: unshare runs the mounts, then exec's setpriv (no shell takes any input of ours)
  const inNs = (mounts: Array<[string, string]>, argv: string[]) => ['netns', 'exec', ns, 'unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c',
    'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; shift; exec "$@"', 'sh', ...mounts.flat(), '--', ...argv]
  const tunneler = (opts: { uid?: number; shim?: boolean; node?: string; range?: string } = {}) => {
    const uid = String(opts.uid ?? UID)
    const argv = ['setpriv', '--reuid', uid, '--regid', uid, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs',
      'env', `HOME=${home}`, ...(opts.shim !== false ? [`LD_PRELOAD=${shim}`, 'ZITI_TUN_DEV=ziti0'] : []),
      zet.binary, 'run', '--identity', idFile, '--dns-ip-range', opts.range ?? '100.64.0.1/10', '--verbose', process.env.ZCNI_ZET_VERBOSE ?? '3']
    const p = spawn('ip', inNs([[opts.node ?? node, '/dev/net/tun'], [resolv, '/etc/resolv.conf']], argv), { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    p.stdout.on('data', (d) => { out += d })
    p.stderr.on('data', (d) => { out += d })
    const exited = new Promise<Run>((r) => p.on('exit', (code, signal) => r({ code, signal, out })))
    closers.push(async () => { p.kill('SIGKILL'); await exited })
    return {
      output: () => out,
      exited,
      /** Resolves once `re` is in the log (or the process ended). */
      until: async (re: RegExp, ms = 20_000) => {
        const deadline = Date.now() + ms
        while (!re.test(out) && p.exitCode === null && p.signalCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
        return re.test(out)
      },
      /** The kubelet's stop: SIGTERM, then SIGKILL after the grace period. */
      stop: async (graceMs: number) => {
        p.kill('SIGTERM')
        const timer = setTimeout(() => p.kill('SIGKILL'), graceMs)
        const r = await exited
        clearTimeout(timer)
        return r
      },
    }
  }
  // Asynchronous: the controller and the router answer from this process's event loop. A clean
  // environment: tap's process tracking would follow the app into its unwritable state dir.
  const app = async (args: string[]) => {
    const p = spawn('ip', inNs([[resolv, '/etc/resolv.conf']], ['setpriv', '--reuid', '65534', '--regid', '65534', '--clear-groups', 'env', '-i', 'PATH=/usr/bin:/bin', process.execPath, APP, ...args]), { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    p.stdout.on('data', (d) => { out += d })
    p.stderr.on('data', (d) => { out += d })
    const code = await new Promise<number | null>((r) => p.on('exit', r))
    try { return JSON.parse(out.trim().split('\n').at(-1)!) as { ok: boolean; answers?: string[]; reply?: string; error?: string } } catch { return { ok: false, error: `no JSON (exit ${code}): ${out}` } }
  }
  const ready = /starting intercepting for service\[billing-api\][\s\S]*route updates\[\d+\]/

  await t.test('without the shim: upstream stops at TUNSETIFF "ziti%d"', async (t) => {
    provision()
    const run = tunneler({ shim: false })
    const r = await Promise.race([run.exited, new Promise<Run>((res) => setTimeout(() => res({ code: null, signal: null, out: run.output() }), 20_000))])
    t.equal(r.code, 1, 'it exits 1 by itself')
    t.match(r.out, /failed to open tun device:Operation not permitted/, 'TUNSETIFF with the "ziti%d" template needs CAP_NET_ADMIN (tun.c:433)')
  })

  await t.test('with the shim: it attaches, answers DNS, and carries TCP and UDP to the router', async (t) => {
    provision({ routes: ['10.99.0.0/16'] })
    const run = tunneler()
    t.ok(await run.until(ready), 'services intercepted and routes committed')
    const log = run.output()
    t.match(log, /ziti-tun-attach: TUNSETIFF "ziti%d": attaching to the pre-provisioned ziti0/)
    t.notMatch(log, /failed to set interface address|failed to set tun up/, 'SIOCSIFADDR and SIOCSIFFLAGS: already as asked')
    t.match(log, /route add 100\.64\.0\.0\/10 dev ziti0: already routed into ziti0 by the CNI; not run/, 'tun.c:500: the DNS block is the device\'s own network')
    t.match(log, /route add 10\.99\.0\.7\/32 dev ziti0: already routed into ziti0 by the CNI/, 'an intercept address inside a CNI route')
    t.notMatch(log, /cmd\{ip [^}]*\} failed/, 'every ip command it ran "succeeded", because the kernel already does what it asked')
    t.match(log, /cannot open \/etc\/resolv\.conf: Permission denied/, 'its resolv.conf edit fails (EACCES) and it carries on (resolvers.c:523)')
    t.notMatch(log, /on_crash|Segmentation fault/)

    const name = await app(['resolve', 'pg.ziti'])
    t.ok(name.ok && name.answers?.length === 1 && /^100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\./.test(name.answers[0]!), `pg.ziti resolved by the tunneler on 100.64.0.2 to an address of its range (${JSON.stringify(name)})`)
    const refused = await app(['resolve', 'www.example.org'])
    t.notOk(refused.ok, `a name it does not serve gets no answer from it (${refused.error})`)
    const pg = await app(['tcp', 'pg.ziti', '5432'])
    t.equal(pg.reply, 'ziti-service=postgres caller=tun-shim-pod', `TCP through the device to the router (${pg.error ?? 'ok'})`)
    const logs = await app(['udp', 'logs.ziti', '514'])
    t.equal(logs.reply, 'ziti-service=logs got=ping', `UDP, reply to a connected socket (${logs.error ?? 'ok'})`)
    const api = await app(['tcp', '10.99.0.7', '443'])
    t.equal(api.reply, 'ziti-service=billing-api caller=tun-shim-pod', `an intercept address outside the DNS range, routed by the CNI (${api.error ?? 'ok'})`)
    const notAService = await app(['tcp', '100.64.0.250', '80'])
    t.notOk(notAService.ok, `an address that is no service is refused inside the device (${notAService.error})`)
    t.same(router.events.filter((e) => e.kind === 'hello').map((e) => e.identity), ['tun-shim-pod'], 'the router saw one hello, with the pod identity\'s API session')
    t.same(router.events.filter((e) => e.kind === 'connect').map((e) => e.service), ['postgres', 'logs', 'billing-api'], 'one Connect per dial, each with a Dial session of that service')
    t.same(router.events.filter((e) => e.kind === 'data').map((e) => e.bytes), ['ping'], 'the datagram\'s bytes reached the router as they were sent')

    // The kubelet's stop: one SIGTERM, SIGKILL after the grace period.
    const t0 = Date.now()
    const r = await run.stop(10_000)
    t.equal(r.code, 1, `one SIGTERM: it exits by itself with status 1 (on_exit_signal, ziti-edge-tunnel.c:1120-1126) in ${Date.now() - t0} ms`)
    t.equal(r.signal, null, 'not killed')
    t.equal((r.out.match(/received signal: Terminated/g) ?? []).length, 1)
  })

  await t.test('a route the CNI did not make is not reported as made', async (t) => {
    provision()
    const run = tunneler()
    t.ok(await run.until(ready), 'services intercepted and routes committed')
    const log = run.output()
    t.match(log, /route add 10\.99\.0\.7\/32 dev ziti0: NOT routed into ziti0/, 'the shim says what is missing')
    t.match(log, /cmd\{ip -force -batch \S+\} failed: 256\//, 'the tunneler is told its route batch failed (exit status 1), and logs it (utils.c:29-31)')
    const api = await app(['tcp', '10.99.0.7', '443'])
    t.notOk(api.ok, `10.99.0.7 is not intercepted, and the app sees it fail (${api.error})`)
    await run.stop(10_000)
  })

  await t.test('the shim fakes nothing else', async (t) => {
    const exported = must('nm', ['-D', '--defined-only', shim]).split('\n').filter((l) => / T /.test(l)).map((l) => l.split(' ').at(-1)).sort()
    t.same(exported, ['ioctl', 'system'], 'it defines ioctl() and system() only: no signal, exit or capability hook (v1.18.2 calls neither capset nor SO_MARK)')

    provision()
    const wrongAddr = tunneler({ range: '100.64.0.9/10' })
    const w = await wrongAddr.exited
    t.equal(w.code, 1, 'an address the CNI did not configure is still refused')
    t.match(w.out, /the device is not already as asked/)
    t.match(w.out, /failed to set interface address: Operation not permitted/)

    provision({ up: false })
    const down = await tunneler().exited
    t.equal(down.code, 1, 'a device the CNI did not bring up stays down')
    t.match(down.out, /failed to set tun up\/running: Operation not permitted/)

    provision()
    const noNode = await tunneler({ uid: 1000 }).exited
    t.match(noNode.out, /open \/dev\/net\/tun failed/, 'another uid cannot open the private node (0600, the sidecar\'s)')
    const otherUid = await tunneler({ uid: 1000, node: openNode }).exited
    t.equal(otherUid.code, 1, 'another uid, even given an open device node and the shim, cannot attach')
    t.match(otherUid.out, /failed to open tun device:Operation not permitted/, 'the tun owner check holds')
  })
})
