// Calls one CNI plugin of the node's list directly, the way libcni execs it, for what
// containerd 1.6 never sends (CHECK, GC, STATUS) and for a runtime's retries. Every pod
// lifecycle path (ADD on RunPodSandbox, DEL on StopPodSandbox) goes through containerd.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { selectPrimary } from '../../../cni-plugin/src/install/conflist.ts'
import { readConfDir } from '../../../cni-plugin/src/install/installer.ts'

export class CniCallError extends Error {
  override readonly name = 'CniCallError'
  readonly exitCode: number
  readonly error: { code?: number; msg?: string; details?: string }
  readonly stderr: string
  constructor(exitCode: number, error: { code?: number; msg?: string; details?: string }, stderr: string) {
    super(`plugin failed (exit ${exitCode}): ${error.msg ?? 'no error JSON'}${error.code !== undefined ? ` [code ${error.code}]` : ''}`)
    this.exitCode = exitCode
    this.error = error
    this.stderr = stderr
  }
}

export interface ExecOutcome { code: number; stdout: string; stderr: string; ms: number }

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

export interface ConfList { cniVersion: string; name: string; plugins: Array<Record<string, unknown> & { type: string }> }

/** The list libcni would load from a conf dir now (first file in the kubelet's order). */
export function loadConfList(confDir: string): ConfList {
  const primary = selectPrimary(readConfDir(confDir))
  if (!primary) throw new Error(`no CNI config in ${confDir}`)
  const parsed = JSON.parse(primary.content) as Record<string, unknown>
  return primary.name.endsWith('.conflist') ? parsed as never : { cniVersion: parsed.cniVersion as string, name: parsed.name as string, plugins: [parsed as never] }
}

/** The result libcni cached for an attachment (containerd: /var/lib/cni/results). */
export function cachedResult(network: string, containerId: string, ifName = 'eth0'): unknown {
  const cache = JSON.parse(readFileSync(`/var/lib/cni/results/${network}-${containerId}-${ifName}`, 'utf8')) as { result: unknown }
  return cache.result
}

export interface Attachment { containerId: string; netns: string; ifName?: string; pod: { namespace: string; name: string; uid: string } }

/** Execs the list's plugin of `type` with libcni's env and stdin; its parsed stdout, or CniCallError. */
export async function callPlugin(binDir: string, list: ConfList, type: string, command: string, a: Attachment, extra: Record<string, unknown> = {}): Promise<unknown> {
  const plugin = list.plugins.find((p) => p.type === type)
  if (!plugin) throw new Error(`${type} is not in the list ${list.name}`)
  const conf = { cniVersion: list.cniVersion, name: list.name, ...plugin, ...extra }
  const env = {
    CNI_COMMAND: command, CNI_CONTAINERID: a.containerId, CNI_NETNS: a.netns, CNI_IFNAME: a.ifName ?? 'eth0', CNI_PATH: binDir,
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${a.pod.namespace};K8S_POD_NAME=${a.pod.name};K8S_POD_INFRA_CONTAINER_ID=${a.containerId};K8S_POD_UID=${a.pod.uid}`,
  }
  const out = await execProcess(join(binDir, type), [], env, JSON.stringify(conf))
  let parsed: unknown
  try { parsed = out.stdout.trim() ? JSON.parse(out.stdout) : undefined } catch { parsed = { msg: `stdout is not JSON: ${out.stdout.slice(0, 200)}` } }
  if (out.code !== 0) throw new CniCallError(out.code, (parsed ?? {}) as never, out.stderr)
  return parsed
}

/** CHECK and DEL for a running pod's ziti-cni attachment, as libcni would call them. */
export function libcniFor(node: { confDir: string; binDir: string }, rp: { sandboxId: string; netns: string }, pod: { namespace: string; name: string; uid: string }) {
  const list = loadConfList(node.confDir)
  const attachment = { containerId: rp.sandboxId, netns: rp.netns, pod }
  const call = (command: 'CHECK' | 'DEL') => callPlugin(node.binDir, list, 'ziti-cni', command, attachment, { prevResult: cachedResult(list.name, rp.sandboxId) })
  return {
    check: () => call('CHECK'),
    /** The CniCallError CHECK failed with, or undefined when it passed. */
    drift: () => call('CHECK').then(() => undefined, (e: unknown) => e as CniCallError),
    del: () => call('DEL'),
  }
}
