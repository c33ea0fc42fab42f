// The installed plugin needs nothing from the host but a kernel: every file the installer
// writes goes into an otherwise EMPTY root (no /proc, /dev, /etc/ld.so.cache, libc, shell),
// and the executable runs VERSION, ADD, CHECK, DEL and STATUS there under chroot, as libcni
// would exec it (absolute path, CNI_* environment, the conflist's entry with prevResult on
// stdin). Both of the executable's paths run there: forwarded to the agent (EXEC: the agent's
// real socket server and runPlugin(), with a stand-in for the Programmer that only records what
// it was asked) and the Node plugin it falls back to (an agent that speaks only the JSON-line
// protocol, as an older one; then no agent at all, where the intent snapshot inside the root
// decides). What is proven is that the executable starts, speaks the protocol and prints the
// spec's answers with no host library, not that a netns is programmed (the containerd tier
// does that).
// Every target arch's build runs it (dist/<arch>/): the host's natively, another arch's under
// qemu-user through a binfmt_misc entry with the F flag (the kernel opens qemu when the entry
// is registered, so nothing of qemu is needed inside the root). Every installed file is also
// read as ELF: built for that arch, the front end static, every DT_NEEDED inside ziti-cni.d.
import t from 'tap'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { rootOnly } from '../../shared/testkit/root.ts'
import { spawn, spawnSync } from 'node:child_process'
import { pino } from 'pino'
import { ensureConflist, installBinary, writeAgentAddress } from '../src/install/installer.ts'
import { createCniServer } from '../src/agent/server.ts'
import { createAgentMetrics } from '../src/agent/metrics.ts'
import type { AgentRequest } from '../src/cni/agent-protocol.ts'
import { renderSnapshot } from '../src/cni/intent-snapshot.ts'
import { ELF_MACHINE, readElf } from '../frontend/elf.ts'

type Arch = keyof typeof ELF_MACHINE
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]
/** qemu-user's name for each arch (Debian qemu-user-static: /usr/bin/qemu-<name>-static). */
const QEMU: Record<Arch, string> = { amd64: 'x86_64', arm64: 'aarch64' }
const HOST_ARCH: Arch | undefined = process.arch === 'x64' ? 'amd64' : process.arch === 'arm64' ? 'arm64' : undefined
const BINFMT = '/proc/sys/fs/binfmt_misc'
const BIN = '/opt/cni/bin'
const SOCKET = '/var/run/ziti-cni/agent.sock'
const SNAPSHOT = '/var/run/ziti-cni/intents.json'

/** chroot ROOT BINARY with exactly this environment (no PATH: nothing to find in there). */
function execProcess(binary: string, args: string[], env: Record<string, string>, stdin = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { env, stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.stderr.on('data', (c: Buffer) => err.push(c))
    child.stdin.on('error', () => { /* a process that exits before reading stdin */ })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }))
    child.stdin.end(stdin)
  })
}

function walk(dir: string, root = dir): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n)
    return statSync(p).isDirectory() ? [`${relative(root, p)}/`, ...walk(p, root)] : [relative(root, p)]
  })
}

/**
 * Makes the kernel run `arch`'s ELF executables through qemu-user until the test ends: a
 * binfmt_misc entry (magic: the ELF64 LSB header of an ET_EXEC/ET_DYN for that e_machine, as
 * qemu's scripts/qemu-binfmt-conf.sh registers it) with the F flag, so the interpreter is
 * opened now and need not exist inside the chroot. Entries added last are matched first.
 */
