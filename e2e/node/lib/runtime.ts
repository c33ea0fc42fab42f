// Behaves like a container runtime's CNI layer (libcni): picks the primary config the way
// the kubelet does, runs `loopback` and then every plugin of the list in order with
// prevResult on ADD, in reverse on DEL, with the cached result on CHECK/DEL.
import { spawn } from 'node:child_process'
import { accessSync, constants, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { selectPrimary } from '../../../cni-plugin/src/install/conflist.ts'

export interface Attachment {
  containerId: string
  netnsPath: string
  ifName: string
  pod: { namespace: string; name: string; uid: string }
}

export class CniCallError extends Error {
  override readonly name = 'CniCallError'
  readonly plugin: string
  readonly exitCode: number
  readonly error: { code?: number; msg?: string; details?: string }
  readonly stderr: string
  /** Set by the harness when the failed ADD's netns was kept for inspection. */
  netns: string | undefined
  constructor(plugin: string, exitCode: number, error: { code?: number; msg?: string; details?: string }, stderr: string) {
    super(`${plugin} failed (exit ${exitCode}): ${error.msg ?? 'no error JSON'}${error.code !== undefined ? ` [code ${error.code}]` : ''}`)
    this.plugin = plugin
    this.exitCode = exitCode
    this.error = error
    this.stderr = stderr
  }
}

export interface ExecOutcome { code: number; stdout: string; stderr: string; ms: number }

export function execPlugin(binary: string, env: Record<string, string>, stdin: string): Promise<ExecOutcome> {
  return execProcess(binary, [], env, stdin)
}

/** Runs a process with a minimal environment, timing it from spawn to exit. */
export function execProcess(binary: string, args: string[], env: Record<string, string> = {}, stdin = ''): Promise<ExecOutcome> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint()
    const child = spawn(binary, args, { env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.stderr.on('data', (c: Buffer) => err.push(c))
    child.on('error', reject)
    child.on('close', (code) => resolve({
      code: code ?? 1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'),
      ms: Number(process.hrtime.bigint() - started) / 1e6,
    }))
    child.stdin.end(stdin)
  })
}

export class CniRuntime {
  readonly confDir: string
  readonly binDirs: string[]
  private cache = new Map<string, unknown>()

  constructor(confDir: string, binDirs: string[]) {
    this.confDir = confDir
    this.binDirs = binDirs
  }

  /** The list the kubelet would use right now (re-read on every call, like libcni). */
  confList(): { cniVersion: string; name: string; plugins: Array<Record<string, unknown> & { type: string }> } {
    const files = readdirSync(this.confDir).filter((n) => !n.startsWith('.')).flatMap((name) => {
      try { return [{ name, content: readFileSync(join(this.confDir, name), 'utf8') }] } catch { return [] }
    })
    const primary = selectPrimary(files)
    if (!primary) throw new Error(`no CNI config in ${this.confDir}`)
    const parsed = JSON.parse(primary.content) as Record<string, unknown>
    return primary.name.endsWith('.conflist') ? parsed as never : { cniVersion: parsed.cniVersion as string, name: parsed.name as string, plugins: [parsed as never] }
  }

  private binary(type: string): string {
    for (const dir of this.binDirs) {
      const p = join(dir, type)
      try { accessSync(p, constants.X_OK); return p } catch { /* next */ }
    }
    throw new Error(`CNI plugin ${type} not found in ${this.binDirs.join(':')}`)
  }

  private env(cmd: string, a: Attachment): Record<string, string> {
    return {
      CNI_COMMAND: cmd, CNI_CONTAINERID: a.containerId, CNI_NETNS: a.netnsPath, CNI_IFNAME: a.ifName,
      CNI_PATH: this.binDirs.join(':'),
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${a.pod.namespace};K8S_POD_NAME=${a.pod.name};K8S_POD_INFRA_CONTAINER_ID=${a.containerId};K8S_POD_UID=${a.pod.uid}`,
    }
  }

  private async invoke(cmd: string, a: Attachment, plugin: Record<string, unknown> & { type: string }, list: { cniVersion: string; name: string }, prevResult: unknown): Promise<ExecOutcome & { result: unknown }> {
    const conf = { cniVersion: list.cniVersion, name: list.name, ...plugin, ...(prevResult ? { prevResult } : {}) }
    const out = await execPlugin(this.binary(plugin.type), this.env(cmd, a), JSON.stringify(conf))
    let parsed: unknown
    try { parsed = out.stdout.trim() ? JSON.parse(out.stdout) : undefined } catch { parsed = { msg: `stdout is not JSON: ${out.stdout.slice(0, 200)}` } }
    if (out.code !== 0) throw new CniCallError(plugin.type, out.code, (parsed ?? {}) as never, out.stderr)
    return { ...out, result: parsed }
  }

  /** loopback first (as runtimes do), then the list with prevResult chained through. */
  async add(a: Attachment): Promise<{ result: unknown; timings: Record<string, number> }> {
    const list = this.confList()
    const timings: Record<string, number> = {}
    await this.invoke('ADD', { ...a, ifName: 'lo' }, { type: 'loopback' }, list, undefined)
    let prev: unknown
    for (const plugin of list.plugins) {
      const out = await this.invoke('ADD', a, plugin, list, prev)
      timings[plugin.type] = out.ms
      prev = out.result
    }
    this.cache.set(a.containerId, prev)
    return { result: prev, timings }
  }

  /** Re-runs one plugin of the list (a runtime retrying ADD for that plugin) with the cached result. */
  async addOne(a: Attachment, type: string): Promise<unknown> {
    const list = this.confList()
    const plugin = list.plugins.find((p) => p.type === type)
    if (!plugin) throw new Error(`${type} is not in the list`)
    return (await this.invoke('ADD', a, plugin, list, this.cache.get(a.containerId))).result
  }

  async check(a: Attachment): Promise<void> {
    const list = this.confList()
    for (const plugin of list.plugins) await this.invoke('CHECK', a, plugin, list, this.cache.get(a.containerId))
  }

  /** DEL in reverse; every plugin runs even if an earlier one failed, first error rethrown. */
  async del(a: Attachment): Promise<void> {
    const list = this.confList()
    let first: unknown
    for (const plugin of [...list.plugins].reverse()) {
      try { await this.invoke('DEL', a, plugin, list, this.cache.get(a.containerId)) } catch (e) { first ??= e }
    }
    this.cache.delete(a.containerId)
    if (first) throw first
  }
}
