// The attach shim (deploy/shim/ziti-tun-attach.c) against a program that makes upstream
// tun_open's calls in upstream's order (standins/ziti-edge-tunnel.c `tun-open`, citing
// ziti-tunnel-sdk-c tun.c:410-503), as a non-root uid with no capability at all (setpriv
// clears every set, including the bounding set), in a netns where the device was made the way
// the CNI makes it. /dev/net/tun is the private node the device plugin hands out (bind-mounted
// in a private mount namespace).
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { chownSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { tunCommands } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'

const REPO = new URL('../../', import.meta.url).pathname

t.test('ziti-tun-attach makes upstream tun_open work on a pre-provisioned device', rootOnly(['ip', 'gcc', 'setpriv', 'unshare', 'mknod']), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-shim-'))
  const ns = `zcnishim${process.pid}`
  t.teardown(() => { spawnSync('ip', ['netns', 'del', ns]); rmSync(dir, { recursive: true, force: true }) })
  const gcc = (args: string[]) => { const r = spawnSync('gcc', args, { encoding: 'utf8' }); if (r.status !== 0) throw new Error(r.stderr) }
  gcc(['-O2', '-Wall', '-Werror', '-o', join(dir, 'ziti-edge-tunnel'), join(REPO, 'e2e/node/standins/ziti-edge-tunnel.c')])
  gcc(['-shared', '-fPIC', '-O2', '-Wall', '-Werror', '-o', join(dir, 'ziti-tun-attach.so'), join(REPO, 'deploy/shim/ziti-tun-attach.c'), '-ldl'])
  const ldd = spawnSync('ldd', [join(dir, 'ziti-edge-tunnel')], { encoding: 'utf8' }).stdout
  t.match(ldd, /libc\.so\.6/, 'the stand-in is dynamically linked against glibc, as the release binary is')
  const node = join(dir, 'net-tun')
  spawnSync('mknod', ['-m', '0600', node, 'c', '10', '200'])
  chownSync(node, 2171, 2171)
  spawnSync('chmod', ['755', dir])

  const provision = (up = true) => {
    spawnSync('ip', ['netns', 'del', ns])
    spawnSync('ip', ['netns', 'add', ns])
    const cmds = tunCommands({ dev: 'ziti0', uid: 2171, addr: '100.64.0.1/10', routes: [] }).filter((c) => up || !c.includes('up'))
    for (const c of cmds) { const r = spawnSync('ip', ['-n', ns, ...c], { encoding: 'utf8' }); if (r.status !== 0) throw new Error(r.stderr) }
  }
  // The same clone device, open to everyone: "even given the device".
  const openNode = join(dir, 'net-tun-0666')
  spawnSync('mknod', ['-m', '0666', openNode, 'c', '10', '200'])
  const run = (opts: { uid?: number; shim: boolean; args?: string[]; node?: string }) => {
    const uid = String(opts.uid ?? 2171)
    const inner = ['setpriv', '--reuid', uid, '--regid', uid, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs',
      'env', ...(opts.shim ? [`LD_PRELOAD=${join(dir, 'ziti-tun-attach.so')}`, 'ZITI_TUN_DEV=ziti0'] : []), join(dir, 'ziti-edge-tunnel'), 'tun-open', ...(opts.args ?? [])]
    // argv only: unshare runs mount, then exec's setpriv (no shell)
    const r = spawnSync('ip', ['netns', 'exec', ns, 'unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$0" /dev/net/tun && exec "$@"', opts.node ?? node, ...inner], { encoding: 'utf8' })
    return { code: r.status, out: r.stdout + r.stderr }
  }

  provision()
  const stock = run({ shim: false })
  t.equal(stock.code, 1, 'without the shim: exit 1')
  t.match(stock.out, /failed to open tun device:Operation not permitted/, 'TUNSETIFF with the "ziti%d" template needs CAP_NET_ADMIN (tun.c:433)')

  const shimmed = run({ shim: true })
  t.equal(shimmed.code, 0, `with the shim: the whole of tun_open succeeds (${shimmed.out.trim()})`)
  t.match(shimmed.out, /TUNSETIFF "ziti%d": attaching to the pre-provisioned ziti0/)
  t.match(shimmed.out, /tun device ziti0 attached, mtu 1500, address 100\.64\.0\.1/)
  t.match(shimmed.out, /not running "ip route add 100\.64\.0\.1\/10 dev ziti0"/, 'system("ip ...") is not run (tun.c:500)')
  t.notMatch(shimmed.out, /failed to set interface address|failed to set tun up/, 'SIOCSIFADDR and SIOCSIFFLAGS: already as asked')

  const newer = run({ shim: true, args: ['--newer'] })
  t.equal(newer.code, 0, 'later releases\' capset(CAP_NET_ADMIN) and SO_MARK are tolerated')
  t.match(newer.out, /capset\(CAP_NET_ADMIN\): not held and not needed/)
  t.match(newer.out, /SO_MARK needs CAP_NET_ADMIN/)

  const noNode = run({ uid: 1000, shim: true })
  t.match(noNode.out, /open \/dev\/net\/tun failed: Permission denied/, 'another uid cannot open the private node (0600, the sidecar\'s)')
  const otherUid = run({ uid: 1000, shim: true, node: openNode })
  t.equal(otherUid.code, 1, 'another uid, even given an open device node and the shim, cannot attach')
  t.match(otherUid.out, /failed to open tun device:Operation not permitted/, 'the tun owner check holds')

  const wrongAddr = run({ shim: true, args: ['--dns-ip-range', '100.64.0.9/10'] })
  t.equal(wrongAddr.code, 1, 'an address the CNI did not configure is still refused')
  t.match(wrongAddr.out, /the device is not already as asked/)
  t.match(wrongAddr.out, /failed to set interface address: Operation not permitted/)

  provision(false)
  const down = run({ shim: true })
  t.equal(down.code, 1, 'a device the CNI did not bring up stays down: SIOCSIFFLAGS fails as upstream reports it')
  t.match(down.out, /failed to set tun up\/running: Operation not permitted/)
})
