// The installer's I/O: the executable (a static front end and the directory it runs from)
// into the CNI bin dir, and our entry at the end of the primary conflist; kept there while the
// primary CNI rewrites it. No API credential goes to the node: with the agent down the
// executable reads the agent's intent snapshot instead (cni/intent-snapshot.ts).
import { createHash } from 'node:crypto'
import { chmodSync, closeSync, copyFileSync, openSync, readSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, watch, writeFileSync, type FSWatcher } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import type { Logger } from 'pino'
import { renderSnapshot } from '../cni/intent-snapshot.ts'
import { DEFAULTS } from '../cni/request.ts'
import { candidateFiles, convertedName, hasPlugin, insertPlugin, PLUGIN_TYPE, primaryType, removePlugin, restoreConverted, selectPrimary, type ConfFile, type PluginEntry } from './conflist.ts'

export interface InstallerOptions {
  /** The front end; its runtime directory `<pluginSource>.d` (loader, libraries, Node SEA) goes with it. */
  pluginSource: string
  cniBinDir: string
  cniConfDir: string
  /** Where older releases wrote a kubeconfig with a cluster-wide token: deleted on sight. */
  pluginKubeconfig: string
  entry: PluginEntry
  /** Periodic re-check, in case a file event was missed. */
  checkIntervalMs: number
  onReinsert?: (culprit: string) => void
}

/** Our own directory in the conf dir: backups of `.conf` files we converted (libcni skips subdirectories). */
export function ownConfDir(confDir: string): string {
  return join(confDir, 'ziti-cni.d')
}

/** Streams the file through the hash in 1 MiB steps: the SEA executable is ~120 MiB. */
function sha256(path: string): string | undefined {
  let fd: number
  try { fd = openSync(path, 'r') } catch { return undefined }
  try {
    const hash = createHash('sha256')
    const buf = Buffer.allocUnsafe(1 << 20)
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0;) hash.update(buf.subarray(0, n))
    return hash.digest('hex')
  } finally {
    closeSync(fd)
  }
}

/** Write-to-temp then rename: readers never see a half-written file. */
export function writeAtomic(path: string, content: string | Buffer, mode: number): boolean {
  try {
    if (readFileSync(path).equals(Buffer.from(content))) {
      chmodSync(path, mode)
      return false
    }
  } catch { /* absent */ }
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 })
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`)
  writeFileSync(tmp, content, { mode })
  chmodSync(tmp, mode)
  renameSync(tmp, path)
  return true
}

/**
 * Installs one file unless an identical one is there. `memo` remembers the source hash and the
 * target's identity from the last pass, so a periodic check hashes nothing (the SEA is
 * ~120 MiB) unless the file on the node changed.
 */
export interface BinaryMemo { sourceHash?: string; target?: string }

function identity(path: string): string | undefined {
  try { const s = statSync(path); return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}` } catch { return undefined }
}

function installFile(source: string, target: string, mode: number, memo: BinaryMemo): boolean {
  const now = identity(target)
  if (now !== undefined && now === memo.target) return false
  memo.sourceHash ??= sha256(source)
  if (memo.sourceHash === sha256(target)) {
    memo.target = now
    return false
  }
  mkdirSync(dirname(target), { recursive: true, mode: 0o755 })
  const tmp = join(dirname(target), `.${basename(target)}.tmp-${process.pid}`)
  copyFileSync(source, tmp)
  chmodSync(tmp, mode)
  renameSync(tmp, target)
  memo.target = identity(target)
  return true
}

/** Every file the installer puts in the bin dir, source -> target, the front end last. */
export function pluginLayout(source: string, binDir: string): Array<{ source: string; target: string; mode: number }> {
  const runtime = `${source}.d`
  const files = existsSync(runtime)
    ? readdirSync(runtime).sort().map((n) => ({ source: join(runtime, n), target: join(binDir, `${PLUGIN_TYPE}.d`, n), mode: statSync(join(runtime, n)).mode & 0o111 ? 0o755 : 0o644 }))
    : []
  // The front end last: a runtime invoking it meanwhile finds its directory complete.
  return [...files, { source, target: join(binDir, PLUGIN_TYPE), mode: 0o755 }]
}

