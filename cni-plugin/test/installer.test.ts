// The installer against temp dirs: atomic writes, the front end and its runtime directory, no
// credential on the node (an older release's kubeconfig deleted), re-insert after the primary
// CNI rewrites its file, upgrade, uninstall (tombstone, converted .conf restored, executable kept).
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync, mkdirSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { pino } from 'pino'
import { Installer, uninstall } from '../src/install/installer.ts'
import { parseSnapshot } from '../src/cni/intent-snapshot.ts'

function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-inst-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const d of ['net.d', 'bin', 'run', 'src/ziti-cni.d']) mkdirSync(join(dir, d), { recursive: true })
  writeFileSync(join(dir, 'src/ziti-cni'), 'front end v1')
  writeFileSync(join(dir, 'src/ziti-cni.d/ld.so'), 'loader', { mode: 0o755 })
  writeFileSync(join(dir, 'src/ziti-cni.d/libc.so.6'), 'libc', { mode: 0o644 })
  const primary = JSON.stringify({ cniVersion: '0.3.1', name: 'kindnet', plugins: [{ type: 'ptp' }, { type: 'portmap' }] })
  writeFileSync(join(dir, 'net.d/10-kindnet.conflist'), primary)
  const reinserts: string[] = []
  const opts = {
    pluginSource: join(dir, 'src/ziti-cni'), cniBinDir: join(dir, 'bin'), cniConfDir: join(dir, 'net.d'),
    pluginKubeconfig: join(dir, 'net.d/ziti-cni.d/ziti-cni.kubeconfig'), snapshot: join(dir, 'run/intents.json'), stateDir: join(dir, 'run/state'), entry: { type: 'ziti-cni' as const, agentSocket: '/var/run/ziti-cni/agent.sock' },
    checkIntervalMs: 60_000, onReinsert: (p: string) => reinserts.push(p),
  }
  const installer = new Installer(opts, pino({ level: 'silent' }))
  return { dir, opts, installer, primary, reinserts }
}

const waitFor = async (cond: () => boolean, ms = 5000) => {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 50))
  }
}

t.test('first install: the front end and its runtime directory, no credential', async (t) => {
  const { dir, opts, installer } = setup()
  // An older release left a kubeconfig with a token that reads every pod in the cluster.
  mkdirSync(dirname(opts.pluginKubeconfig))
  writeFileSync(opts.pluginKubeconfig, '{"users":[{"user":{"token":"cluster-wide"}}]}')
  const state = installer.reconcile('test')
  t.same(state, { status: 'inserted', primary: '10-kindnet.conflist', primaryType: 'ptp' })
  t.equal(readFileSync(join(dir, 'bin/ziti-cni'), 'utf8'), 'front end v1')
  t.equal(statSync(join(dir, 'bin/ziti-cni')).mode & 0o777, 0o755)
  t.same(readdirSync(join(dir, 'bin/ziti-cni.d')), ['agent-socket', 'ld.so', 'libc.so.6'], 'the runtime directory beside it, and where the agent listens')
  t.equal(readFileSync(join(dir, 'bin/ziti-cni.d/agent-socket'), 'utf8'), '/var/run/ziti-cni/agent.sock\n10\n', 'the entry\'s socket and the default timeout, for the front end')
  t.equal(statSync(join(dir, 'bin/ziti-cni.d/ld.so')).mode & 0o777, 0o755, 'the loader is executable')
  t.equal(statSync(join(dir, 'bin/ziti-cni.d/libc.so.6')).mode & 0o777, 0o644, 'libraries are not')
  t.notOk(existsSync(opts.pluginKubeconfig), 'the old credential is deleted from the node')
  t.notMatch(readFileSync(join(dir, 'net.d/10-kindnet.conflist'), 'utf8'), /kubeconfig|token/, 'the conflist names no credential')
  t.same(installer.reconcile('again'), { status: 'ok', primary: '10-kindnet.conflist', primaryType: 'ptp' }, 'idempotent')
  t.same(readdirSync(join(dir, 'bin')), ['ziti-cni', 'ziti-cni.d'], 'no temp files left behind')
})

t.test('a rewritten conflist gets ziti-cni back', async (t) => {
  const { dir, installer, primary, reinserts } = setup()
  installer.start()
  t.teardown(() => installer.stop())
  writeFileSync(join(dir, 'net.d/10-kindnet.conflist'), primary) // the primary CNI rewrites its file
  await waitFor(() => readFileSync(join(dir, 'net.d/10-kindnet.conflist'), 'utf8').includes('ziti-cni'))
  t.same(reinserts, ['ptp'], 'the re-insert names the likely culprit')
})

