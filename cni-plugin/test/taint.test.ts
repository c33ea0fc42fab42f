// The agent's startup-taint removal against the API stand-in (the agent's own client: GET and
// JSON patch): nothing before the agent is ready, then only its own node's taint; a taint list that
// changed since the read fails the patch's test op instead of being overwritten.
import t from 'tap'
import { createKubeClient } from '../src/agent/kube.ts'
import { pino } from 'pino'
import { createCa, createServingCert } from '../../webhook/src/tls/certs.ts'
import { KubeApiStandIn } from '../../e2e/node/lib/kube-api.ts'
import { STARTUP_TAINT, startTaintRemoval } from '../src/agent/taint.ts'
import { parseFlags } from '../src/agent/flags.ts'

t.test('--startup-taint', async (t) => {
  t.equal(parseFlags(['--node-name', 'n'], {}).startupTaint, undefined, 'off unless asked')
  t.equal(parseFlags(['--node-name', 'n', `--startup-taint=${STARTUP_TAINT}`], {}).startupTaint, STARTUP_TAINT)
  t.throws(() => parseFlags(['--node-name', 'n', '--startup-taint=a b'], {}), { message: '--startup-taint: "a b" is not a taint key' })
})

t.test('removes the taint from its own node once ready, and nothing else', async (t) => {
  const ca = createCa({ commonName: 'api-ca', validDays: 1 })
  const serving = createServingCert(ca, { commonName: 'api', ipAddresses: ['127.0.0.1'], validDays: 1 })
  const api = new KubeApiStandIn({ cert: serving.certPem, key: serving.keyPem, tokens: ['tok'] })
  const url = await api.listen()
  t.teardown(() => api.close())
  const kc = createKubeClient({ server: url, ca: { data: ca.certPem }, token: 'tok' })
  const other = { key: 'karpenter.sh/disrupted', effect: 'NoSchedule' }
  for (const name of ['node-a', 'node-b']) api.put('nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name }, spec: { taints: [{ key: STARTUP_TAINT, effect: 'NoSchedule' }, other] } } as never)
  let ready = false
  const remover = startTaintRemoval(kc, 'node-a', STARTUP_TAINT, pino({ level: 'silent' }), () => ready, 50)
  t.teardown(remover.stop)
  await new Promise((r) => setTimeout(r, 300))
  const taints = (n: string) => (api.get('nodes', undefined, n) as unknown as { spec: { taints?: unknown[] } }).spec.taints
  t.equal(taints('node-a')?.length, 2, 'not before the plugin is installed and the agent ready')
  t.notOk(api.requests.some((r) => r.path.startsWith('/api/v1/nodes')), 'not even a read')
  ready = true
  await remover.done
  t.same(taints('node-a'), [other], 'ours gone, the other kept')
  t.equal(taints('node-b')?.length, 2, 'another node untouched')
  t.ok(api.requests.filter((r) => r.method === 'PATCH').every((r) => r.path === '/api/v1/nodes/node-a'), 'patches only its own node')
})

t.test('the patch tests the list it read', async (t) => {
  const { untaintPatch } = await import('../src/agent/taint.ts')
  const read = [{ key: STARTUP_TAINT, effect: 'NoSchedule' }, { key: 'x', effect: 'NoExecute' }]
  t.same(untaintPatch({ spec: { taints: read } }, STARTUP_TAINT), [{ op: 'test', path: '/spec/taints', value: read }, { op: 'replace', path: '/spec/taints', value: [read[1]] }])
  t.same(untaintPatch({ spec: { taints: [read[0]!] } }, STARTUP_TAINT), [{ op: 'test', path: '/spec/taints', value: [read[0]] }, { op: 'remove', path: '/spec/taints' }])
  t.equal(untaintPatch({ spec: {} }, STARTUP_TAINT), undefined)
})