/**
 * `ziti-cni.d/agent-socket` beside the front end: the agent's socket path, then the timeout in
 * seconds, one per line. The front end reads it to forward the invocation to the agent (EXEC)
 * before it has parsed any config; without it, it runs the Node plugin. Written atomically.
 */
export function writeAgentAddress(binDir: string, entry: PluginEntry): boolean {
  const path = join(binDir, `${PLUGIN_TYPE}.d`, 'agent-socket')
  if (typeof entry.agentSocket !== 'string') { rmSync(path, { force: true }); return false }
  const timeout = typeof entry.timeoutSeconds === 'number' ? entry.timeoutSeconds : DEFAULTS.timeoutSeconds
  return writeAtomic(path, `${entry.agentSocket}\n${Math.ceil(timeout)}\n`, 0o644)
}

export function installBinary(source: string, binDir: string, memos: Map<string, BinaryMemo> = new Map()): boolean {
  let changed = false
  for (const f of pluginLayout(source, binDir)) {
    let memo = memos.get(f.target)
    if (!memo) memos.set(f.target, memo = {})
    if (installFile(f.source, f.target, f.mode, memo)) changed = true
  }
  return changed
}

/** The conf dir's candidate files, as the kubelet's runtime reads them (for selectPrimary). */
export function readConfDir(dir: string): ConfFile[] {
  if (!existsSync(dir)) return []
  return candidateFiles(readdirSync(dir))
    .filter((n) => statSync(join(dir, n)).isFile())
    .map((name) => ({ name, content: readFileSync(join(dir, name), 'utf8') }))
}

export type ConfState = { status: 'no-primary' } | { status: 'ok' | 'inserted'; primary: string; primaryType: string }

export function ensureConflist(confDir: string, entry: PluginEntry): ConfState {
  const primary = selectPrimary(readConfDir(confDir))
  if (!primary) return { status: 'no-primary' }
  if (hasPlugin(primary, entry)) return { status: 'ok', primary: primary.name, primaryType: primaryType(primary) }
  const res = insertPlugin(primary, entry)
  // A converted `.conf` is kept, as it was, for the uninstall to put back.
  if (res.remove) writeAtomic(join(ownConfDir(confDir), res.remove), primary.content, 0o644)
  writeAtomic(join(confDir, res.file.name), res.file.content, 0o644)
  if (res.remove) rmSync(join(confDir, res.remove), { force: true })
  return { status: 'inserted', primary: res.file.name, primaryType: primaryType(primary) }
}

/**
 * Explicit uninstall. In this order: the tombstone in the intent snapshot (an executable still
 * named by a config a runtime cached passes pods through instead of failing them closed), our
 * entry out of every config with converted `.conf` files restored, the legacy kubeconfig gone,
 * the agent's attachment records gone (no agent will tear them down; what they describe lives
 * in the pods' netns and goes with them). The executable stays: a runtime that tears a pod down with the config cached at its ADD
 * (CRI-O, Multus) still finds it, and its DEL succeeds without the agent.
 */
