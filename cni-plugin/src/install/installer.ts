// The installer's I/O: the executable into the CNI bin dir, the plugin kubeconfig, and our
// entry at the end of the primary conflist; kept there while the primary CNI rewrites it.
import { createHash } from 'node:crypto'
import { chmodSync, closeSync, copyFileSync, openSync, readSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, watch, writeFileSync, type FSWatcher } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import type { Logger } from 'pino'
import { candidateFiles, hasPlugin, insertPlugin, PLUGIN_TYPE, primaryType, removePlugin, selectPrimary, type ConfFile, type PluginEntry } from './conflist.ts'
import { renderKubeconfig } from './kubeconfig.ts'

export interface InstallerOptions {
  pluginSource: string
  cniBinDir: string
  cniConfDir: string
  pluginKubeconfig: string
  tokenFile: string
  caFile: string
  apiServer: string
  entry: PluginEntry
  /** Periodic re-check, in case a file event was missed. */
  checkIntervalMs: number
  onReinsert?: (culprit: string) => void
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
 * Installs the executable unless an identical one is there. `known` remembers the source hash
 * and the target's identity from the last pass, so a periodic check hashes nothing (the SEA
 * executable is ~120 MiB) unless the file on the node changed.
 */
export interface BinaryMemo { sourceHash?: string; target?: string }

function identity(path: string): string | undefined {
  try { const s = statSync(path); return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}` } catch { return undefined }
}

export function installBinary(source: string, binDir: string, memo: BinaryMemo = {}): boolean {
  const target = join(binDir, PLUGIN_TYPE)
  const now = identity(target)
  if (now !== undefined && now === memo.target) return false
  memo.sourceHash ??= sha256(source)
  if (memo.sourceHash === sha256(target)) {
    memo.target = now
    return false
  }
  mkdirSync(binDir, { recursive: true })
  const tmp = join(binDir, `.${PLUGIN_TYPE}.tmp-${process.pid}`)
  copyFileSync(source, tmp)
  chmodSync(tmp, 0o755)
  renameSync(tmp, target)
  memo.target = identity(target)
  return true
}

export function writePluginKubeconfig(opts: Pick<InstallerOptions, 'pluginKubeconfig' | 'tokenFile' | 'caFile' | 'apiServer'>): boolean {
  const token = readFileSync(opts.tokenFile, 'utf8').trim()
  const caData = readFileSync(opts.caFile)
  mkdirSync(dirname(opts.pluginKubeconfig), { recursive: true, mode: 0o700 })
  return writeAtomic(opts.pluginKubeconfig, renderKubeconfig({ server: opts.apiServer, caData, token }), 0o600)
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
  writeAtomic(join(confDir, res.file.name), res.file.content, 0o644)
  if (res.remove) rmSync(join(confDir, res.remove), { force: true })
  return { status: 'inserted', primary: res.file.name, primaryType: primaryType(primary) }
}

/** Explicit uninstall: our entry out of every config, our kubeconfig and executable gone. */
export function uninstall(opts: Pick<InstallerOptions, 'cniConfDir' | 'cniBinDir' | 'pluginKubeconfig'>): string[] {
  const done: string[] = []
  for (const f of readConfDir(opts.cniConfDir)) {
    const r = removePlugin(f)
    if (r.changed) {
      writeAtomic(join(opts.cniConfDir, f.name), r.file.content, 0o644)
      done.push(`removed ziti-cni from ${f.name}`)
    }
  }
  for (const p of [opts.pluginKubeconfig, join(opts.cniBinDir, PLUGIN_TYPE)]) {
    if (existsSync(p)) { rmSync(p, { force: true }); done.push(`deleted ${p}`) }
  }
  // The kubeconfig's own dir (ziti-cni.d) is ours too; leave it only if something else is in it.
  const own = dirname(opts.pluginKubeconfig)
  if (own !== opts.cniConfDir && existsSync(own) && readdirSync(own).length === 0) { rmSync(own, { recursive: true, force: true }); done.push(`deleted ${own}`) }
  return done
}

export class Installer {
  private watchers: FSWatcher[] = []
  private timer: NodeJS.Timeout | undefined
  private pending: NodeJS.Timeout | undefined
  private lastToken = ''
  private readonly binary: BinaryMemo = {}
  private readonly opts: InstallerOptions
  private readonly log: Logger
  ready = false

  constructor(opts: InstallerOptions, log: Logger) {
    this.opts = opts
    this.log = log.child({ component: 'installer' })
  }

  /** One full pass; safe to repeat. */
  reconcile(reason: string): ConfState {
    if (installBinary(this.opts.pluginSource, this.opts.cniBinDir, this.binary)) this.log.info({ reason, dir: this.opts.cniBinDir }, 'installed the ziti-cni executable')
    const token = readFileSync(this.opts.tokenFile, 'utf8').trim()
    if (token !== this.lastToken) {
      if (writePluginKubeconfig(this.opts)) this.log.info({ reason, path: this.opts.pluginKubeconfig }, 'wrote the plugin kubeconfig')
      this.lastToken = token
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
    // Projected tokens are swapped through a `..data` symlink in their directory.
    this.watchers.push(watch(dirname(this.opts.tokenFile), () => schedule('token changed')))
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
