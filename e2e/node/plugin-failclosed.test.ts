// The agent-down path on the real runtime: containerd + runc run RunPodSandbox, containerd's
// own libcni runs bridge and ziti-cni (the installed front end and its runtime dir). With the
// agent up every pod is decided by the agent; with it down only the agent's intent snapshot
// decides, the API is never asked (no credential on the node), and only a pod the snapshot
// proves has no intent starts. Every other pod fails closed with a CNI error, so the kubelet
// retries, and starts programmed once the agent is back. Uninstalled: the tombstone lets a
// config a runtime cached pass pods through.
import t from 'tap'
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import type { V1Pod } from '@kubernetes/client-node'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, NODE_NAME, sweepLeftovers } from './lib/node.ts'
import { callPlugin, loadConfList } from './lib/cni-exec.ts'
import { IMAGES } from './lib/test-images.ts'

const PROXY_INTENT = '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}'

function pod(name: string, intent?: string) {
  return {
    metadata: { name, namespace: 'apps', annotations: (intent ? { 'cni.openziti.io/interception': intent } : {}) as Record<string, string> },
    spec: { nodeName: NODE_NAME, containers: [{ name: 'app', image: IMAGES.tools }] },
  }
}

t.test('the plugin fails closed whenever it cannot learn the intent', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 11 })
  t.teardown(() => node.teardown())
  await node.start()
  const snapshotFile = join(dirname(node.socket), 'intents.json')
  const snapshot = () => JSON.parse(readFileSync(snapshotFile, 'utf8')) as { state: string; pods: Array<{ name: string; uid: string; intent: boolean }> }
  const inSnapshot = async (p: V1Pod) => {
    const end = Date.now() + 10_000
    while (!snapshot().pods.some((e) => e.uid === p.metadata!.uid) && Date.now() < end) await new Promise((r) => setTimeout(r, 50))
    return snapshot().pods.find((e) => e.uid === p.metadata!.uid)
  }
  const failure = (p: Promise<unknown>) => p.then(() => undefined, (e: Error) => e)

  const programmed = node.api.put('pods', pod('programmed', PROXY_INTENT)) as V1Pod
  const knownPlain = node.api.put('pods', pod('known-plain')) as V1Pod
  const knownIntent = node.api.put('pods', pod('known-intent', PROXY_INTENT)) as V1Pod
  let live: Awaited<ReturnType<TestNode['runPod']>>

  await t.test('agent up: the agent decides; the snapshot is root-only and holds one bit per pod', async (t) => {
    live = await node.runPod(programmed)
    t.ok(node.hasTable(live), 'the pod with intent is programmed')
    t.same(await inSnapshot(knownPlain), { namespace: 'apps', name: 'known-plain', uid: knownPlain.metadata!.uid, intent: false })
    t.same(await inSnapshot(knownIntent), { namespace: 'apps', name: 'known-intent', uid: knownIntent.metadata!.uid, intent: true })
    t.notMatch(readFileSync(snapshotFile, 'utf8'), /dnat|15100|2171/, 'nothing of the intent itself')
    t.equal(statSync(snapshotFile).mode & 0o777, 0o600)
    const conf = readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8')
    t.notMatch(conf, /kubeconfig|token/, 'the CNI config names no credential')
    t.notOk(existsSync(node.pluginKubeconfig), 'and none is on the node')
  })

  await t.test('agent down (crashed) and the API refusing every token', async (t) => {
    await node.stopAgent('SIGKILL')
    node.api.tokens.clear() // 401 for everyone: the plugin must not care
    const plain = await node.runPod(knownPlain)
    t.ok(plain.ip, 'a pod the snapshot shows without intent starts')
    t.notOk(node.hasTable(plain), 'unprogrammed, as it should be')
    const intent = await failure(node.runPod(knownIntent))
    t.match(intent?.message, /plugin type="ziti-cni" failed \(add\): ziti-cni agent is down .*pod apps\/known-intent has interception intent, so pod apps\/known-intent fails closed/, 'a pod with intent never starts unprogrammed')
    const unknownPlain = node.api.put('pods', pod('unknown-plain')) as V1Pod
    const unknown = await failure(node.runPod(unknownPlain))
    t.match(unknown?.message, /not in the intent snapshot yet, so pod apps\/unknown-plain fails closed/, 'a pod the snapshot cannot decide fails closed, even without intent')
    const unknownIntent = node.api.put('pods', pod('unknown-intent', PROXY_INTENT)) as V1Pod
    t.match((await failure(node.runPod(unknownIntent)))?.message, /not in the intent snapshot yet/)
    await node.removePod(plain)
    await node.removePod(live)
    t.notOk(existsSync(live.netns), 'DEL of a programmed pod succeeds with the agent down; its netns (and table) are gone')

    // The kubelet retries: with the agent back, the same pods start, programmed.
    node.api.tokens.add(readFileSync(node.tokenFile, 'utf8').trim())
    await node.startAgent()
    const retried = await node.runPod(unknownIntent)
    t.ok(node.hasTable(retried), 'the retried pod with intent is programmed')
    const retriedPlain = await node.runPod(unknownPlain)
    t.notOk(node.hasTable(retriedPlain))
    await node.removePod(retried)
    await node.removePod(retriedPlain)
  })

  await t.test('agent down with no snapshot (a reboot cleared /var/run): every pod fails closed', async (t) => {
    await node.stopAgent('SIGKILL')
    rmSync(snapshotFile)
    t.match((await failure(node.runPod(knownPlain)))?.message, /no intent snapshot on this node .*fails closed/)
    await node.startAgent()
  })

  await t.test('uninstalled: the tombstone lets a config a runtime cached pass pods through', async (t) => {
    const cached = loadConfList(node.confDir) // as CRI-O or Multus would have kept it from ADD
    node.api.delete('daemonsets', 'ziti-cni-system', 'ziti-cni-agent')
    await node.stopAgent()
    t.equal(snapshot().state, 'uninstalled')
    t.notMatch(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8'), /ziti-cni/, 'the entry is gone: containerd re-reads the dir')
    const a = { containerId: 'cached-1', netns: '/var/run/netns/none', pod: { namespace: 'apps', name: 'late', uid: 'uid-late' } }
    const add = await callPlugin(node.binDir, cached, 'ziti-cni', 'ADD', a, { prevResult: { cniVersion: cached.cniVersion, ips: [{ address: '10.1.1.1/24' }] } }) as { ips: unknown[] }
    t.same(add.ips, [{ address: '10.1.1.1/24' }], 'ADD with the cached config passes through')
    t.equal(await callPlugin(node.binDir, cached, 'ziti-cni', 'DEL', a), undefined, 'DEL with the cached config succeeds: the executable is still there')
    const after = await node.runPod(node.api.put('pods', pod('after-uninstall', PROXY_INTENT)) as V1Pod)
    t.ok(after.ip, 'new pods start without ziti-cni in the chain')
    await node.removePod(after)
  })
})
