// The agent's intent snapshot writer: one bit per pod of this node, root-only, atomic,
// debounced, bounded; and the format the executable parses back.
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { V1Pod } from '@kubernetes/client-node'
import { SnapshotWriter, snapshotEntry } from '../src/agent/snapshot.ts'
import { decide, parseSnapshot } from '../src/cni/intent-snapshot.ts'

const pod = (name: string, uid: string, annotations?: Record<string, string>): V1Pod => ({ metadata: { namespace: 'apps', name, uid, annotations } })

t.test('the writer records intent as one bit and writes 0600, after a debounce and on flush', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-snap-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'intents.json')
  const w = new SnapshotWriter(path, 'node-a', 20)
  w.flush()
  t.same(parseSnapshot(readFileSync(path, 'utf8')), { v: 1, state: 'installed', node: 'node-a', pods: [] }, 'written at start, empty: every pod fails closed until seen')
  t.equal(statSync(path).mode & 0o777, 0o600, 'root-only')
  w.observe(pod('plain', 'u1'))
  w.observe(pod('web', 'u2', { 'cni.openziti.io/interception': '{"v":1,"mode":"proxy","uid":2171,"dnat":[],"fence":[]}' }))
  w.observe(pod('broken', 'u3', { 'cni.openziti.io/interception': 'not json' }))
  w.observe({ metadata: { name: 'no-uid' } })
  t.same((parseSnapshot(readFileSync(path, 'utf8')) as { pods: unknown[] }).pods, [], 'not yet: debounced')
  await new Promise((r) => setTimeout(r, 80))
  const s = parseSnapshot(readFileSync(path, 'utf8'))
  t.same(s, { v: 1, state: 'installed', node: 'node-a', pods: [
    { namespace: 'apps', name: 'plain', uid: 'u1', intent: false },
    { namespace: 'apps', name: 'web', uid: 'u2', intent: true },
    { namespace: 'apps', name: 'broken', uid: 'u3', intent: true },
  ] }, 'a malformed intent counts as intent; a pod without uid is left out')
  t.notMatch(readFileSync(path, 'utf8'), /dnat|2171|mode/, 'nothing of the intent itself is written')
  t.equal(decide(s, { namespace: 'apps', name: 'plain', uid: 'u1' }).verdict, 'pass')
  t.equal(decide(s, { namespace: 'apps', name: 'web', uid: 'u2' }).verdict, 'fail')
  t.equal(decide(s, { namespace: 'apps', name: 'broken', uid: 'u3' }).verdict, 'fail')
  t.equal(decide(s, { namespace: 'apps', name: 'plain', uid: 'u9' }).verdict, 'fail', 'another incarnation fails closed')
  // An update that adds intent (before the admission policy refuses it) flips the bit.
  w.observe(pod('plain', 'u1', { 'cni.openziti.io/interception': '{}' }))
  w.flush()
  t.equal(decide(parseSnapshot(readFileSync(path, 'utf8')), { namespace: 'apps', name: 'plain', uid: 'u1' }).verdict, 'fail')
})

t.test('bounded: the oldest entries age out', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-snap-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const w = new SnapshotWriter(join(dir, 's.json'), 'n', 10_000)
  for (let i = 0; i < 4100; i++) w.observe(pod(`p${i}`, `u${i}`))
  w.flush()
  const s = parseSnapshot(readFileSync(join(dir, 's.json'), 'utf8')) as { pods: Array<{ uid: string }> }
  t.equal(s.pods.length, 4096)
  t.equal(s.pods[0]!.uid, 'u4', 'the first four are gone')
  t.ok(existsSync(join(dir, 's.json')))
})

t.test('parse refuses anything that is not exactly the format', async (t) => {
  t.match(parseSnapshot('{"v":2}'), /field v: 2 is not 1/)
  t.match(parseSnapshot('{"v":1,"state":"maybe"}'), /field state/)
  t.match(parseSnapshot('{"v":1,"state":"installed","pods":[]}'), /field node/)
  t.match(parseSnapshot('{"v":1,"state":"installed","node":"n"}'), /field pods: must be an array/)
  t.match(parseSnapshot('[]'), /not a JSON object/)
  t.same(snapshotEntry({ metadata: { namespace: 'a', name: 'b' } }), undefined)
})
