// Uninstall strands nothing, on containerd + runc: pods with intent (proxy and tproxy) and
// plain pods run, the product is uninstalled as the DaemonSet's deletion does it (the agent
// sees its DaemonSet gone on SIGTERM), then every pod is stopped and removed as the kubelet
// does (StopPodSandbox -> CNI DEL through the chain containerd re-read, RemovePodSandbox):
// no error, and no netns, table, attachment record or sandbox is left. A control first shows
// why the executable stays after uninstall: a chain that still names ziti-cni cannot tear a
// pod down once the executable is gone (libcni: failed to find plugin "ziti-cni").
import t from 'tap'
import { existsSync, readdirSync, readFileSync, renameSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import type { V1Pod } from '@kubernetes/client-node'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, NODE_NAME, sweepLeftovers } from './lib/node.ts'
import type { RunningPod } from './lib/kubelet.ts'
import { IMAGES } from './lib/test-images.ts'

const PROXY_INTENT = '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}'
const TPROXY_INTENT = '{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10"],"proto":["tcp","udp"],"to":15001,"dns":15053,"fence":[15001,15053]}'

function pod(name: string, intent?: string) {
  return {
    metadata: { name, namespace: 'apps', annotations: (intent ? { 'cni.openziti.io/interception': intent } : {}) as Record<string, string> },
    spec: { nodeName: NODE_NAME, containers: [{ name: 'app', image: IMAGES.tools }] },
  }
}

t.test('uninstall with pods running: every one stops and is removed, nothing left', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 12 })
  t.teardown(() => node.teardown())
  await node.start()
  const exe = join(node.binDir, 'ziti-cni')

  await t.test('control: with the executable gone and the chain still naming it, DEL fails', async (t) => {
    const p = await node.runPod(node.api.put('pods', pod('control', PROXY_INTENT)) as V1Pod)
    await node.stopAgent('SIGKILL') // an agent that died without uninstalling: the entry stays
    renameSync(exe, `${exe}.away`)
    const err = await node.removePod(p).then(() => undefined, (e: Error) => e)
    t.match(err?.message, /failed to find plugin "ziti-cni"/, 'the pod would hang in Terminating')
    renameSync(`${exe}.away`, exe)
    await node.removePod(p)
    t.notOk(existsSync(p.netns), 'with the executable back, DEL succeeds (agent down)')
    await node.startAgent()
  })

  await t.test('uninstall, then StopPodSandbox/RemovePodSandbox of every pod', async (t) => {
    const pods: RunningPod[] = []
    for (const [name, intent] of [['proxy-1', PROXY_INTENT], ['tproxy-1', TPROXY_INTENT], ['plain-1', undefined], ['plain-2', undefined]] as const) {
      pods.push(await node.runPod(node.api.put('pods', pod(name, intent)) as V1Pod))
    }
    t.same(pods.map((p) => node.hasTable(p)), [true, true, false, false], 'the pods with intent are programmed')
    const stateDir = node.stateDir
    t.ok(readdirSync(stateDir).length >= 2, 'the agent keeps records of its attachments')

    node.api.delete('daemonsets', 'ziti-cni-system', 'ziti-cni-agent')
    await node.stopAgent()
    t.match(node.agentLog.join('\n'), /the DaemonSet is gone or our credentials are revoked: uninstalling/)
    t.notMatch(readFileSync(join(node.confDir, '10-bridge.conflist'), 'utf8'), /ziti-cni/, 'the chain no longer names ziti-cni')
    t.match(readFileSync(join(dirname(node.socket), 'intents.json'), 'utf8'), /"state":"uninstalled"/, 'the tombstone')
    t.ok(existsSync(exe) && existsSync(`${exe}.d/ziti-cni-node`), 'the executable stays (a runtime that cached the config can still DEL)')
    t.notOk(existsSync(stateDir), 'the attachment records are gone with the agent')

    const sandboxes = join(node.dir, 'containerd', 'state', 'io.containerd.grpc.v1.cri', 'sandboxes')
    const held = () => (existsSync(sandboxes) ? readdirSync(sandboxes).filter((id) => pods.some((p) => p.sandboxId === id)) : [])
    t.equal(held().length, pods.length, 'containerd holds the four sandboxes before')
    for (const p of pods) {
      const err = await node.removePod(p).then(() => undefined, (e: Error) => e)
      t.equal(err, undefined, `${p.pod.metadata!.name}: StopPodSandbox and RemovePodSandbox succeed`)
      t.notOk(existsSync(p.netns), `${p.pod.metadata!.name}: its netns is gone, and its table with it`)
    }
    const netns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout
    for (const p of pods) t.notMatch(netns, new RegExp(p.netns.split('/').pop()!), 'no netns left in ip netns list')
    t.notMatch(spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout, /ziti_cni/, 'no ziti_cni table on the host')
    t.same(held(), [], 'and none after')
    t.notOk(existsSync(node.socket), 'no agent socket')
  })
})
