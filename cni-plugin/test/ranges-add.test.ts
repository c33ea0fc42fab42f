// ADD refuses a pod whose own address lies in what its intent takes over, before anything
// touches the netns: the CNI error names both ranges and the key; nothing is programmed or recorded.
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { CniError, ErrorCode } from '../src/cni/spec.ts'
import type { Netns } from '../src/agent/netns.ts'
import { Programmer } from '../src/agent/programmer.ts'
import { StateStore } from '../src/agent/state.ts'

t.test('ADD with the pod inside its intercept range', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-ranges-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const touched: string[] = []
  const netns = new Proxy({}, { get: (_o, k) => (...args: unknown[]) => { touched.push(String(k)); if (k === 'exists') return true; if (k === 'assertPodNetns') return undefined; return Promise.resolve({ code: 0, stdout: '', stderr: '' }) } }) as Netns
  const intent = '{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10"],"proto":["tcp","udp"],"to":15001,"datapath":"ebpf","fence":[15001]}'
  const state = new StateStore(dir)
  const programmer = new Programmer({
    netns, state, log: pino({ level: 'silent' }), lookupDeadlineMs: 1000, bpfObject: '/x.o',
    pods: { get: async (ref) => ({ source: 'cache', pod: { metadata: { ...ref, annotations: { 'cni.openziti.io/interception': intent } } } }), cachedCount: () => 0, synced: () => true, onPod: () => {}, stop: async () => {} },
  })
  const req = { command: 'ADD' as const, containerId: 'c1', ifName: 'eth0', netns: '/var/run/netns/x', pod: { namespace: 'apps', name: 'web', uid: 'u' }, validAttachments: [] }
  const err = await programmer.add({ ...req, podIps: ['100.64.12.9', 'fd00::9'] }).then(() => undefined, (e: unknown) => e)
  t.type(err, CniError)
  t.equal((err as CniError).code, ErrorCode.InvalidIntent)
  t.equal((err as CniError).message, 'pod apps/web: the pod\'s address 100.64.12.9 (from the primary CNI\'s result) lies inside the tproxy intercept range 100.64.0.0/10: the pod\'s own traffic would be taken over. Move it with annotation cni.openziti.io/intercept-cidrs or webhook config tproxy.defaultCidrs, or give pods addresses outside it')
  t.same(touched, [], 'nothing ran in the netns')
  t.same(state.list(), [], 'nothing recorded')
  // Control: a pod outside it gets as far as the netns (the stub netns then fails the ADD).
  await programmer.add({ ...req, podIps: ['10.244.1.9'] }).catch(() => undefined)
  t.ok(touched.includes('ipBatch'), 'a pod outside it is programmed')
})
