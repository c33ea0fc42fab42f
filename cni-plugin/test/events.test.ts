// Events on the pod for what its user must see: a refused or failed ADD, and repair's actions.
// The body is what the API accepts (checked against the stand-in's Events endpoint, which
// validates as the apiserver does), identical events are folded, sending never fails a request.
import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { pino } from 'pino'
import { addFailureEvent, EventRecorder, podEvent, withFailureEvents } from '../src/agent/events.ts'
import { CniError, ErrorCode } from '../src/cni/spec.ts'
import { KubeEvents } from '../../e2e/node/lib/kube-events.ts'

const log = pino({ level: 'silent' })
const POD = { namespace: 'apps', name: 'web-1', uid: 'u-1' }

t.test('the Event body: involvedObject the pod, reporting controller and instance, Warning', async (t) => {
  const e = podEvent(POD, 'Warning', 'InterceptionRefused', 'x'.repeat(2000), 'node-a', new Date('2026-01-02T03:04:05.678Z'), 'abc') as Record<string, unknown>
  t.match(e, {
    apiVersion: 'v1', kind: 'Event', metadata: { name: 'web-1.abc', namespace: 'apps' },
    involvedObject: { apiVersion: 'v1', kind: 'Pod', namespace: 'apps', name: 'web-1', uid: 'u-1' },
    type: 'Warning', reason: 'InterceptionRefused', source: { component: 'ziti-cni-agent', host: 'node-a' },
    reportingComponent: 'ziti-cni-agent', reportingInstance: 'node-a', firstTimestamp: '2026-01-02T03:04:05Z', count: 1,
  })
  t.equal((e.message as string).length, 1024, 'long messages are cut to the API\'s note limit')
})

t.test('accepted by the API\'s Events endpoint; a namespace mismatch is refused there', async (t) => {
  const api = new KubeEvents()
  const server = createServer((req, res) => { void api.handle(req, res, new URL(req.url!, 'http://x')) })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise((r) => server.close(r)))
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const post = async (ns: string, body: object) => fetch(`${base}/api/v1/namespaces/${ns}/events`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } })
  const ok = await post('apps', podEvent(POD, 'Warning', 'InterceptionFailed', 'nft failed', 'node-a', new Date(), 'f00'))
  t.equal(ok.status, 201)
  const wrong = await post('apps', { ...podEvent({ ...POD, namespace: 'other' }, 'Warning', 'R', 'm', 'n', new Date(), 'x'), metadata: { name: 'web-1.x', namespace: 'apps' } })
  t.equal(wrong.status, 422)
  t.match(((await wrong.json()) as { message: string }).message, /involvedObject\.namespace: Invalid value: "other": does not match event\.namespace/)
  const list = await (await fetch(`${base}/api/v1/namespaces/apps/events`)).json() as { items: Array<{ reason: string }> }
  t.same(list.items.map((e) => e.reason), ['InterceptionFailed'])
})

t.test('the recorder folds identical events for 10 minutes and never throws', async (t) => {
  let now = 0
  const posted: string[] = []
  let fail = false
  const rec = new EventRecorder({ node: 'n', log, now: () => now, post: async (_ns, body) => { if (fail) throw new Error('403 Forbidden'); posted.push((body as { reason: string }).reason) } })
  await rec.record(POD, 'Warning', 'A', 'same')
  await rec.record(POD, 'Warning', 'A', 'same')
  await rec.record(POD, 'Warning', 'A', 'other message')
  t.same(posted, ['A', 'A'], 'a repeat is folded, a different message is not')
  now += 10 * 60_000
  await rec.record(POD, 'Warning', 'A', 'same')
  t.equal(posted.length, 3, 'after 10 minutes it is sent again')
  fail = true
  await rec.record(POD, 'Warning', 'B', 'x')
  t.pass('a refused Event is logged, not thrown')
})

t.test('a failed ADD leaves an Event on its pod; DEL, CHECK and successes do not', async (t) => {
  const posted: Array<{ reason: string; message: string; involvedObject: { name: string } }> = []
  const rec = new EventRecorder({ node: 'n', log, post: async (_ns, body) => { posted.push(body as never) } })
  let fail: Error | undefined
  const h = withFailureEvents({ handle: async () => { if (fail) throw fail; return { ok: true, intercepted: true } } }, rec)
  const req = (command: 'ADD' | 'DEL' | 'CHECK') => ({ command, containerId: 'c', netns: '/var/run/netns/x', ifName: 'eth0', pod: POD, validAttachments: [] })
  await h.handle(req('ADD'))
  fail = new CniError(ErrorCode.InvalidIntent, 'pod apps/web-1: dnat[0].port must be 1-65535', 'nothing was programmed')
  await t.rejects(h.handle(req('ADD')), /dnat/, 'the error still reaches the CNI caller')
  await t.rejects(h.handle(req('DEL')))
  await t.rejects(h.handle(req('CHECK')))
  await new Promise((r) => setImmediate(r))
  t.equal(posted.length, 1, 'one Event, for the ADD')
  t.equal(posted[0]!.reason, 'InterceptionRefused')
  t.match(posted[0]!.message, /refused the pod's interception intent.*dnat\[0\]\.port must be 1-65535 \(nothing was programmed\)/)
  t.equal(addFailureEvent(new CniError(ErrorCode.ProgrammingFailed, 'nft -f failed'))!.reason, 'InterceptionFailed')
  t.match(addFailureEvent(new CniError(ErrorCode.PodLookupFailed, 'timeout'))!.message, /could not read the pod/)
})
