// Drift detection on a real kernel: the agent's Programmer programs scratch pod netns with
// nsenter + nft/ip/tc/sysctl, someone changes them under the pod, and the drift pass notices
// (metric, log, Event), re-programs from the record or leaves it (--drift), never re-programs
// from an annotation edited after ADD, and never resurrects an attachment a DEL removed.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import type { CoreV1Event } from '@kubernetes/client-node'
import { rootOnly, scratchNetns } from '../../shared/testkit/root.ts'
import { DriftDetector, driftEvent, type DriftAction } from '../src/agent/drift.ts'
import { createNetns } from '../src/agent/netns.ts'
import type { PodSource } from '../src/agent/pods.ts'
import { Programmer } from '../src/agent/programmer.ts'
import { StateStore } from '../src/agent/state.ts'
import { parseFlags } from '../src/agent/flags.ts'

const PROXY = '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.2","proto":"tcp","port":5432,"to":15100}],"fence":[15100]}'
const EDITED = '{"v":1,"mode":"proxy","uid":2171,"dnat":[{"dst":"100.64.0.9","proto":"tcp","port":22,"to":15100}],"fence":[15100]}'
const EBPF = '{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10"],"proto":["tcp","udp"],"to":15001,"datapath":"ebpf","fence":[15001]}'
const BPF_OBJECT = new URL('../dist/tproxy.bpf.o', import.meta.url).pathname

t.test('flags: --drift and --drift-interval', async (t) => {
  const f = parseFlags(['--node-name', 'n'], {})
  t.equal(f.drift, 'reprogram', 're-program by default: the record is what ADD applied once')
  t.equal(f.driftIntervalMs, 60_000)
  t.equal(parseFlags(['--node-name', 'n', '--drift', 'report', '--drift-interval', '30'], {}).driftIntervalMs, 30_000)
  t.throws(() => parseFlags(['--node-name', 'n', '--drift', 'fix'], {}), { message: '--drift: "fix" is not reprogram, report or off' })
  t.throws(() => parseFlags(['--node-name', 'n', '--drift-interval', '1'], {}), { message: '--drift-interval must be 5-86400 seconds' })
})

t.test('the Event: on the pod, Warning, named reason, bounded message', async (t) => {
  const s = { containerId: 'c', ifName: 'eth0', netns: '/x', pod: { namespace: 'apps', name: 'web', uid: 'u-1' }, mode: 'proxy' as const, intent: PROXY, listing: '', createdAt: '' }
  const e = driftEvent(s, 'node-a', `interception drift: ${'x'.repeat(2000)}`, 'report', new Date(1_700_000_000_000))
  t.same(e.involvedObject, { apiVersion: 'v1', kind: 'Pod', namespace: 'apps', name: 'web', uid: 'u-1' })
  t.equal(e.metadata.namespace, 'apps')
  t.equal(e.metadata.name, `web.${(1_700_000_000_000n * 1_000_000n).toString(16)}`, 'named as the kubelet names its Events')
  t.equal(e.type, 'Warning')
  t.equal(e.reason, 'ZitiInterceptionDrift')
  t.ok(e.message!.length <= 1024, 'under the API server\'s 1024-byte limit')
})

