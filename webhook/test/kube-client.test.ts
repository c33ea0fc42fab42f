// The API clients retry a 429 (and a 5xx with Retry-After) after the server's Retry-After, as
// client-go's REST client does (rest/with_retry.go:309-318), a bounded number of times.
import t from 'tap'
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node'
import { makeApiClient } from '../src/kube-client.ts'
import { startApiStandIn } from './helpers.ts'

async function world(t: { teardown: (fn: () => unknown) => void }) {
  // No chaos here: these tests count the client's waits exactly, and a random 429 is one more.
  const { api, url, ca } = await startApiStandIn(t, 'tok', { chaos: '' })
  const kc = new KubeConfig()
  kc.loadFromOptions({ clusters: [{ name: 'c', server: url, caData: Buffer.from(ca.certPem).toString('base64') }], users: [{ name: 'u', token: 'tok' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' })
  return { api, kc }
}

t.test('a 429 is sent again after Retry-After and then succeeds', async (t) => {
  const { api, kc } = await world(t)
  const waits: number[] = []
  const core = makeApiClient(kc, CoreV1Api, { sleep: async (ms) => { waits.push(ms); await new Promise((r) => setTimeout(r, 50)) } })
  api.overload(120, 1)
  const ns = await core.readNamespace({ name: 'kube-system' })
  t.equal(ns.metadata?.name, 'kube-system')
  t.ok(waits.length >= 1, `retried ${waits.length} time(s)`)
  t.ok(waits.every((w) => w === 1000), 'each wait is the Retry-After the server sent')
})

t.test('a 429 that does not end is given up after maxRetries, as the 429 the caller can read', async (t) => {
  const { api, kc } = await world(t)
  let sent = 0
  const core = makeApiClient(kc, CoreV1Api, { maxRetries: 3, sleep: async () => { sent++ } })
  api.overload(60_000, 1)
  const err = await core.readNamespace({ name: 'kube-system' }).then(() => undefined, (e: { code?: number }) => e)
  t.equal(err?.code, 429)
  t.equal(sent, 3, 'three waits, four requests')
})

t.test('other failures are not retried: a 404 comes back at once', async (t) => {
  const { kc } = await world(t)
  let waits = 0
  const core = makeApiClient(kc, CoreV1Api, { sleep: async () => { waits++ } })
  const err = await core.readNamespace({ name: 'nope' }).then(() => undefined, (e: { code?: number }) => e)
  t.equal(err?.code, 404)
  t.equal(waits, 0)
})