t.test('upgrade replaces the executable; uninstall leaves a tombstone and the executable', async (t) => {
  const { dir, opts, installer, primary } = setup()
  installer.reconcile('v1')
  // An upgrade is a new agent pod with a new executable in its image.
  writeFileSync(opts.pluginSource, 'front end v2')
  writeFileSync(join(dir, 'src/ziti-cni.d/libc.so.6'), 'libc v2')
  const upgraded = new Installer(opts, pino({ level: 'silent' }))
  upgraded.reconcile('v2')
  t.equal(readFileSync(join(dir, 'bin/ziti-cni'), 'utf8'), 'front end v2')
  t.equal(readFileSync(join(dir, 'bin/ziti-cni.d/libc.so.6'), 'utf8'), 'libc v2', 'the runtime directory is upgraded too')
  // Someone replaces an installed file: the next periodic pass puts ours back.
  writeFileSync(join(dir, 'bin/ziti-cni.d/ld.so'), 'tampered')
  upgraded.reconcile('periodic')
  t.equal(readFileSync(join(dir, 'bin/ziti-cni.d/ld.so'), 'utf8'), 'loader', 'a changed file on the node is noticed without re-hashing every pass')
  mkdirSync(join(opts.stateDir), { recursive: true })
  writeFileSync(join(opts.stateDir, 'c1-eth0.json'), '{}')
  const done = uninstall(opts)
  t.same(done, [`marked ${opts.snapshot} uninstalled`, 'removed ziti-cni from 10-kindnet.conflist', `deleted ${opts.stateDir}`])
  t.notOk(existsSync(opts.stateDir), 'no attachment records left for an agent that will not come back')
  t.same(parseSnapshot(readFileSync(opts.snapshot, 'utf8')), { v: 1, state: 'uninstalled' }, 'the tombstone tells the executable it was uninstalled, not that the agent is down')
  t.equal(statSync(opts.snapshot).mode & 0o777, 0o600)
  t.same(JSON.parse(readFileSync(join(dir, 'net.d/10-kindnet.conflist'), 'utf8')), JSON.parse(primary))
  t.ok(existsSync(join(dir, 'bin/ziti-cni')) && existsSync(join(dir, 'bin/ziti-cni.d/ld.so')), 'the executable stays for DELs of pods a runtime tears down with the config cached at ADD')
  t.same(readdirSync(join(dir, 'net.d')), ['10-kindnet.conflist'], 'nothing of ours left in the conf dir, ziti-cni.d included')
})

t.test('a primary .conf converted at install is restored byte for byte at uninstall', async (t) => {
  const { dir, opts, installer } = setup()
  rmSync(join(dir, 'net.d/10-kindnet.conflist'))
  const original = '{\n  "cniVersion": "0.3.1", "name": "flannel",\n  "type": "flannel", "delegate": {"isDefaultGateway": true}\n}\n'
  writeFileSync(join(dir, 'net.d/10-flannel.conf'), original)
  t.same(installer.reconcile('install'), { status: 'inserted', primary: '10-flannel.conflist', primaryType: 'flannel' })
  t.same(readdirSync(join(dir, 'net.d')).sort(), ['10-flannel.conflist', 'ziti-cni.d'], 'the .conf gave way to a .conflist')
  t.same(uninstall(opts).slice(1), ['restored 10-flannel.conf (replaced 10-flannel.conflist)', `deleted ${join(dir, 'net.d/ziti-cni.d')}`])
  t.same(readdirSync(join(dir, 'net.d')), ['10-flannel.conf'])
  t.equal(readFileSync(join(dir, 'net.d/10-flannel.conf'), 'utf8'), original, 'exactly as the primary wrote it')

  // The primary CNI changed its list meanwhile: its list stays, without us.
  installer.reconcile('reinstall')
  const conflist = join(dir, 'net.d/10-flannel.conflist')
  const list = JSON.parse(readFileSync(conflist, 'utf8'))
  list.plugins.splice(1, 0, { type: 'portmap' })
  writeFileSync(conflist, JSON.stringify(list))
  t.match(uninstall(opts)[1], /removed ziti-cni from 10-flannel.conflist \(changed since; 10-flannel.conf not restored\)/)
  t.same(JSON.parse(readFileSync(conflist, 'utf8')).plugins.map((p: { type: string }) => p.type), ['flannel', 'portmap'])
})

t.test('no primary config yet', async (t) => {
  const { dir, installer } = setup()
  writeFileSync(join(dir, 'net.d/10-kindnet.conflist'), '{')
  t.same(installer.reconcile('test'), { status: 'no-primary' })
  t.notOk(installer.ready)
})
