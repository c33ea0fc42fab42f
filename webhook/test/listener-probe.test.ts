// The sidecar's startup/liveness probe script, run by bash against the real kernel's
// /proc/net/{tcp,udp}{,6} in a private network namespace, with listeners owned by real uids
// (setpriv): a port held by the sidecar's uid passes; a port missing, or held (also) by
// another uid, fails with a message naming it. Root only (netns, setuid); skipped elsewhere
// outside CI, failing in CI.
import t from 'tap'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { LISTENER_PROBE } from '../src/inject/sidecar.ts'

const root = process.getuid?.() === 0
const opts = { skip: !root && process.env.CI !== 'true' ? 'needs root (network namespace, listeners as other uids)' : false } as const
const SIDECAR = 2171
const APP = 1000

t.test('listener probe on real /proc data', opts, async (t) => {
  t.ok(root, 'runs as root (CI)')
  const holder = spawn('unshare', ['--net', '--', 'sleep', '300'], { stdio: 'ignore' })
  t.teardown(() => { holder.kill('SIGKILL') })
  const netns = `/proc/${holder.pid}/ns/net`
  await new Promise((r) => setTimeout(r, 200))
  const inNs = (...argv: string[]) => ['nsenter', `--net=${netns}`, ...argv]
  t.equal(spawnSync(inNs('ip', 'link', 'set', 'lo', 'up')[0]!, inNs('ip', 'link', 'set', 'lo', 'up').slice(1)).status, 0, 'lo up in the private netns')

  const children: ChildProcess[] = []
  t.teardown(() => { for (const c of children) c.kill('SIGKILL') })
  /** A listener as `uid`, in the netns; resolves once it is bound. */
  async function listen(uid: number, proto: 'tcp' | 'udp', host: string, port: number): Promise<ChildProcess> {
    const code = proto === 'tcp'
      ? `require('net').createServer().listen({ host: ${JSON.stringify(host)}, port: ${port}, ipv6Only: ${host.includes(':')} }, () => console.log('ready'))`
      : `const s = require('dgram').createSocket({ type: ${JSON.stringify(host.includes(':') ? 'udp6' : 'udp4')}, ipv6Only: ${host.includes(':')} }); s.bind(${port}, ${JSON.stringify(host)}, () => console.log('ready'))`
    const argv = inNs('setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', code)
    const c = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] })
    children.push(c)
    await new Promise<void>((resolve, reject) => {
      c.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve() })
      c.on('exit', (code) => reject(new Error(`listener ${proto} ${host}:${port} as ${uid} exited ${code}`)))
    })
    return c
  }
  const probe = (uid: number, ...targets: string[]) => {
    const argv = inNs('bash', '-c', LISTENER_PROBE, 'ziti-cni-probe', String(uid), ...targets)
    const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' })
    return { code: r.status, out: r.stdout.trim() }
  }

  t.same(probe(SIDECAR, 'tcp:15100'), { code: 1, out: 'ziti-tunnel is not listening on: tcp/15100' }, 'nothing bound')
  const sidecar = await listen(SIDECAR, 'tcp', '0.0.0.0', 15100)
  t.same(probe(SIDECAR, 'tcp:15100'), { code: 0, out: '' }, 'the sidecar\'s own listener passes')
  t.same(probe(SIDECAR, 'tcp:15100', 'tcp:15101'), { code: 1, out: 'ziti-tunnel is not listening on: tcp/15101' }, 'every listener is needed')

  // The squat that works against a running sidecar: a v6-only socket on the same port does
  // not conflict with the sidecar's IPv4 wildcard, and the app's resolver may prefer ::1.
  await listen(APP, 'tcp', '::1', 15100)
  t.same(probe(SIDECAR, 'tcp:15100'), { code: 1, out: `not the ziti-tunnel sidecar (uid ${SIDECAR}) but another uid holds: tcp/15100(uid ${APP})` }, 'a second owner on the port fails loudly')

  // After a sidecar restart the app holds the port alone.
  sidecar.kill('SIGKILL')
  await new Promise((r) => setTimeout(r, 200))
  await listen(APP, 'tcp', '127.0.0.1', 15102)
  t.same(probe(SIDECAR, 'tcp:15102'), { code: 1, out: `not the ziti-tunnel sidecar (uid ${SIDECAR}) but another uid holds: tcp/15102(uid ${APP})` }, 'a port taken by the app')

  await listen(SIDECAR, 'udp', '0.0.0.0', 15053)
  t.same(probe(SIDECAR, 'udp:15053'), { code: 0, out: '' }, 'UDP: bound by the sidecar')
  await listen(APP, 'udp', '::1', 15053)
  t.same(probe(SIDECAR, 'udp:15053'), { code: 1, out: `not the ziti-tunnel sidecar (uid ${SIDECAR}) but another uid holds: udp/15053(uid ${APP})` }, 'UDP: a second owner')
  t.same(probe(APP, 'udp:15053').code, 1, 'and the same socket set fails for the app\'s uid too: the check reads owners, not guesses')
})
