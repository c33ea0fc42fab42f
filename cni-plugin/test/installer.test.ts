// The installer against temp dirs: atomic writes, 0600 kubeconfig, token rotation, re-insert
// after the primary CNI rewrites its file, uninstall vs upgrade.
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync, mkdirSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { Installer, uninstall } from '../src/install/installer.ts'
import { inClusterServer } from '../src/install/kubeconfig.ts'
import { loadKubeconfig } from '../src/plugin/pod-fallback.ts'

function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-inst-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const d of ['net.d', 'bin', 'sa', 'src']) mkdirSync(join(dir, d))
  writeFileSync(join(dir, 'sa/token'), 'token-1')
  writeFileSync(join(dir, 'sa/ca.crt'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n')
  writeFileSync(join(dir, 'src/ziti-cni'), '#!/bin/sh\necho v1\n')
  const primary = JSON.stringify({ cniVersion: '0.3.1', name: 'kindnet', plugins: [{ type: 'ptp' }, { type: 'portmap' }] })
  writeFileSync(join(dir, 'net.d/10-kindnet.conflist'), primary)
  const reinserts: string[] = []
  const opts = {
    pluginSource: join(dir, 'src/ziti-cni'), cniBinDir: join(dir, 'bin'), cniConfDir: join(dir, 'net.d'),
    pluginKubeconfig: join(dir, 'net.d/ziti-cni.d/ziti-cni.kubeconfig'), tokenFile: join(dir, 'sa/token'), caFile: join(dir, 'sa/ca.crt'),
    apiServer: 'https://10.96.0.1:443', entry: { type: 'ziti-cni' as const, agentSocket: '/var/run/ziti-cni/agent.sock' },
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

t.test('first install', async (t) => {
  const { dir, opts, installer } = setup()
  const state = installer.reconcile('test')
  t.same(state, { status: 'inserted', primary: '10-kindnet.conflist', primaryType: 'ptp' })
  t.equal(readFileSync(join(dir, 'bin/ziti-cni'), 'utf8'), '#!/bin/sh\necho v1\n')
  t.equal(statSync(join(dir, 'bin/ziti-cni')).mode & 0o777, 0o755)
  t.equal(statSync(opts.pluginKubeconfig).mode & 0o777, 0o600, 'kubeconfig is 0600')
  const kc = loadKubeconfig(opts.pluginKubeconfig)
  t.equal(kc.server, 'https://10.96.0.1:443')
  t.equal(kc.token, 'token-1')
  t.match(kc.ca?.toString(), /BEGIN CERTIFICATE/)
  t.same(installer.reconcile('again'), { status: 'ok', primary: '10-kindnet.conflist', primaryType: 'ptp' }, 'idempotent')
  t.same(readdirSync(join(dir, 'bin')), ['ziti-cni'], 'no temp files left behind')
})

t.test('token rotation rewrites the kubeconfig; a rewritten conflist gets ziti-cni back', async (t) => {
  const { dir, opts, installer, primary, reinserts } = setup()
  installer.start()
  t.teardown(() => installer.stop())
  writeFileSync(opts.tokenFile, 'token-2')
  await waitFor(() => loadKubeconfig(opts.pluginKubeconfig).token === 'token-2')
  t.pass('rotated token reached the kubeconfig')
  writeFileSync(join(dir, 'net.d/10-kindnet.conflist'), primary) // the primary CNI rewrites its file
  await waitFor(() => readFileSync(join(dir, 'net.d/10-kindnet.conflist'), 'utf8').includes('ziti-cni'))
  t.same(reinserts, ['ptp'], 'the re-insert names the likely culprit')
})

t.test('upgrade replaces the executable; uninstall removes everything', async (t) => {
  const { dir, opts, installer, primary } = setup()
  installer.reconcile('v1')
  // An upgrade is a new agent pod with a new executable in its image.
  writeFileSync(opts.pluginSource, '#!/bin/sh\necho v2\n')
  const upgraded = new Installer(opts, pino({ level: 'silent' }))
  upgraded.reconcile('v2')
  t.equal(readFileSync(join(dir, 'bin/ziti-cni'), 'utf8'), '#!/bin/sh\necho v2\n')
  // Someone replaces the installed file: the next periodic pass puts ours back.
  writeFileSync(join(dir, 'bin/ziti-cni'), 'tampered')
  upgraded.reconcile('periodic')
  t.equal(readFileSync(join(dir, 'bin/ziti-cni'), 'utf8'), '#!/bin/sh\necho v2\n', 'a changed file on the node is noticed without re-hashing every pass')
  const done = uninstall(opts)
  t.equal(done.length, 4)
  t.same(JSON.parse(readFileSync(join(dir, 'net.d/10-kindnet.conflist'), 'utf8')), JSON.parse(primary))
  t.notOk(existsSync(join(dir, 'bin/ziti-cni')))
  t.notOk(existsSync(opts.pluginKubeconfig))
  t.same(readdirSync(join(dir, 'net.d')), ['10-kindnet.conflist'], 'nothing of ours left in the conf dir, ziti-cni.d included')
})

t.test('no primary config yet', async (t) => {
  const { dir, installer } = setup()
  writeFileSync(join(dir, 'net.d/10-kindnet.conflist'), '{')
  t.same(installer.reconcile('test'), { status: 'no-primary' })
  t.notOk(installer.ready)
})

t.test('in-cluster server address', async (t) => {
  t.equal(inClusterServer({ KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' }), 'https://10.96.0.1:443')
  t.equal(inClusterServer({ KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' }), 'https://[fd00::1]:443')
  t.equal(inClusterServer({}), undefined)
})
