// Processes "inside a pod": `ip netns exec` (which also mounts the pod's kubelet-written
// /etc/hosts and resolv.conf) then `setpriv` to an unprivileged uid with exactly the
// capabilities the pod spec grants, nothing through a shell.
import { spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, copyFileSync, linkSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { V1Container, V1Pod } from '@kubernetes/client-node'

const STANDINS = fileURLToPath(new URL('../standins/', import.meta.url))
const VALIDATOR_BUNDLE = fileURLToPath(new URL('../../../cni-plugin/dist/validator.mjs', import.meta.url))

/**
 * What pod processes run (the Node binary, the stand-ins, the validator bundle), staged in a
 * world-readable temp dir: the checkout may sit under a 0700 directory (`mktemp -d`), which
 * the unprivileged uids of a pod cannot traverse. Hard links where possible, else copies.
 */
let staged: { dir: string; node: string } | undefined
function stage(): { dir: string; node: string } {
  if (staged) return staged
  const dir = mkdtempSync(join(tmpdir(), 'zcni-stage-'))
  chmodSync(dir, 0o755)
  const place = (from: string, name: string) => {
    const to = join(dir, name)
    try { linkSync(from, to) } catch { copyFileSync(from, to) }
    chmodSync(to, 0o755)
  }
  place(process.execPath, 'node')
  for (const f of readdirSync(STANDINS)) place(join(STANDINS, f), f)
  place(VALIDATOR_BUNDLE, 'validator.mjs')
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  staged = { dir, node: join(dir, 'node') }
  return staged
}

/** A staged file's path (stand-ins by name, `validator.mjs`). */
function stagedFile(name: string): string {
  return join(stage().dir, name)
}

/**
 * The environment for processes we start: the test runner's NODE_OPTIONS (tap's loaders)
 * and its own variables would slow every child down and are not what a pod sees.
 */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (k !== 'NODE_OPTIONS' && !k.startsWith('TAP') && !k.startsWith('_TAPJS')) env[k] = v
  return { ...env, ...extra }
}
export const APP_UID = 1000

export interface Identity { uid: number; gid: number; caps?: string[] }

export function setprivArgs(id: Identity): string[] {
  const caps = (id.caps ?? []).map((c) => `+${c.toLowerCase()}`)
  const base = ['setpriv', `--reuid=${id.uid}`, `--regid=${id.gid}`, '--clear-groups']
  if (caps.length === 0) return [...base, '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs']
  const set = `-all,${caps.join(',')}`
  return [...base, `--inh-caps=${set}`, `--ambient-caps=${set}`, `--bounding-set=${set}`]
}

export function podArgv(netns: string, id: Identity, argv: string[]): string[] {
  // `env -u NODE_OPTIONS`: the test runner's process tracking re-adds its loader to every
  // spawn's environment; a pod process must not load it.
  return ['netns', 'exec', netns, ...setprivArgs(id), 'env', '-u', 'NODE_OPTIONS', ...argv]
}

export interface RunResult { code: number; stdout: string; stderr: string }

export function runInPod(netns: string, id: Identity, argv: string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', podArgv(netns, id, argv), { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv() })
    let stdout = ''
    let stderr = ''
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.stdout.on('data', (d) => { stdout += d })
    child.stderr.on('data', (d) => { stderr += d })
    child.on('error', reject)
    child.on('close', (code) => { clearTimeout(timer); resolve({ code: code ?? 1, stdout, stderr }) })
  })
}

/** Starts a long-running process and resolves once it prints READY. */
export function startInPod(netns: string, id: Identity, argv: string[], env: Record<string, string> = {}): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', podArgv(netns, id, argv), { stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv(env) })
    let out = ''
    let err = ''
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${argv.join(' ')} not ready in 15s: ${err}`)) }, 15_000)
    child.stdout!.on('data', (d) => {
      out += d
      if (out.includes('READY')) { clearTimeout(timer); resolve(child) }
    })
    child.stderr!.on('data', (d) => { err += d })
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${argv.join(' ')} exited ${code}: ${err}`)) })
  })
}

export const node = (script: string, ...args: string[]) => [stage().node, stagedFile(script), ...args]

/** The validator init container's command, as its image runs it. */
export const validatorCommand = () => [stage().node, stagedFile('validator.mjs')]

/** The app client, as uid 1000 with no capabilities. */
export async function app(netns: string, ...args: string[]): Promise<{ ok: boolean; resolved?: string; reply?: string; error?: string; answers?: string[] }> {
  const r = await runInPod(netns, { uid: APP_UID, gid: APP_UID }, node('app-client.ts', ...args))
  try { return JSON.parse(r.stdout.trim().split('\n').at(-1)!) } catch { return { ok: false, error: `no JSON: ${r.stdout}${r.stderr}` } }
}

/** Runs the injected sidecar's stand-in with the uid, gid, capabilities, args and env the webhook gave it. */
export function startSidecar(netns: string, pod: V1Pod): Promise<ChildProcess> {
  const c = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find((x) => x.name === 'ziti-tunnel') as V1Container
  if (!c) throw new Error(`pod ${pod.metadata?.name} has no injected sidecar`)
  const sc = c.securityContext!
  const id = { uid: sc.runAsUser!, gid: sc.runAsGroup!, caps: sc.capabilities?.add ?? [] }
  const env = Object.fromEntries((c.env ?? []).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]))
  if (c.args?.[0] === 'proxy') return startInPod(netns, id, node('proxy-sidecar.ts', ...c.args), env)
  return startInPod(netns, id, ['/usr/bin/python3', stagedFile('tproxy-sidecar.py')], env)
}
