// The executable's logic with injected I/O: every command, every error code, the agent-down
// path through the intent snapshot (each branch: proven no intent, intent, unknown pod, another
// incarnation, no uid, no snapshot, a broken one, uninstalled).
import t from 'tap'
import { runPlugin, type PluginDeps } from '../src/plugin/run.ts'
import { AgentUnreachable } from '../src/plugin/agent-client.ts'
import { renderSnapshot, type IntentSnapshot } from '../src/cni/intent-snapshot.ts'
import { convertResult, parseCniArgs, CniError } from '../src/cni/spec.ts'
import type { AgentRequest, AgentResponse } from '../src/cni/agent-protocol.ts'

const prevResult = {
  cniVersion: '1.0.0',
  interfaces: [{ name: 'eth0', mac: '02:00:00:00:00:01', sandbox: '/var/run/netns/x' }],
  ips: [{ address: '10.1.2.3/24', gateway: '10.1.2.1', interface: 0 }, { address: 'fd00::3/64', interface: 0 }],
  routes: [{ dst: '0.0.0.0/0' }],
  dns: {},
}
const conf = (extra: object = {}) => JSON.stringify({ cniVersion: '1.0.0', name: 'net', type: 'ziti-cni', agentSocket: '/s.sock', snapshot: '/run/intents.json', prevResult, ...extra })
const env = (cmd: string, extra: Record<string, string> = {}) => ({
  CNI_COMMAND: cmd, CNI_CONTAINERID: 'abc123', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0',
  CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-1;K8S_POD_UID=uid-1', ...extra,
})

function deps(over: Partial<PluginDeps> = {}): PluginDeps & { calls: AgentRequest[] } {
  const calls: AgentRequest[] = []
  return {
    calls,
    callAgent: async (_s, body) => { calls.push(body); return { ok: true, intercepted: true, mode: 'proxy' } },
    agentStatus: async () => true,
    readSnapshot: (p) => (p === '/run/intents.json' ? snap([{ namespace: 'apps', name: 'web-1', uid: 'uid-1', intent: false }]) : undefined),
    logger: () => ({ log: () => {} }),
    ...over,
  }
}
const snap = (pods: Array<{ namespace: string; name: string; uid: string; intent: boolean }>) =>
  renderSnapshot({ v: 1, state: 'installed', node: 'n1', pods } satisfies IntentSnapshot)
const down = async (): Promise<AgentResponse> => { throw new AgentUnreachable('cannot reach the agent at /s.sock: ECONNREFUSED') }

t.test('VERSION lists 0.3.0 to 1.1.0', async (t) => {
  const out = await runPlugin({ CNI_COMMAND: 'VERSION' }, '', deps())
  t.same(out, { stdout: { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] }, exitCode: 0 })
})

t.test('ADD forwards the pod to the agent and passes prevResult through', async (t) => {
  const d = deps()
  const out = await runPlugin(env('ADD'), conf(), d)
  t.equal(out.exitCode, 0)
  t.same(out.stdout, { ...prevResult, cniVersion: '1.0.0' })
  t.same(d.calls[0], { command: 'ADD', containerId: 'abc123', netns: '/var/run/netns/x', ifName: 'eth0', pod: { namespace: 'apps', name: 'web-1', uid: 'uid-1' }, validAttachments: [], podIps: ['10.1.2.3', 'fd00::3'] }, 'with the pod\'s addresses from prevResult')
})

t.test('prevResult is converted to the config version', async (t) => {
  const old = await runPlugin(env('ADD'), conf({ cniVersion: '0.4.0' }), deps())
  t.same((old.stdout as typeof prevResult).ips.map((i) => (i as { version?: string }).version), ['4', '6'], '0.4.0 results carry ips[].version')
  t.equal((old.stdout as { cniVersion: string }).cniVersion, '0.4.0')
  t.same(convertResult({ cniVersion: '0.3.1', ips: [{ address: '1.2.3.4/32', version: '4' }] }, '1.1.0').ips, [{ address: '1.2.3.4/32' }], '1.x drops it')
})

