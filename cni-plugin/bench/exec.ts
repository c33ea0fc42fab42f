// pnpm --filter @ziti-cni/cni-plugin run bench:exec — the CNI executable's own exec cost (also
// part of pnpm bench:cni, bench/cni.ts),
// interleaved: median wall time from spawn to exit, mean CPU time (user + sys, GNU time's %U
// %S: steadier than wall time on a loaded machine) and median peak RSS (%M).
//   loopback VERSION        Debian's Go reference plugin (a static floor)
//   node -e 0               Node's own start-up
//   SEA VERSION (host libs) the Node SEA run as before, by the host's loader and libraries
//   ziti-cni VERSION        the installed layout: static front end -> bundled ld.so -> SEA
//   SEA / ziti-cni ADD      an ADD for a pod, answered by the agent's socket server (a stand-in
//                           Programmer: pass through) on a unix socket
//   ziti-cni … (EXEC)       the front end's first path: the invocation forwarded to the agent
//                           (ziti-cni.d/agent-socket written); the others run its Node fallback
import { spawn } from 'node:child_process'
import { chmodSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { pino } from 'pino'
import { createAgentMetrics } from '../src/agent/metrics.ts'
import { createCniServer } from '../src/agent/server.ts'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { installBinary, writeAgentAddress } from '../src/install/installer.ts'

const dist = new URL('../dist/', import.meta.url).pathname

export interface ExecFigures { runs: number; rows: Array<{ name: string; wallMs: number; cpuMs: number; rssMiB: number }> }

/** Each case `runs` times, interleaved; the median wall, mean CPU and median peak RSS of each. */
export async function benchExec(runs: number): Promise<ExecFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-exec-'))
  const socket = join(dir, 'agent.sock')
  // Both layouts on the same file system (fault-around, and so RSS, differs between file systems):
  // the installed one as the installer writes it, and the SEA as it was installed before
  // (executable, loaded by the host's loader and libraries).
  installBinary(`${dist}ziti-cni`, join(dir, 'bin'))
  const installed = join(dir, 'bin/ziti-cni')
  writeAgentAddress(join(dir, 'bin-exec'), { type: 'ziti-cni', agentSocket: socket })
  installBinary(`${dist}ziti-cni`, join(dir, 'bin-exec'))
  const forwarding = join(dir, 'bin-exec/ziti-cni')
  const hostSea = join(dir, 'ziti-cni-host')
  copyFileSync(`${dist}ziti-cni.d/ziti-cni-node`, hostSea)
  chmodSync(hostSea, 0o755)

  const agent = createCniServer({ handle: async () => ({ ok: true, intercepted: false }) }, createAgentMetrics(), pino({ level: 'silent' }), socket)
  await new Promise<void>((r) => agent.listen(socket, () => r()))

  const stdin = JSON.stringify({ cniVersion: '1.0.0', name: 'net', type: 'ziti-cni', agentSocket: socket, snapshot: join(dir, 'none.json'), prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.0.0.5/24' }] } })
  const addEnv = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: dist, CNI_ARGS: 'K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=u' }
  const cases: Array<{ name: string; cmd: string[]; env: Record<string, string>; stdin?: string }> = [
    { name: 'loopback VERSION', cmd: ['/usr/lib/cni/loopback'], env: { CNI_COMMAND: 'VERSION' } },
    { name: 'node -e 0', cmd: [process.execPath, '-e', '0'], env: {} },
    { name: 'SEA VERSION (host libs)', cmd: [hostSea], env: { CNI_COMMAND: 'VERSION' } },
    { name: 'ziti-cni VERSION', cmd: [installed], env: { CNI_COMMAND: 'VERSION' } },
    { name: 'SEA ADD (host libs)', cmd: [hostSea], env: addEnv, stdin },
    { name: 'ziti-cni ADD', cmd: [installed], env: addEnv, stdin },
    { name: 'ziti-cni VERSION (EXEC)', cmd: [forwarding], env: { CNI_COMMAND: 'VERSION' } },
    { name: 'ziti-cni ADD (EXEC)', cmd: [forwarding], env: addEnv, stdin },
  ]

  function once(cmd: string[], env: Record<string, string>, input = '', rss = false): Promise<{ ms: number; kib: number; cpu: number }> {
    return new Promise((resolve, reject) => {
      const argv = rss ? ['/usr/bin/time', '-f', '%M %U %S', ...cmd] : cmd
      const started = process.hrtime.bigint()
      const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['pipe', 'pipe', 'pipe'] })
      let err = ''
      child.stdout.resume()
      child.stderr.on('data', (c: Buffer) => { err += c.toString() })
      child.stdin.on('error', () => {})
      child.on('error', reject)
      child.on('close', (code) => {
        if (code !== 0) return reject(new Error(`${cmd.join(' ')} exited ${code}: ${err}`))
        const [kib, user, sys] = rss ? err.trim().split('\n').at(-1)!.split(' ').map(Number) : [0, 0, 0]
        resolve({ ms: Number(process.hrtime.bigint() - started) / 1e6, kib: kib!, cpu: (user! + sys!) * 1000 })
      })
      child.stdin.end(input)
    })
  }

  const ms = new Map<string, number[]>(cases.map((c) => [c.name, []]))
  const kib = new Map<string, number[]>(cases.map((c) => [c.name, []]))
  const cpu = new Map<string, number[]>(cases.map((c) => [c.name, []]))
  for (let i = 0; i < runs; i++) {
    for (const c of cases) ms.get(c.name)!.push((await once(c.cmd, c.env, c.stdin)).ms)
    for (const c of cases) {
      const r = await once(c.cmd, c.env, c.stdin, true)
      kib.get(c.name)!.push(r.kib)
      cpu.get(c.name)!.push(r.cpu)
    }
  }
  agent.close()
  rmSync(dir, { recursive: true, force: true })
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
  return { runs, rows: cases.map((c) => ({ name: c.name, wallMs: median(ms.get(c.name)!), cpuMs: mean(cpu.get(c.name)!), rssMiB: median(kib.get(c.name)!) / 1024 })) }
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]! }

export function formatExec(f: ExecFigures): string[] {
  const base = f.rows.find((r) => r.name === 'node -e 0')!.wallMs
  return [`exec cost, ${f.runs} interleaved runs each: median wall, mean CPU (user+sys), median peak RSS`,
    ...f.rows.map((r) => `  ${r.name.padEnd(26)} ${r.wallMs.toFixed(1).padStart(6)} ms wall (${(r.wallMs / base).toFixed(2)}x node -e 0)  ${r.cpuMs.toFixed(1).padStart(6)} ms CPU  ${r.rssMiB.toFixed(0).padStart(4)} MiB`)]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const l of formatExec(await benchExec(Number(process.env.BENCH_RUNS ?? 30)))) process.stdout.write(`${l}\n`)
}