export function uninstall(opts: Pick<InstallerOptions, 'cniConfDir' | 'pluginKubeconfig'> & { snapshot: string; stateDir: string }): string[] {
  const done: string[] = []
  writeAtomic(opts.snapshot, renderSnapshot({ v: 1, state: 'uninstalled' }), 0o600)
  done.push(`marked ${opts.snapshot} uninstalled`)
  const backups = ownConfDir(opts.cniConfDir)
  for (const f of readConfDir(opts.cniConfDir)) {
    const r = removePlugin(f)
    if (!r.changed) continue
    const original = readConfDir(backups).find((b) => convertedName(b.name) === f.name && b.name !== f.name)
    if (original) {
      const back = restoreConverted(f, original)
      writeAtomic(join(opts.cniConfDir, back.file.name), back.file.content, 0o644)
      if (back.remove) rmSync(join(opts.cniConfDir, back.remove), { force: true })
      rmSync(join(backups, original.name), { force: true })
      done.push(back.remove ? `restored ${original.name} (replaced ${f.name})` : `removed ziti-cni from ${f.name} (changed since; ${original.name} not restored)`)
    } else {
      writeAtomic(join(opts.cniConfDir, f.name), r.file.content, 0o644)
      done.push(`removed ziti-cni from ${f.name}`)
    }
  }
  if (existsSync(opts.pluginKubeconfig)) { rmSync(opts.pluginKubeconfig, { force: true }); done.push(`deleted ${opts.pluginKubeconfig}`) }
  if (existsSync(opts.stateDir)) { rmSync(opts.stateDir, { recursive: true, force: true }); done.push(`deleted ${opts.stateDir}`) }
  // Our conf-dir directory goes when nothing of ours is left in it.
  for (const own of new Set([backups, dirname(opts.pluginKubeconfig)])) {
    if (own !== opts.cniConfDir && existsSync(own) && readdirSync(own).length === 0) { rmSync(own, { recursive: true, force: true }); done.push(`deleted ${own}`) }
  }
  return done
}

export class Installer {
  private watchers: FSWatcher[] = []
  private timer: NodeJS.Timeout | undefined
  private pending: NodeJS.Timeout | undefined
  private readonly binary = new Map<string, BinaryMemo>()
  private readonly opts: InstallerOptions
  private readonly log: Logger
  ready = false

  constructor(opts: InstallerOptions, log: Logger) {
    this.opts = opts
    this.log = log.child({ component: 'installer' })
  }

  /** One full pass; safe to repeat. */
  reconcile(reason: string): ConfState {
    // Before the front end lands, so it finds the agent from its first run.
    writeAgentAddress(this.opts.cniBinDir, this.opts.entry)
    if (installBinary(this.opts.pluginSource, this.opts.cniBinDir, this.binary)) this.log.info({ reason, dir: this.opts.cniBinDir }, 'installed the ziti-cni executable')
    if (existsSync(this.opts.pluginKubeconfig)) {
      // An older release left a token that reads every pod in the cluster on this node's disk.
      rmSync(this.opts.pluginKubeconfig, { force: true })
      this.log.info({ path: this.opts.pluginKubeconfig }, 'deleted the kubeconfig an older release wrote for the executable')
    }
    const state = ensureConflist(this.opts.cniConfDir, this.opts.entry)
    if (state.status === 'inserted') {
      if (this.ready) {
        this.log.warn({ reason, file: state.primary, primaryType: state.primaryType },
          `${state.primary} was rewritten without ziti-cni (likely by the ${state.primaryType} CNI); re-inserted it`)
        this.opts.onReinsert?.(state.primaryType)
      } else this.log.info({ file: state.primary }, 'inserted ziti-cni as the last plugin of the primary CNI config')
    } else if (state.status === 'no-primary') {
      this.log.warn({ dir: this.opts.cniConfDir }, `no CNI config in ${this.opts.cniConfDir} yet; waiting for the cluster CNI to write one (if it never comes, this is not the platform's conf dir: see deploy/components/platform-*)`)
    }
    this.ready = state.status !== 'no-primary'
    return state
  }

  start(): void {
    this.reconcile('start')
    const schedule = (reason: string) => {
      // Throttle bursts of events (editors and CNIs write in several steps).
      if (this.pending) return
      this.pending = setTimeout(() => {
        this.pending = undefined
        try { this.reconcile(reason) } catch (e) { this.log.error({ err: e }, 'reconcile failed') }
      }, 200)
    }
    mkdirSync(this.opts.cniConfDir, { recursive: true })
    this.watchers.push(watch(this.opts.cniConfDir, () => schedule('conf dir changed')))
    this.timer = setInterval(() => schedule('periodic check'), this.opts.checkIntervalMs)
    this.timer.unref()
  }

  stop(): void {
    for (const w of this.watchers) w.close()
    this.watchers = []
    if (this.timer) clearInterval(this.timer)
    if (this.pending) clearTimeout(this.pending)
  }
}