t.test('a call that is not for a Kubernetes pod passes through without the agent', async (t) => {
  const d = deps()
  const out = await runPlugin(env('ADD', { CNI_ARGS: 'IgnoreUnknown=1' }), conf(), d)
  t.equal(out.exitCode, 0)
  t.equal(d.calls.length, 0)
})

t.test('errors are the spec error JSON with the right code', async (t) => {
  const cases: Array<[string, Record<string, string>, string, number, RegExp]> = [
    ['bad command', { CNI_COMMAND: 'FROB' }, conf(), 4, /CNI_COMMAND "FROB"/],
    ['bad json', env('ADD'), '{', 6, /not valid JSON/],
    ['bad version', env('ADD'), conf({ cniVersion: '0.2.0' }), 1, /cniVersion "0.2.0" is not supported/],
    ['CHECK on 0.3.1', env('CHECK'), conf({ cniVersion: '0.3.1' }), 1, /CHECK is not defined for cniVersion 0.3.1/],
    ['STATUS on 1.0.0', env('STATUS'), conf(), 1, /STATUS is not defined for cniVersion 1.0.0/],
    ['no container id', env('ADD', { CNI_CONTAINERID: '' }), conf(), 4, /CNI_CONTAINERID is required/],
    ['no netns', env('ADD', { CNI_NETNS: '' }), conf(), 4, /CNI_NETNS is required/],
    ['bad CNI_ARGS', env('ADD', { CNI_ARGS: 'K8S_POD_NAME' }), conf(), 4, /malformed pair "K8S_POD_NAME"/],
    ['no prevResult', env('ADD'), conf({ prevResult: undefined }), 7, /chained plugin/],
    ['bad timeout', env('ADD'), conf({ timeoutSeconds: -1 }), 7, /timeoutSeconds/],
    ['GC without the list', env('GC'), conf({ cniVersion: '1.1.0' }), 7, /GC needs cni.dev\/valid-attachments/],
  ]
  for (const [name, e, stdin, code, msg] of cases) {
    const out = await runPlugin(e, stdin, deps())
    t.equal(out.exitCode, 1, `${name}: exit 1`)
    t.equal((out.stdout as { code: number }).code, code, `${name}: code ${code}`)
    t.match((out.stdout as { msg: string }).msg, msg, `${name}: message`)
  }
  const agentErr = await runPlugin(env('ADD'), conf(), deps({ callAgent: async () => ({ ok: false, code: 101, msg: 'bad intent', details: 'nothing was programmed' }) }))
  t.same(agentErr.stdout, { cniVersion: '1.0.0', code: 101, msg: 'bad intent', details: 'nothing was programmed' }, 'agent errors are relayed as-is')
})

