// Debian's containerd (1.6) + runc, started privately for one test node: its own config, root,
// state, sockets and CNI dirs, never the host's /etc/cni/net.d or /opt/cni/bin. The CRI plugin's
// own libcni runs the conflist, exactly as on a kubelet's node. `stop()` removes everything it
// made: sandboxes, shims, mounts, netns, dirs.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { CriClient } from '../cri/client.ts'
import { removeDirWithMounts } from './mounts.ts'

/** File in the instance dir listing the netns paths of its sandboxes (for a hard cleanup). */
export const NETNS_LIST = 'netns.list'

export interface ContainerdDirs {
  /** Everything of this instance lives under here. */
  dir: string
  cniBinDir: string
  cniConfDir: string
  sandboxImage: string
}

/** The containerd 1.6 config (version 2 schema) for a private instance. Pure. */
export function containerdConfig(d: ContainerdDirs): string {
  const q = JSON.stringify
  return `# Written by the ziti-cni node suite; one private containerd per test node.
version = 2
root = ${q(join(d.dir, 'root'))}
state = ${q(join(d.dir, 'state'))}
# Only what CRI + overlayfs need; the others probe the host at start-up.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = ${q(join(d.dir, 'containerd.sock'))}
[ttrpc]
  address = ${q(join(d.dir, 'containerd.sock.ttrpc'))}
[debug]
  address = ${q(join(d.dir, 'debug.sock'))}
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${q(d.sandboxImage)}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # The sandbox pause gets oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which these
  # machines withhold even from root (runc: "failed to update /proc/self/oom_score_adj"). This
  # clamps it to containerd's own value; nothing network-related changes.
  restrict_oom_score_adj = true
  # As a kubelet node: containerd itself picks the first config file and runs its plugin list.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = ${q(d.cniBinDir)}
    conf_dir = ${q(d.cniConfDir)}
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
${process.env.ZCNI_RUNC ? `        BinaryName = ${q(process.env.ZCNI_RUNC)}\n` : ''}`
}

export class Containerd {
  readonly dirs: ContainerdDirs
  readonly socket: string
  readonly logFile: string
  cri!: CriClient
  /** The last archive imported (another instance may import the same one). */
  importedArchive: string | undefined
  private proc: ChildProcess | undefined

  constructor(dirs: ContainerdDirs) {
    this.dirs = dirs
    this.socket = join(dirs.dir, 'containerd.sock')
    this.logFile = join(dirs.dir, 'containerd.log')
  }

  async start(): Promise<void> {
    for (const b of ['containerd', 'containerd-shim-runc-v2', 'runc', 'ctr']) {
      if (spawnSync('which', [b]).status !== 0) throw new Error(`${b} is not installed (Debian packages containerd and runc)`)
    }
    mkdirSync(this.dirs.dir, { recursive: true })
    const config = join(this.dirs.dir, 'config.toml')
    writeFileSync(config, containerdConfig(this.dirs))
    const log = openSync(this.logFile, 'a')
    this.proc = spawn('containerd', ['--config', config, '--log-level', 'info'], { stdio: ['ignore', log, log], detached: false })
    this.cri = new CriClient(this.socket)
    const deadline = Date.now() + 20_000
    for (;;) {
      if (this.proc.exitCode !== null) throw new Error(`containerd exited with ${this.proc.exitCode}:\n${this.logTail()}`)
      try {
        const v = await this.cri.version()
        if (v.runtime_name) return
      } catch { /* not up yet */ }
      if (Date.now() > deadline) throw new Error(`containerd did not answer CRI Version within 20s:\n${this.logTail()}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  logTail(lines = 30): string {
    try { return readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-lines).join('\n') } catch { return '(no log)' }
  }

  /** `ctr images import` of an OCI archive into the CRI namespace (no registry is reachable here). */
  importImages(archive: string): void {
    const r = spawnSync('ctr', ['--address', this.socket, '-n', 'k8s.io', 'images', 'import', '--snapshotter', 'overlayfs', archive], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`ctr images import ${archive}: ${r.stderr || r.stdout}`)
    this.importedArchive = archive
  }

  /** Removes every sandbox (StopPodSandbox tears the network down through the CNI chain), then stops. */
  async stop(): Promise<void> {
    if (this.proc && this.proc.exitCode === null) {
      try {
        // A 2 s probe first: a hung containerd must not cost each sandbox a full CRI deadline.
        await this.cri.version()
        for (const id of this.sandboxIds()) {
          await this.cri.stopPodSandbox(id).catch(() => {})
          await this.cri.removePodSandbox(id).catch(() => {})
        }
      } catch { /* containerd is not answering: fall through to the hard cleanup */ }
      const exited = new Promise((r) => this.proc!.once('exit', r))
      this.proc.kill('SIGTERM')
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))])
      if (this.proc.exitCode === null) this.proc.kill('SIGKILL')
    }
    this.cri?.close()
    cleanupInstance(this.dirs.dir)
  }

  private sandboxIds(): string[] {
    const dir = join(this.dirs.dir, 'state', 'io.containerd.grpc.v1.cri', 'sandboxes')
    return existsSync(dir) ? readdirSync(dir) : []
  }
}

/**
 * What a killed instance can leave behind: shims (they outlive containerd by design), their
 * containers, mounts under its dirs and its CNI netns. Safe to call on a dead instance's dir.
 */
export function cleanupInstance(dir: string): void {
  const sock = join(dir, 'containerd.sock')
  // Shims carry the containerd address on their command line.
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmd = ''
    try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8') } catch { continue }
    if (cmd.includes(sock) || (cmd.startsWith('containerd\0') && cmd.includes(dir))) {
      try { process.kill(Number(pid), 'SIGKILL') } catch { /* gone */ }
    }
  }
  // Containers whose shim was killed: the task dirs under our state name them; runc keeps its
  // own state under the runc v2 shim's default root.
  const tasks = join(dir, 'state', 'io.containerd.runtime.v2.task', 'k8s.io')
  if (existsSync(tasks)) {
    for (const id of readdirSync(tasks)) spawnSync('runc', ['--root', '/run/containerd/runc/k8s.io', 'delete', '--force', id])
  }
  // Pod netns that containerd made (/var/run/netns/cni-*), recorded by the kubelet harness.
  const netnsList = join(dir, NETNS_LIST)
  if (existsSync(netnsList)) {
    for (const path of readFileSync(netnsList, 'utf8').split('\n').filter((p) => p.startsWith('/var/run/netns/cni-'))) {
      spawnSync('umount', ['-l', path])
      rmSync(path, { force: true })
    }
  }
  removeDirWithMounts(dir)
}
