// Root integration: the real agent (bundle), the real SEA executable installed by the real
// installer, the reference bridge/host-local/loopback plugins run by containerd's libcni on
// RunPodSandbox, real netns and nft. What containerd 1.6 never sends (a retried ADD, CHECK,
// GC, STATUS, DEL for a vanished netns) is exec'd directly, exactly as libcni would.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync, statSync, existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, NODE_NAME, AGENT_BUNDLE, sweepLeftovers } from '../../e2e/node/lib/node.ts'
import type { RunningPod } from '../../e2e/node/lib/kubelet.ts'
import { CniCallError, cachedResult, callPlugin, execProcess, loadConfList } from '../../e2e/node/lib/cni-exec.ts'
import { IMAGES } from '../../e2e/node/lib/test-images.ts'

const PROXY_INTENT = '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}'
const TPROXY_INTENT = '{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10"],"proto":["tcp","udp"],"to":15001,"dns":15053,"fence":[15001,15053]}'

function pod(name: string, intent?: string) {
  return {
    metadata: { name, namespace: 'default', annotations: (intent ? { 'cni.openziti.io/interception': intent } : {}) as Record<string, string> },
    spec: { nodeName: NODE_NAME, containers: [{ name: 'app', image: IMAGES.tools }] },
  }
}

const table = (s: RunningPod) => spawnSync('nsenter', [`--net=${s.netns}`, 'nft', 'list', 'table', 'inet', 'ziti_cni'], { encoding: 'utf8' })
const ipIn = (s: RunningPod, args: string[]) => spawnSync('nsenter', [`--net=${s.netns}`, 'ip', ...args], { encoding: 'utf8' })
const execPlugin = (binary: string, env: Record<string, string>, stdin: string) => execProcess(binary, [], env, stdin)