t.test('agent down: the intent snapshot decides, and only a proven "no intent" passes', async (t) => {
  const msg = (o: { stdout: unknown }) => (o.stdout as { msg: string }).msg
  const code = (o: { stdout: unknown }) => (o.stdout as { code: number }).code
  const withSnap = (text: string | undefined) => deps({ callAgent: down, readSnapshot: () => text })

  t.same(await runPlugin(env('ADD'), conf(), deps({ callAgent: down })), { stdout: prevResult, exitCode: 0 }, 'listed without intent: passes through')
  const check = await runPlugin(env('CHECK', {}), conf({ cniVersion: '1.1.0' }), deps({ callAgent: down }))
  t.equal(check.exitCode, 0, 'CHECK of a pod without intent passes too')

  const intent = await runPlugin(env('ADD'), conf(), withSnap(snap([{ namespace: 'apps', name: 'web-1', uid: 'uid-1', intent: true }])))
  t.equal(code(intent), 11, 'intent: try again later')
  t.match(msg(intent), /agent is down .*ECONNREFUSED.*apps\/web-1 has interception intent, so pod apps\/web-1 fails closed until the agent is back/)

  const unknown = await runPlugin(env('ADD'), conf(), withSnap(snap([{ namespace: 'apps', name: 'other', uid: 'uid-9', intent: false }])))
  t.equal(code(unknown), 11)
  t.match(msg(unknown), /apps\/web-1 \(uid uid-1\) is not in the intent snapshot yet/, 'a pod the snapshot does not know fails closed')

  const stale = await runPlugin(env('ADD'), conf(), withSnap(snap([{ namespace: 'apps', name: 'web-1', uid: 'uid-0', intent: false }])))
  t.match(msg(stale), /is not in the intent snapshot/, 'another incarnation with the same name is never trusted')

  const noUid = await runPlugin(env('ADD', { CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-1' }), conf(), deps({ callAgent: down }))
  t.match(msg(noUid), /passed no K8S_POD_UID/, 'no uid to match: fails closed')

  const none = await runPlugin(env('ADD'), conf(), withSnap(undefined))
  t.equal(code(none), 11)
  t.match(msg(none), /no intent snapshot on this node/, 'no snapshot (fresh boot, agent not up yet): fails closed')

  const broken = await runPlugin(env('ADD'), conf(), withSnap('{"v":1,"state":"installed","node":"n1","pods":[{"name":"web-1"}]}'))
  t.match(msg(broken), /intent snapshot is unreadable: field pods\[0\]/, 'a malformed snapshot fails closed, naming the field')
  const garbage = await runPlugin(env('ADD'), conf(), withSnap('{'))
  t.match(msg(garbage), /unreadable: not JSON/)
  const eacces = await runPlugin(env('ADD'), conf(), deps({ callAgent: down, readSnapshot: () => { throw new Error('EACCES: permission denied') } }))
  t.match(msg(eacces), /unreadable: \/run\/intents.json: EACCES/, 'an unreadable file fails closed')

  const gone = await runPlugin(env('ADD'), conf(), withSnap(renderSnapshot({ v: 1, state: 'uninstalled' })))
  t.same(gone, { stdout: prevResult, exitCode: 0 }, 'uninstalled (tombstone): a config a runtime cached passes pods through')

  const hung = await runPlugin(env('ADD'), conf(), deps({ callAgent: async () => { throw new AgentUnreachable('no answer from the agent at /s.sock within 10000 ms') }, readSnapshot: () => snap([{ namespace: 'apps', name: 'web-1', uid: 'uid-1', intent: true }]) }))
  t.match(msg(hung), /no answer from the agent .* fails closed/, 'a hung agent is the same as a stopped one')

  const up = deps({ readSnapshot: () => { throw new Error('must not be read while the agent answers') } })
  t.equal((await runPlugin(env('ADD'), conf(), up)).exitCode, 0, 'agent up: the snapshot is never read')

  const del = await runPlugin(env('DEL'), conf(), withSnap(undefined))
  t.same(del, { stdout: undefined, exitCode: 0 }, 'DEL succeeds with the agent down and no snapshot')
  const gc = await runPlugin(env('GC'), conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] }), withSnap(undefined))
  t.equal(gc.exitCode, 0, 'GC succeeds with the agent down')
})

t.test('STATUS', async (t) => {
  t.equal((await runPlugin(env('STATUS'), conf({ cniVersion: '1.1.0' }), deps())).exitCode, 0)
  t.equal((await runPlugin(env('STATUS'), conf({ cniVersion: '1.1.0' }), deps({ agentStatus: async () => false }))).exitCode, 0, 'degraded but can serve the pods the snapshot shows without intent')
  const out = await runPlugin(env('STATUS'), conf({ cniVersion: '1.1.0' }), deps({ agentStatus: async () => false, readSnapshot: () => undefined }))
  t.equal((out.stdout as { code: number }).code, 50)
  t.match((out.stdout as { msg: string }).msg, /agent at \/s.sock is down and no intent snapshot/)
})

t.test('CNI_ARGS parsing', async (t) => {
  t.same(parseCniArgs('A=1;B=x=y;;C='), { A: '1', B: 'x=y', C: '' })
  t.throws(() => parseCniArgs('=x'), CniError)
})
