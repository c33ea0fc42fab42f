// Every process the agent spawns lives here: `nsenter --net=<path> nft|ip`. No shell, argv
// only, stdin for the transaction, a deadline on each call. The host's own netns is refused.
import { spawn } from 'node:child_process'
import { statSync } from 'node:fs'

export class NetnsError extends Error {
  override readonly name = 'NetnsError'
  readonly stderr: string
  constructor(msg: string, stderr = '') {
    super(msg)
    this.stderr = stderr
  }
}

export interface ExecResult { code: number; stdout: string; stderr: string }

export interface Netns {
  /** True when the path names a live network namespace. */
  exists(path: string): boolean
  /** Throws unless `path` is a network namespace other than the host's. */
  assertPodNetns(path: string): void
  nft(path: string, args: string[], input?: string): Promise<ExecResult>
  ip(path: string, args: string[]): Promise<ExecResult>
  tc(path: string, args: string[]): Promise<ExecResult>
  /** `sysctl` in the netns (net.* keys are per network namespace); only renderer keys. */
  sysctl(path: string, args: string[]): Promise<ExecResult>
  /** `ip -4|-6 -batch -`: one process for many commands; `force` carries on past failures. */
  ipBatch(path: string, family: '-4' | '-6', commands: string[][], force: boolean): Promise<ExecResult>
}

export interface NetnsOptions {
  /** The namespace that must never be programmed (the agent runs with hostNetwork). */
  hostNetns: string
  nsenter: string
  timeoutMs: number
}

function run(cmd: string, args: string[], input: string | undefined, timeoutMs: number): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.stderr.on('data', (c: Buffer) => err.push(c))
    child.on('error', (e) => { clearTimeout(timer); reject(new NetnsError(`cannot run ${cmd}: ${e.message}`)) })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const stderr = Buffer.concat(err).toString('utf8')
      if (signal) return reject(new NetnsError(`${args.slice(1).join(' ')} killed by ${signal} after ${timeoutMs} ms`, stderr))
      resolve({ code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr })
    })
    child.stdin.on('error', () => { /* reported through close */ })
    child.stdin.end(input)
  })
}

export function createNetns(opts: NetnsOptions): Netns {
  const identity = (p: string) => {
    const s = statSync(p)
    return `${s.dev}:${s.ino}`
  }
  const hostId = identity(opts.hostNetns)
  return {
    exists(path) {
      try { statSync(path); return true } catch { return false }
    },
    assertPodNetns(path) {
      if (!path.startsWith('/')) throw new NetnsError(`netns path ${JSON.stringify(path)} is not absolute`)
      let id: string
      try { id = identity(path) } catch (e) { throw new NetnsError(`netns ${path} does not exist: ${(e as NodeJS.ErrnoException).code}`) }
      if (id === hostId) throw new NetnsError(`refusing to program ${path}: it is the host's network namespace`)
    },
    nft(path, args, input) {
      return run(opts.nsenter, [`--net=${path}`, '--', 'nft', ...args], input, opts.timeoutMs)
    },
    ip(path, args) {
      return run(opts.nsenter, [`--net=${path}`, '--', 'ip', ...args], undefined, opts.timeoutMs)
    },
    tc(path, args) {
      return run(opts.nsenter, [`--net=${path}`, '--', 'tc', ...args], undefined, opts.timeoutMs)
    },
    sysctl(path, args) {
      for (const a of args) if (!/^(-[nqw]{1,2}|net\.[a-z0-9_.]+(=[0-9]+)?)$/.test(a)) throw new NetnsError(`refusing sysctl argument ${JSON.stringify(a)}`)
      return run(opts.nsenter, [`--net=${path}`, '--', 'sysctl', ...args], undefined, opts.timeoutMs)
    },
    ipBatch(path, family, commands, force) {
      // Batch lines are split on whitespace by ip: only renderer output (numbers, keywords) goes here.
      for (const c of commands) for (const a of c) if (!/^[A-Za-z0-9.:/_-]+$/.test(a)) throw new NetnsError(`refusing ip batch argument ${JSON.stringify(a)}`)
      const input = commands.map((c) => c.join(' ')).join('\n') + '\n'
      return run(opts.nsenter, [`--net=${path}`, '--', 'ip', family, ...(force ? ['-force'] : []), '-batch', '-'], input, opts.timeoutMs)
    },
  }
}