t.test('agent + executable on a real kernel', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc']), async (t) => {
  sweepLeftovers()
  if (!existsSync(AGENT_BUNDLE)) t.fail('cni-plugin is not built (pnpm build)')
  const node = new TestNode({ id: 1 })
  t.teardown(() => node.teardown())
  const original = node.primaryConflist()
  await node.start()
  /** libcni's view of one attachment, for the calls containerd never makes. */
  const direct = (s: RunningPod, command: string, withPrev = true) => {
    const list = loadConfList(node.confDir)
    const a = { containerId: s.sandboxId, netns: s.netns, pod: { namespace: 'default', name: s.pod.metadata!.name!, uid: s.pod.metadata!.uid! } }
    return callPlugin(node.binDir, list, 'ziti-cni', command, a, withPrev ? { prevResult: cachedResult(list.name, s.sandboxId) } : {})
  }
  const failure = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as CniCallError)

  await t.test('the installer appended ziti-cni to the primary conflist; no credential on disk, a 0600 intent snapshot', async (t) => {
    const list = JSON.parse(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8'))
    t.same(list.plugins.map((p: { type: string }) => p.type), ['bridge', 'ziti-cni'])
    t.equal(list.plugins[1].agentSocket, node.socket)
    t.equal(list.plugins[1].snapshot, join(dirname(node.socket), 'intents.json'))
    t.notOk(existsSync(node.pluginKubeconfig), 'no kubeconfig for the executable')
    t.equal(statSync(list.plugins[1].snapshot).mode & 0o777, 0o600)
    t.equal(statSync(join(node.binDir, 'ziti-cni')).mode & 0o777, 0o755)
  })

  await t.test('ADD programs the table; ADD twice gives the same table; CHECK passes', async (t) => {
    const p = await node.api.put('pods', pod('proxy-1', PROXY_INTENT))
    const s = await node.runPod(p as never)
    const first = table(s)
    t.equal(first.status, 0, 'table exists')
    t.match(first.stdout, /100\.64\.0\.2 \. tcp \. 5432 : 15100/)
    // A second ADD of the same attachment (the runtime retrying) replaces, not duplicates.
    const again = await direct(s, 'ADD') as { ips: Array<{ address: string }> }
    t.equal(again.ips[0]?.address, `${s.ip}/24`, 'prevResult passed through')
    t.equal(table(s).stdout, first.stdout, 'identical after a second ADD')
    await direct(s, 'CHECK')
    t.pass('CHECK passes on an untouched table')
    const cli = spawnSync(process.execPath, [new URL('../src/cli/main.ts', import.meta.url).pathname, 'inspect', '--pod', 'default/proxy-1', '--state-dir', node.stateDir], { encoding: 'utf8' })
    t.equal(cli.status, 0, cli.stderr)
    t.match(cli.stdout, /MATCH: live table equals the pod's intent/, 'the admin CLI finds the pod and agrees')

    spawnSync('nsenter', [`--net=${s.netns}`, 'nft', 'flush', 'chain', 'inet', 'ziti_cni', 'fence_input'])
    const drift = await failure(direct(s, 'CHECK'))
    t.type(drift, CniCallError)
    t.equal((drift as CniCallError).error.code, 104, 'drift code')
    t.match((drift as CniCallError).error.msg, /differs from what ADD programmed/)
    t.match((drift as CniCallError).error.details, /- iifname "lo" accept/, 'details name the missing rule')

    // DEL after the netns is gone (a runtime retrying after a reboot) succeeds and drops the state.
    await direct({ ...s, netns: '/var/run/netns/cni-00000000-0000-0000-0000-000000000000' }, 'DEL')
    t.equal(existsSync(join(node.stateDir, `${s.sandboxId}_eth0.json`)), false, 'state removed')
    await node.removePod(s)
  })

  await t.test('tproxy: table plus policy routing, removed by DEL', async (t) => {
    const p = await node.api.put('pods', pod('tproxy-1', TPROXY_INTENT))
    const s = await node.runPod(p as never)
    t.match(table(s).stdout, /tproxy ip to 127\.0\.0\.1:15001/)
    t.match(ipIn(s, ['rule', 'show']).stdout, /fwmark 0x2a1 lookup 2171/)
    await direct(s, 'CHECK')
    ipIn(s, ['rule', 'del', 'fwmark', '0x2a1', 'lookup', '2171'])
    const drift = await failure(direct(s, 'CHECK'))
    t.match(drift?.error.msg, /policy rule for fwmark 0x2a1 is missing/)
    await direct(s, 'DEL')
    t.not(table(s).status, 0, 'table gone after DEL')
    t.notMatch(ipIn(s, ['rule', 'show']).stdout, /0x2a1/, 'rule gone after DEL')
    await node.removePod(s)
  })

  await t.test('a pod without intent gets no table', async (t) => {
    const s = await node.runPod(await node.api.put('pods', pod('plain-1')) as never)
    t.not(table(s).status, 0)
    t.match(s.ip, /^10\./, 'the primary plugin still gave it an address')
    await node.removePod(s)
  })

  await t.test('a hostile intent programs nothing and fails with the CNI error JSON', async (t) => {
    const hostile = [
      '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2 } ; flush ruleset ;","proto":"tcp","port":1,"to":2}],"fence":[2]}',
      '{"v":1,"mode":"tproxy","uid":0,"cidrs":["0.0.0.0/0"],"proto":["tcp"],"to":1,"fence":[1]}',
      '{"v":2}',
      'not json',
    ]
    // A scratch pod's netns stands for the failed sandbox's (containerd removes that one): the
    // executable, given each hostile intent, must answer with the error JSON and touch nothing.
    const scratch = await node.runPod(await node.api.put('pods', pod('scratch')) as never)
    for (const [i, intent] of hostile.entries()) {
      const p = await node.api.put('pods', pod(`hostile-${i}`, intent))
      const sandbox = await node.runPod(p as never).then(() => undefined, (e: Error) => e)
      t.match(sandbox?.message, /plugin type="ziti-cni" failed \(add\): .*cni\.openziti\.io\/interception/, `intent ${i}: RunPodSandbox fails with the message`)
      const err = await failure(direct({ ...scratch, pod: p as never }, 'ADD'))
      t.same(Object.keys(err?.error ?? {}).sort(), ['cniVersion', 'code', 'details', 'msg'], 'the spec error JSON')
      t.equal(err?.error.code, 101, `intent ${i}: invalid-intent code`)
      t.match(err?.error.msg, /cni\.openziti\.io\/interception/, 'message names the annotation')
      t.equal(spawnSync('nsenter', [`--net=${scratch.netns}`, 'nft', 'list', 'ruleset'], { encoding: 'utf8' }).stdout.trim(), '', 'nothing programmed')
    }
    await node.removePod(scratch)
  })

  await t.test('metrics count what happened', async (t) => {
    const m = await node.metrics()
    t.match(m, /ziti_cni_requests_total\{command="ADD",outcome="programmed"\} \d+/)
    t.match(m, /ziti_cni_requests_total\{command="ADD",outcome="error_101"\} 8/)
    t.match(m, /ziti_cni_requests_total\{command="CHECK",outcome="error_104"\} 2/)
    t.match(m, /ziti_cni_pod_lookups_total\{source="cache",outcome="hit"\} \d+/)
  })

  await t.test('agent down: a pod the snapshot shows without intent passes, others fail closed, recover when the agent is back', async (t) => {
    const plainPod = await node.api.put('pods', pod('plain-2')) as { metadata: { uid: string } }
    const snapshotFile = join(dirname(node.socket), 'intents.json')
    const seen = Date.now() + 10_000
    while (!readFileSync(snapshotFile, 'utf8').includes(plainPod.metadata.uid) && Date.now() < seen) await new Promise((r) => setTimeout(r, 50))
    await node.stopAgent()
    const plain = await node.runPod(plainPod as never)
    t.ok(plain.ip, 'pod without intent starts with the agent down')
    const p = await node.api.put('pods', pod('proxy-2', PROXY_INTENT))
    const sandbox = await node.runPod(p as never).then(() => undefined, (e: Error) => e)
    t.match(sandbox?.message, /agent is down .*not in the intent snapshot yet, so pod default\/proxy-2 fails closed/, 'RunPodSandbox fails closed')
    const err = await failure(direct({ ...plain, pod: p as never }, 'ADD'))
    t.equal(err?.error.code, 11, 'try-again-later')
    await node.startAgent()
    const s = await node.runPod(p as never)
    t.equal(table(s).status, 0, 'same pod succeeds once the agent is back')
    await node.removePod(s)
    await node.removePod(plain)
  })

  await t.test('GC drops attachments that are no longer valid', async (t) => {
    const s = await node.runPod(await node.api.put('pods', pod('proxy-gc', PROXY_INTENT)) as never)
    const conf = { cniVersion: '1.1.0', name: 'e2e-pod-network', type: 'ziti-cni', agentSocket: node.socket, 'cni.dev/valid-attachments': [] }
    const out = await execPlugin(join(node.binDir, 'ziti-cni'), { CNI_COMMAND: 'GC', CNI_PATH: node.binDir }, JSON.stringify(conf))
    t.equal(out.code, 0, out.stdout)
    t.not(table(s).status, 0, 'GC removed the table of an attachment the runtime no longer lists')
    await node.removePod(s)
  })

  await t.test('STATUS succeeds with the agent up', async (t) => {
    const conf = { cniVersion: '1.1.0', name: 'n', type: 'ziti-cni', agentSocket: node.socket }
    const out = await execPlugin(join(node.binDir, 'ziti-cni'), { CNI_COMMAND: 'STATUS', CNI_PATH: node.binDir }, JSON.stringify(conf))
    t.equal(out.code, 0)
    t.equal(out.stdout, '', 'STATUS prints nothing on success')
  })

  await t.test('SIGTERM while the DaemonSet exists (upgrade): the plugin stays', async (t) => {
    await node.stopAgent()
    t.match(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8'), /ziti-cni/)
    t.ok(existsSync(join(node.binDir, 'ziti-cni')))
    t.match(node.agentLog.join('\n'), /leaving the plugin installed/)
  })

  await t.test('SIGTERM after the DaemonSet was deleted (uninstall): the entry is removed, the executable kept for DELs', async (t) => {
    await node.startAgent()
    node.api.delete('daemonsets', 'ziti-cni-system', 'ziti-cni-agent')
    await node.stopAgent()
    t.same(JSON.parse(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8')), JSON.parse(original))
    t.ok(existsSync(join(node.binDir, 'ziti-cni')))
    t.match(readFileSync(join(dirname(node.socket), 'intents.json'), 'utf8'), /"state":"uninstalled"/)
  })

  await t.test('uninstall in rendered order (RBAC first): 403 or 401 on the DaemonSet GET also uninstalls, and no pod is blocked', async (t) => {
    const token = readFileSync(node.tokenFile, 'utf8').trim()
    for (const [what, revoke, restore] of [
      ['403 (ClusterRole binding gone)', () => node.api.denied.set(token, new Set(['daemonsets', 'pods'])), () => node.api.denied.delete(token)],
      ['401 (ServiceAccount gone)', () => node.api.tokens.delete(token), () => node.api.tokens.add(token)],
    ] as const) {
      await node.api.create('daemonsets', { metadata: { name: 'ziti-cni-agent', namespace: 'ziti-cni-system' }, spec: {} }).catch(() => {})
      await node.startAgent()
      t.match(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8'), /ziti-cni/, `${what}: installed`)
      revoke()
      await node.stopAgent()
      t.same(JSON.parse(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8')), JSON.parse(original), `${what}: the agent uninstalled on SIGTERM`)
      t.match(node.agentLog.join('\n'), /credentials are revoked: uninstalling/)
      restore()
    }
    // An agent that died without uninstalling: the executable has no credential to be refused;
    // the intent snapshot decides, and a pod with intent fails closed whatever the API says.
    await node.startAgent()
    await node.stopAgent('SIGKILL')
    node.api.denied.set(token, new Set(['pods']))
    const p = await node.api.put('pods', pod('during-uninstall', PROXY_INTENT))
    const err = await node.runPod(p as never).then(() => undefined, (e: Error) => e)
    t.match(err?.message, /ziti-cni agent is down .*fails closed/, 'never started unprogrammed')
    node.api.denied.delete(token)
    node.api.delete('daemonsets', 'ziti-cni-system', 'ziti-cni-agent')
  })

  await t.test('the explicit uninstall command restores the primary conflist and leaves the tombstone', async (t) => {
    await node.startAgent()
    t.match(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8'), /ziti-cni/, 'installed again')
    await node.api.create('daemonsets', { metadata: { name: 'ziti-cni-agent', namespace: 'ziti-cni-system' }, spec: {} })
    await node.stopAgent()
    const r = spawnSync(process.execPath, [AGENT_BUNDLE, 'uninstall', '--cni-bin-dir', node.binDir, '--cni-conf-dir', node.confDir, '--plugin-kubeconfig', node.pluginKubeconfig, '--socket', node.socket, '--state-dir', node.stateDir], { encoding: 'utf8' })
    t.equal(r.status, 0, r.stderr)
    t.same(JSON.parse(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8')), JSON.parse(original))
    t.match(readFileSync(join(dirname(node.socket), 'intents.json'), 'utf8'), /"state":"uninstalled"/, 'the tombstone')
  })
})
