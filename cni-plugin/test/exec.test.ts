// The agent's EXEC request (src/agent/exec.ts through the CNI socket server): a raw CNI
// invocation in, `<exitCode> <bytes>\n` + the plugin's stdout out, answered by the same
// runPlugin() the Node executable runs, its agent calls going straight to the handler.
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { MAX_MESSAGE_BYTES, type AgentRequest, type AgentResponse } from '../src/cni/agent-protocol.ts'
import { createAgentMetrics } from '../src/agent/metrics.ts'
import { createCniServer } from '../src/agent/server.ts'
import { versionResult } from '../src/cni/spec.ts'

const dir = mkdtempSync(join(tmpdir(), 'zcni-exec-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const SOCKET = join(dir, 'agent.sock')
const handled: AgentRequest[] = []
let next: AgentResponse = { ok: true, intercepted: true, mode: 'proxy' }
const server = createCniServer({ handle: async (r) => { handled.push(r); return next } }, createAgentMetrics(), pino({ level: 'silent' }), SOCKET)
t.before(() => new Promise<void>((r) => server.listen(SOCKET, () => r())))
t.teardown(() => new Promise<void>((r) => server.close(() => r())))

/** Sends raw bytes, returns every byte of the answer up to the agent's close. */
function send(raw: string | Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = connect(SOCKET)
    const out: Buffer[] = []
    c.on('connect', () => c.write(raw))
    c.on('data', (d: Buffer) => out.push(d))
    c.on('end', () => resolve(Buffer.concat(out)))
    c.on('error', reject)
  })
}
/** The reply split as the front end reads it. */
function parse(reply: Buffer): { code: number; stdout: string } {
  const nl = reply.indexOf(10)
  const m = /^(\d{1,3}) (\d+)$/.exec(reply.subarray(0, nl).toString())
  if (!m) throw new Error(`not an EXEC reply: ${reply.toString()}`)
  const stdout = reply.subarray(nl + 1)
  if (stdout.length !== Number(m[2])) throw new Error(`reply says ${m[2]} bytes, carries ${stdout.length}`)
  return { code: Number(m[1]), stdout: stdout.toString() }
}

const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }], ips: [{ address: '10.22.0.5/16', interface: 0 }] }
const conf = (extra: object = {}) => JSON.stringify({ cniVersion: '1.1.0', name: 'k8s', type: 'ziti-cni', agentSocket: SOCKET, prevResult, ...extra })
const env = (command: string) => ({ CNI_COMMAND: command, CNI_CONTAINERID: 'c0ffee', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: 'K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web;K8S_POD_UID=u1' })
const exec = async (command: string, stdin = conf(), e: object = env(command)) => parse(await send(JSON.stringify({ command: 'EXEC', env: e, stdin }) + '\n'))

t.test('VERSION answers the version result, no agent call', async (t) => {
  const before = handled.length
  const r = await exec('VERSION', '', { CNI_COMMAND: 'VERSION' })
  t.equal(r.code, 0)
  t.same(JSON.parse(r.stdout), versionResult())
  t.equal(handled.length, before)
})