t.test('drift pass on a real kernel', rootOnly(['nft', 'ip', 'nsenter', 'tc', 'sysctl']), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-drift-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const state = new StateStore(join(dir, 'state'))
  const netns = createNetns({ hostNetns: '/proc/self/ns/net', nsenter: 'nsenter', timeoutMs: 5000 })
  const log = pino({ level: 'silent' })
  // What the API says the pods carry now (a namespace admin may have edited one since ADD).
  const annotations = new Map<string, string>()
  const pods: PodSource = {
    get: async (ref) => ({ source: 'cache', pod: { metadata: { namespace: ref.namespace, name: ref.name, uid: ref.uid, annotations: { 'cni.openziti.io/interception': annotations.get(ref.name)! } } } }),
    cachedCount: () => 0, synced: () => true, onPod: () => {}, stop: async () => {},
  }
  const programmer = new Programmer({ netns, pods, state, log, lookupDeadlineMs: 1000, bpfObject: BPF_OBJECT })
  const events: CoreV1Event[] = []
  const registry = new Registry()
  const detector = (action: DriftAction) => new DriftDetector({ netns, state, log, lookupDeadlineMs: 1000, bpfObject: BPF_OBJECT, action, nodeName: 'node-a', minAgeMs: 0, registry: action === 'reprogram' ? registry : undefined, emitEvent: async (e) => { events.push(e) } })
  const reprogram = detector('reprogram')
  const report = detector('report')
  const pod = async (name: string, intent: string) => {
    const ns = scratchNetns('zcni-dr')
    t.teardown(ns.remove)
    // The primary plugin's eth0 with the pod's address (the eBPF routes use it as their source);
    // a veth as bridge makes (no dummy module on this kernel), both ends in the pod netns.
    for (const argv of [['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p'], ['addr', 'add', '10.244.0.5/24', 'dev', 'eth0'], ['link', 'set', 'eth0p', 'up'], ['link', 'set', 'eth0', 'up']]) t.equal(spawnSync('ip', ['-n', ns.name, ...argv]).status, 0, `ip ${argv.join(' ')}`)
    annotations.set(name, intent)
    const req = { command: 'ADD' as const, containerId: `ctr-${name}`, ifName: 'eth0', netns: ns.path, pod: { namespace: 'apps', name, uid: `uid-${name}` }, validAttachments: [], podIps: ['10.244.0.5'] }
    t.same(await programmer.add(req), { ok: true, intercepted: true, mode: JSON.parse(intent).mode })
    return { ns, req }
  }
  const nsExec = (path: string, ...argv: string[]) => spawnSync('nsenter', [`--net=${path}`, ...argv], { encoding: 'utf8' })
  const table = (path: string) => nsExec(path, 'nft', 'list', 'table', 'inet', 'ziti_cni')

  const counts = async (p: Promise<{ checked: number; drifted: number; reprogrammed: number; failed: number }>) => { const r = await p; return { checked: r.checked, drifted: r.drifted, reprogrammed: r.reprogrammed, failed: r.failed } }
  const metric = async (outcome: string) => Number(new RegExp(`ziti_cni_drift_total\\{outcome="${outcome}"\\} (\\d+)`).exec(await registry.metrics())?.[1] ?? 0)

  const web = await pod('web', PROXY)
  const before = table(web.ns.path).stdout
  t.match(before, /100\.64\.0\.2 \. tcp \. 5432 : 15100/)
  t.same(await counts(reprogram.pass(state.list())), { checked: 1, drifted: 0, reprogrammed: 0, failed: 0 }, 'an untouched pod is no drift')
  t.equal(events.length, 0)

  await t.test('a deleted table is noticed and re-programmed from the record', async (t) => {
    t.equal(nsExec(web.ns.path, 'nft', 'delete', 'table', 'inet', 'ziti_cni').status, 0)
    t.same(await counts(reprogram.pass(state.list())), { checked: 1, drifted: 1, reprogrammed: 1, failed: 0 })
    t.equal(table(web.ns.path).stdout, before, 'the same table is back')
    t.equal(events.length, 1, 'one Event')
    t.match(events[0], { involvedObject: { kind: 'Pod', namespace: 'apps', name: 'web', uid: 'uid-web' }, type: 'Warning', reason: 'ZitiInterceptionDrift' })
    t.match(events[0]!.message, /^interception drift: table ziti_cni is missing from \/var\/run\/netns\/zcni-dr-[0-9a-f]+; the ziti-cni agent re-programmed it from its record$/)
    t.equal(await metric('detected'), 1, 'counted')
    t.equal(await metric('reprogrammed'), 1)
    t.same(await counts(reprogram.pass(state.list())), { checked: 1, drifted: 0, reprogrammed: 0, failed: 0 }, 'and the next pass finds nothing')
  })

  await t.test('--drift=report: noticed, reported, left as found', async (t) => {
    nsExec(web.ns.path, 'nft', 'flush', 'chain', 'inet', 'ziti_cni', 'fence_input')
    events.length = 0
    t.same(await counts(report.pass(state.list())), { checked: 1, drifted: 1, reprogrammed: 0, failed: 0 })
    t.notMatch(table(web.ns.path).stdout, /iifname != "lo"/, 'still flushed')
    t.match(events[0]!.message, /differs from what ADD programmed; left as found \(agent --drift=report\)$/)
    await reprogram.pass(state.list())
    t.equal(table(web.ns.path).stdout, before, 'a later re-programming pass restores it')
  })

  await t.test('an annotation edited after ADD never reaches the netns through drift repair', async (t) => {
    // Whoever may patch the pod (not the webhook: it only sees CREATE) rewrites the intent.
    annotations.set('web', EDITED)
    nsExec(web.ns.path, 'nft', 'delete', 'table', 'inet', 'ziti_cni')
    t.same(await counts(reprogram.pass(state.list())), { checked: 1, drifted: 1, reprogrammed: 1, failed: 0 })
    t.equal(table(web.ns.path).stdout, before, 're-programmed from the recorded intent')
    t.notMatch(table(web.ns.path).stdout, /100\.64\.0\.9/, 'not from the edited one')
    annotations.set('web', PROXY)
  })

  await t.test('a DEL that ran meanwhile is not undone', async (t) => {
    const snapshot = state.list()
    nsExec(web.ns.path, 'nft', 'delete', 'table', 'inet', 'ziti_cni')
    await programmer.del({ ...web.req, command: 'DEL' })
    t.same(await counts(reprogram.pass(snapshot)), { checked: 1, drifted: 1, reprogrammed: 0, failed: 0 }, 'seen in the stale list, not re-programmed')
    t.not(table(web.ns.path).status, 0, 'no table resurrected')
    t.same(state.list(), [], 'no record resurrected')
  })

  await t.test('ebpf datapath: a detached program, a deleted local route and a reset sysctl are each drift', async (t) => {
    const tp = await pod('tp', EBPF)
    const pass = () => counts(reprogram.pass(state.list()))
    t.same(await pass(), { checked: 1, drifted: 0, reprogrammed: 0, failed: 0 })
    events.length = 0
    nsExec(tp.ns.path, 'tc', 'filter', 'del', 'dev', 'lo', 'ingress')
    t.same(await pass(), { checked: 1, drifted: 1, reprogrammed: 1, failed: 0 })
    t.match(events.at(-1)!.message, /the eBPF program is not attached to lo ingress/)
    t.match(nsExec(tp.ns.path, 'tc', 'filter', 'show', 'dev', 'lo', 'ingress').stdout, /ziti_tproxy/, 'attached again')
    t.equal(nsExec(tp.ns.path, 'ip', '-4', 'route', 'del', 'local', '100.64.0.0/10', 'dev', 'lo', 'table', 'local').status, 0, 'an admin deletes the local route')
    t.same(await pass(), { checked: 1, drifted: 1, reprogrammed: 1, failed: 0 })
    t.match(events.at(-1)!.message, /IPv4 local route 100\.64\.0\.0\/10 in table local is missing/)
    t.match(nsExec(tp.ns.path, 'ip', '-4', 'route', 'show', 'table', 'local', 'type', 'local').stdout, /^local 100\.64\.0\.0\/10 dev lo .*src 10\.244\.0\.5/m, 'back, with its source')
    t.equal(nsExec(tp.ns.path, 'sysctl', '-qw', 'net.ipv4.conf.all.arp_ignore=0').status, 0)
    t.same(await pass(), { checked: 1, drifted: 1, reprogrammed: 1, failed: 0 })
    t.match(events.at(-1)!.message, /net\.ipv4\.conf\.all\.arp_ignore is 0, not 1/)
    t.equal(nsExec(tp.ns.path, 'sysctl', '-n', 'net.ipv4.conf.all.arp_ignore').stdout.trim(), '1')
    t.same(await pass(), { checked: 1, drifted: 0, reprogrammed: 0, failed: 0 }, 'clean after each repair')
  })

  await t.test('the pass waits while CNI requests are in flight', async (t) => {
    let busy = true
    const polite = new DriftDetector({ netns, state, log, lookupDeadlineMs: 1000, bpfObject: BPF_OBJECT, action: 'reprogram', nodeName: 'node-a', minAgeMs: 0, emitEvent: async () => {}, busy: () => busy })
    let done = false
    const pass = polite.pass(state.list()).then((r) => { done = true; return r })
    await new Promise((r) => setTimeout(r, 300))
    t.notOk(done, 'not while an ADD is being handled')
    busy = false
    t.equal((await pass).checked, state.list().length, 'then it runs')
  })

  await t.test('attachments younger than the interval are left to their ADD; vanished netns are skipped', async (t) => {
    const young = new DriftDetector({ netns, state, log, lookupDeadlineMs: 1000, bpfObject: BPF_OBJECT, action: 'reprogram', nodeName: 'node-a', minAgeMs: 3_600_000, emitEvent: async () => {} })
    t.same(await counts(young.pass(state.list())), { checked: 0, drifted: 0, reprogrammed: 0, failed: 0 })
    const gone = state.list().map((s) => ({ ...s, netns: '/var/run/netns/zcni-dr-vanished' }))
    t.same(await counts(reprogram.pass(gone)), { checked: 0, drifted: 0, reprogrammed: 0, failed: 0 })
  })
})