function emulate(t: Tap, arch: Arch): void {
  const qemu = `/usr/bin/qemu-${QEMU[arch]}-static`
  if (!existsSync(qemu)) throw new Error(`no ${qemu} (Debian qemu-user-static) to run the ${arch} build`)
  if (!existsSync(`${BINFMT}/register`)) {
    const mount = spawnSync('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT], { encoding: 'utf8' })
    if (mount.status !== 0) throw new Error(`cannot mount binfmt_misc on ${BINFMT}: ${mount.stderr.trim()}`)
    t.teardown(() => { spawnSync('umount', [BINFMT]) })
  }
  const hex = (bytes: number[]) => bytes.map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')
  const magic = hex([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, ELF_MACHINE[arch] & 0xff, ELF_MACHINE[arch] >> 8])
  const mask = hex([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff])
  const name = `zcni-test-${QEMU[arch]}-${process.pid}`
  writeFileSync(`${BINFMT}/register`, `:${name}:M::${magic}:${mask}:${qemu}:F`)
  t.teardown(() => writeFileSync(`${BINFMT}/${name}`, '-1'))
  t.match(readFileSync(`${BINFMT}/${name}`, 'utf8'), /^enabled\n[^]*flags: F/, `binfmt_misc runs ${arch} executables through ${qemu}`)
}

// Outside CI, a host without qemu-user skips the other arch; in CI it must run (rootOnly).
for (const arch of Object.keys(ELF_MACHINE) as Arch[]) t.test(`the installed ${arch} plugin runs in an empty root`, rootOnly(arch === HOST_ARCH ? ['chroot'] : ['chroot', `qemu-${QEMU[arch]}-static`]), async (t) => {
  const FRONT_END = new URL(`../dist/${arch}/ziti-cni`, import.meta.url).pathname
  if (!existsSync(FRONT_END) || !existsSync(`${FRONT_END}.d`)) return t.fail(`cni-plugin is not built for ${arch} with its runtime dir (pnpm build, without SKIP_SEA or ZITI_CNI_ARCHES)`)
  if (arch !== HOST_ARCH) emulate(t, arch)
  const root = mkdtempSync(join(tmpdir(), 'zcni-root-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  // Exactly what the installer writes: the executable and its dir, our conflist entry.
  const entry = { type: 'ziti-cni' as const, agentSocket: SOCKET, snapshot: SNAPSHOT, timeoutSeconds: 5 }
  writeAgentAddress(join(root, BIN), entry)
  installBinary(FRONT_END, join(root, BIN))
  mkdirSync(join(root, 'etc/cni/net.d'), { recursive: true })
  writeFileSync(join(root, 'etc/cni/net.d/10-bridge.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'bridge' }] }))
  ensureConflist(join(root, 'etc/cni/net.d'), entry)
  mkdirSync(join(root, 'var/run/ziti-cni'), { recursive: true, mode: 0o700 })

  const files = walk(root).sort()
  t.same(files.filter((f) => !f.startsWith('opt/cni/bin/') && !f.startsWith('etc/cni/net.d/10-bridge') && !f.endsWith('/')), [], 'nothing but the installed files')
  t.notOk(files.some((f) => /^(proc|dev|lib|lib64|usr|bin|sbin)\//.test(f)), 'no /proc, /dev, /lib*, /usr or shell')
  const installed = files.filter((f) => f.startsWith('opt/cni/bin/') && !f.endsWith('/'))
  const bytes = installed.reduce((n, f) => n + statSync(join(root, f)).size, 0)
  t.comment(`installed (${arch}): ${installed.length} files, ${(bytes / 2 ** 20).toFixed(1)} MiB: ${installed.map((f) => f.slice('opt/cni/bin/'.length)).join(', ')}`)

  // As ELF: all for this arch; the front end static; the rest needing nothing outside ziti-cni.d.
  t.equal(readFileSync(join(root, BIN, 'ziti-cni.d/agent-socket'), 'utf8'), `${SOCKET}\n5\n`, 'where the front end finds the agent')
  const elf = new Map(installed.filter((f) => !f.endsWith('/agent-socket')).map((f) => [f.slice('opt/cni/bin/'.length), readElf(join(root, f))]))
  t.same([...elf].filter(([, e]) => e.machine !== ELF_MACHINE[arch]).map(([f]) => f), [], `every installed file is an ${arch} ELF (e_machine ${ELF_MACHINE[arch]})`)
  t.same(elf.get('ziti-cni'), { machine: ELF_MACHINE[arch], interpreter: undefined, needed: [] }, 'the front end is static: no loader, no libraries')
  const inside = new Set([...elf.keys()].filter((f) => f.startsWith('ziti-cni.d/')).map((f) => f.slice('ziti-cni.d/'.length)))
  const loaderSoname = elf.get('ziti-cni.d/ld.so')?.soname
  t.ok(loaderSoname, 'ziti-cni.d/ld.so is the loader (has a soname)')
  const outside = [...elf].flatMap(([f, e]) => e.needed.filter((n) => n !== loaderSoname && !inside.has(n)).map((n) => `${f} needs ${n}`))
  t.same(outside, [], 'every DT_NEEDED is in ziti-cni.d (or is the loader itself)')
  t.ok(elf.get('ziti-cni.d/ziti-cni-node')?.needed.includes('libc.so.6'), '(the SEA is dynamic: the check above has something to check)')

  // The stdin libcni builds for our entry: the list's name and version, prevResult from bridge.
  const list = JSON.parse(readFileSync(join(root, 'etc/cni/net.d/10-bridge.conflist'), 'utf8')) as { name: string; plugins: Array<Record<string, unknown>> }
  const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-x' }], ips: [{ address: '10.22.0.5/16', interface: 0 }] }
  const stdin = (extra: object = {}) => JSON.stringify({ ...list.plugins.at(-1), cniVersion: '1.1.0', name: list.name, prevResult, ...extra })
  const env = (command: string, uid = 'uid-web') => ({
    CNI_COMMAND: command, CNI_CONTAINERID: 'c0ffee', CNI_NETNS: '/var/run/netns/cni-x', CNI_IFNAME: 'eth0', CNI_PATH: BIN,
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=${uid}`,
  })
  const run = (command: string, extra: object = {}, uid?: string) => execProcess('/usr/sbin/chroot', [root, `${BIN}/ziti-cni`], env(command, uid), command === 'VERSION' ? '' : stdin(extra))

  // Control: the Node binary alone, with the host's loader path, cannot even start here.
  const sea = join(root, BIN, 'ziti-cni.d/ziti-cni-node')
  chmodSync(sea, 0o755)
  const bare = await execProcess('/usr/sbin/chroot', [root, `${BIN}/ziti-cni.d/ziti-cni-node`], { CNI_COMMAND: 'VERSION' })
  chmodSync(sea, 0o644)
  t.not(bare.code, 0, 'the bare Node SEA fails in the empty root')
  t.match(bare.stderr, /No such file or directory/, '(no loader: what the front end fixes)')

  const version = await run('VERSION')
  t.equal(version.code, 0, version.stderr)
  t.same(JSON.parse(version.stdout), { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] })

  // Each connection's first request line, by command: which path each run took.
  const lines: string[] = []
  const listen = async (server: Server) => {
    server.on('connection', (c) => { let buf = ''; c.on('data', (d) => { if (!buf.includes('\n')) { buf += d.toString('utf8'); if (buf.includes('\n')) lines.push((JSON.parse(buf) as { command: string }).command) } }) })
    await new Promise<void>((r) => server.listen(join(root, SOCKET), () => r()))
    return () => new Promise<void>((r) => server.close(() => r()))
  }
  const podAsked = { command: 'ADD', containerId: 'c0ffee', netns: '/var/run/netns/cni-x', ifName: 'eth0', pod: { namespace: 'apps', name: 'web', uid: 'uid-web' }, validAttachments: [], podIps: ['10.22.0.5'] }

  // Path 1: the agent's own socket server answers EXEC (its path as the config names it).
  const handled: AgentRequest[] = []
  let stop = await listen(createCniServer({ handle: async (r) => { handled.push(r); return { ok: true, intercepted: true, mode: 'proxy' } } }, createAgentMetrics(), pino({ level: 'silent' }), SOCKET))
  const forwarded = await run('ADD')
  t.equal(forwarded.code, 0, forwarded.stderr + forwarded.stdout)
  t.same(JSON.parse(forwarded.stdout), { ...prevResult, cniVersion: '1.1.0' }, 'EXEC: ADD prints prevResult at the caller\'s version')
  t.same(handled.at(-1), podAsked, 'EXEC: the agent\'s handler got the pod')
  for (const command of ['CHECK', 'DEL', 'STATUS']) {
    const r = await run(command)
    t.same({ code: r.code, stdout: r.stdout }, { code: 0, stdout: '' }, `EXEC: ${command} succeeds, prints nothing`)
  }
  t.same(handled.map((r) => r.command), ['ADD', 'CHECK', 'DEL'], 'EXEC: STATUS needs no handler (the agent answering is the agent up)')
  const v = await run('VERSION')
  t.same(JSON.parse(v.stdout), JSON.parse(version.stdout), 'EXEC: VERSION, the same answer')
  t.same(lines, ['EXEC', 'EXEC', 'EXEC', 'EXEC', 'EXEC'], 'one EXEC connection per run: no Node plugin started')
  // Falls back, still with this agent up: stdin over 4 MiB (never sent; replayed whole to Node) ...
  lines.length = 0
  const big = await run('ADD', { padding: 'x'.repeat(5 << 20) })
  t.equal(big.code, 0, big.stdout.slice(0, 300))
  t.same(lines, ['ADD'], 'stdin over 4 MiB: no EXEC; the Node plugin read all of it (replayed) and asked the agent itself')
  // ... and a config naming another agent's socket: this agent declines, Node asks that one (absent).
  lines.length = 0
  const other = await run('ADD', { agentSocket: '/var/run/other/agent.sock' })
  t.same(lines, ['EXEC'], 'EXEC declined, nothing handled here')
  t.match(JSON.parse(other.stdout), { code: 11, msg: /cannot reach the agent at \/var\/run\/other\/agent\.sock/ }, 'the Node plugin tried the configured agent and failed closed')
  await stop()

  // Path 2: an agent that answers EXEC with a JSON-line error (an older agent): the Node plugin.
  lines.length = 0
  const requests: Array<Record<string, unknown>> = []
  stop = await listen(createServer((c) => {
    let buf = ''
    c.on('data', (d) => {
      buf += d.toString('utf8')
      if (!buf.includes('\n')) return
      const req = JSON.parse(buf) as Record<string, unknown>
      if (req.command === 'EXEC') return void c.end(JSON.stringify({ ok: false, code: 6, msg: 'agent request: command must be ADD, DEL, CHECK, GC or PING' }) + '\n')
      requests.push(req)
      c.end(JSON.stringify({ ok: true, intercepted: true, mode: 'proxy' }) + '\n')
    })
  }))

  const add = await run('ADD')
  t.equal(add.code, 0, add.stderr + add.stdout)
  t.same(JSON.parse(add.stdout), { ...prevResult, cniVersion: '1.1.0' }, 'ADD prints prevResult at the caller\'s version')
  t.same(requests.at(-1), podAsked, 'the agent got the pod, from the Node plugin (stdin replayed to it)')
  const check = await run('CHECK')
  t.equal(check.code, 0, check.stdout)
  t.equal(check.stdout, '', 'CHECK prints nothing on success')
  t.equal(requests.at(-1)?.command, 'CHECK')
  const del = await run('DEL')
  t.equal(del.code, 0, del.stdout)
  t.equal(requests.at(-1)?.command, 'DEL')
  const status = await run('STATUS')
  t.equal(status.code, 0, status.stdout)
  t.equal(requests.at(-1)?.command, 'PING')
  t.same(lines, ['EXEC', 'ADD', 'EXEC', 'CHECK', 'EXEC', 'DEL', 'EXEC', 'PING'], 'each run: EXEC refused, then the Node plugin\'s own request')

  // The agent is gone: its snapshot inside the root decides.
  await stop()
  const down = await run('ADD')
  t.equal(JSON.parse(down.stdout).code, 11, 'no snapshot: fails closed, try again later')
  t.match(JSON.parse(down.stdout).msg, /no intent snapshot on this node/)
  writeFileSync(join(root, SNAPSHOT), renderSnapshot({ v: 1, state: 'installed', node: 'n', pods: [
    { namespace: 'apps', name: 'web', uid: 'uid-web', intent: false },
    { namespace: 'apps', name: 'web', uid: 'uid-intent', intent: true },
  ] }), { mode: 0o600 })
  const plain = await run('ADD')
  t.equal(plain.code, 0, plain.stdout)
  t.same(JSON.parse(plain.stdout), { ...prevResult, cniVersion: '1.1.0' }, 'listed without intent: passes through')
  const intent = await run('ADD', {}, 'uid-intent')
  t.match(JSON.parse(intent.stdout), { code: 11, msg: /has interception intent, so pod apps\/web fails closed/ })
  const unknown = await run('ADD', {}, 'uid-new')
  t.match(JSON.parse(unknown.stdout), { code: 11, msg: /not in the intent snapshot yet/ })
  t.equal((await run('DEL')).code, 0, 'DEL succeeds with the agent down')
  t.equal((await run('STATUS')).code, 0, 'STATUS: degraded, not down')
})
