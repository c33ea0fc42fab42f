// Repair by deletion: bounded to this node, to a node whose CNI config carries ziti-cni, and
// to a rate; off (report only) unless asked.
import t from 'tap'
import { pino } from 'pino'
import { Repairer, needsRepair } from '../src/agent/repair.ts'

const failed = (name: string, node = 'n1', uid = `uid-${name}`) => ({
  metadata: { name, namespace: 'apps', uid, annotations: { 'cni.openziti.io/interception': '{}' } },
  spec: { nodeName: node, containers: [] },
  status: { initContainerStatuses: [{ name: 'ziti-cni-validator', ready: false, restartCount: 0, image: 'v', imageID: '', state: { terminated: { exitCode: 126 } } }] },
}) as never

function repairer(over: { mode?: 'off' | 'delete'; installed?: () => boolean; maxPerMinute?: number; now?: () => number } = {}) {
  const deleted: string[] = []
  const counts: string[] = []
  const r = new Repairer({
    mode: over.mode ?? 'delete', nodeName: 'n1', installed: over.installed ?? (() => true), maxPerMinute: over.maxPerMinute ?? 5,
    deletePod: async (_ns, name) => { deleted.push(name) }, log: pino({ level: 'silent' }), count: (a) => counts.push(a), ...(over.now ? { now: over.now } : {}),
  })
  return { r, deleted, counts }
}

t.test('needsRepair: intent and a validator that exited 126', async (t) => {
  t.ok(needsRepair(failed('a')))
  t.notOk(needsRepair({ ...failed('a') as object, metadata: { name: 'a', uid: 'u' } } as never), 'no intent: not ours')
})

t.test('off (the default): reported, never deleted', async (t) => {
  const { r, deleted, counts } = repairer({ mode: 'off' })
  await r.consider(failed('a'))
  t.same(deleted, [])
  t.same(counts, ['reported'])
})

t.test('only pods on this node', async (t) => {
  const { r, deleted } = repairer()
  await r.consider(failed('elsewhere', 'n2'))
  t.same(deleted, [])
})

t.test('waits until ziti-cni is in this node\'s CNI config, then deletes', async (t) => {
  let installed = false
  const { r, deleted } = repairer({ installed: () => installed })
  await r.consider(failed('a'))
  t.same(deleted, [], 'not while the recreated pod would fail the same way')
  installed = true
  await r.tick()
  t.same(deleted, ['a'])
  await r.tick()
  await r.consider(failed('a'))
  t.same(deleted, ['a'], 'once per pod')
})

t.test('rate-limited: at most maxPerMinute deletions a minute, the rest deferred', async (t) => {
  let now = 0
  const { r, deleted, counts } = repairer({ maxPerMinute: 2, now: () => now })
  for (const n of ['a', 'b', 'c', 'd']) await r.consider(failed(n))
  t.same(deleted, ['a', 'b'])
  t.equal(counts.filter((c) => c === 'deferred').length, 2)
  now = 61_000
  await r.tick()
  t.same(deleted, ['a', 'b', 'c', 'd'], 'the deferred ones go a minute later')
})

t.test('a deletion the API refuses for now (429) is tried again by tick(); a pod already gone is not', async (t) => {
  const answers: Array<number | undefined> = [429, undefined]
  const deleted: string[] = []
  const counts: string[] = []
  const r = new Repairer({
    mode: 'delete', nodeName: 'n1', installed: () => true, maxPerMinute: 5, log: pino({ level: 'silent' }), count: (a) => counts.push(a),
    deletePod: async (_ns, name) => {
      const code = answers.shift()
      if (code) throw Object.assign(new Error(`HTTP-Code: ${code}`), { code })
      deleted.push(name)
    },
  })
  await r.consider(failed('busy'))
  t.same([deleted, counts], [[], ['failed']], 'the 429 is a failure')
  await r.tick()
  t.same([deleted, counts], [['busy'], ['failed', 'deleted']], 'the next tick deletes it')
  answers.push(404)
  await r.consider(failed('gone'))
  await r.tick()
  t.same(deleted, ['busy'], 'a 404 (already gone) is not retried')
})