t.test('ADD, CHECK, DEL, GC, STATUS run the plugin with the handler as its agent', async (t) => {
  next = { ok: true, intercepted: true, mode: 'proxy' }
  const add = await exec('ADD')
  t.equal(add.code, 0)
  t.equal(add.stdout, JSON.stringify({ ...prevResult, cniVersion: '1.1.0' }) + '\n', 'prevResult at the caller\'s version, with the newline the executable prints')
  t.same(handled.at(-1), { command: 'ADD', containerId: 'c0ffee', netns: '/var/run/netns/x', ifName: 'eth0', pod: { namespace: 'apps', name: 'web', uid: 'u1' }, validAttachments: [], podIps: ['10.22.0.5'] })
  for (const command of ['CHECK', 'DEL']) {
    const r = await exec(command)
    t.same(r, { code: 0, stdout: '' }, `${command} prints nothing`)
    t.equal(handled.at(-1)?.command, command)
  }
  const gc = await exec('GC', conf({ 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth0' }] }))
  t.same(gc, { code: 0, stdout: '' })
  t.same(handled.at(-1)?.validAttachments, [{ containerID: 'keep', ifname: 'eth0' }])
  const before = handled.length
  t.same(await exec('STATUS'), { code: 0, stdout: '' }, 'STATUS: the agent is the one answering, so it is up')
  t.equal(handled.length, before, 'STATUS asks no handler')
})

t.test('the agent\'s refusal is the plugin\'s CNI error and exit code', async (t) => {
  next = { ok: false, code: 11, msg: 'pod apps/web not found yet' }
  const r = await exec('ADD')
  t.equal(r.code, 1)
  t.match(JSON.parse(r.stdout), { cniVersion: '1.1.0', code: 11, msg: 'pod apps/web not found yet' })
  next = { ok: true, intercepted: true }
})

t.test('a bad request inside EXEC gets the plugin\'s own error (one implementation)', async (t) => {
  const r = await exec('ADD', conf({ prevResult: undefined }))
  t.equal(r.code, 1)
  t.match(JSON.parse(r.stdout), { code: 7, msg: /chained plugin/ })
  const notJson = await exec('ADD', '{not json')
  t.equal(notJson.code, 1)
  t.match(JSON.parse(notJson.stdout), { code: 6 })
})

t.test('a config naming another agent\'s socket: the front end is told to fall back', async (t) => {
  const before = handled.length
  const reply = (await send(JSON.stringify({ command: 'EXEC', env: env('ADD'), stdin: conf({ agentSocket: '/var/run/other/agent.sock' }) }) + '\n')).toString()
  t.match(reply, /^fallback: the config's agentSocket is \/var\/run\/other\/agent\.sock; this agent listens on .*agent\.sock\n$/)
  t.equal(handled.length, before, 'nothing handled')
  // Without agentSocket the default applies, which is not this test's socket either.
  t.match((await send(JSON.stringify({ command: 'EXEC', env: env('DEL'), stdin: conf({ agentSocket: undefined }) }) + '\n')).toString(), /^fallback: .*\/var\/run\/ziti-cni\/agent\.sock/)
})

t.test('bad framing is refused with a CNI error naming the field', async (t) => {
  const refuse = async (body: object, why: RegExp) => {
    const r = parse(await send(JSON.stringify(body) + '\n'))
    t.equal(r.code, 1)
    t.match(JSON.parse(r.stdout), { code: 6, msg: why }, why.source)
  }
  await refuse({ command: 'EXEC', env: { ...env('ADD'), LD_PRELOAD: '/x.so' }, stdin: conf() }, /env: unknown key "LD_PRELOAD"/)
  await refuse({ command: 'EXEC', env: { ...env('ADD'), CNI_NETNS: 5 }, stdin: conf() }, /env\.CNI_NETNS must be a string/)
  await refuse({ command: 'EXEC', env: { CNI_NETNS: '/x' }, stdin: conf() }, /env\.CNI_COMMAND is required/)
  await refuse({ command: 'EXEC', env: env('ADD') }, /stdin must be a string/)
  await refuse({ command: 'EXEC', env: [], stdin: '' }, /env must be an object/)
  await refuse({ command: 'EXEC', env: env('ADD'), stdin: conf(), extra: 1 }, /unknown field "extra"/)
  t.same(JSON.parse((await send('{"command":"EXEC"\n')).toString()), { ok: false, code: 6, msg: 'agent request is not JSON' }, 'not JSON: the JSON-line error, which the front end treats as "fall back"')
})

t.test('oversized: a line over MAX_MESSAGE_BYTES is cut off with an error, not handled', async (t) => {
  const before = handled.length
  const reply = await send(JSON.stringify({ command: 'EXEC', env: env('ADD'), stdin: conf({ pad: 'x'.repeat(MAX_MESSAGE_BYTES) }) }) + '\n')
  t.match(JSON.parse(reply.toString()), { ok: false, msg: 'agent request is too large' })
  t.equal(handled.length, before)
})

t.test('the JSON-line protocol is unchanged beside it', async (t) => {
  t.same(JSON.parse((await send(JSON.stringify({ command: 'PING', containerId: '', netns: '', ifName: '', validAttachments: [] }) + '\n')).toString()), { ok: true, intercepted: false })
})
