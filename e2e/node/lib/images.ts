// Container images built here (no registry is reachable): a root filesystem staged from files of
// this machine (binaries with their shared-library closure, read from ldd), one tar layer, and an
// OCI image layout archive that `ctr images import` takes. Several images may share the layer.
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readSync, realpathSync, renameSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'

export interface ImageConfig {
  /** Full reference, as a pod spec names it (e.g. docker.io/openziti/ziti-tunnel:1.6.8). */
  name: string
  /** Layer tar files, bottom first; a layer shared by several images is stored once. */
  layers: string[]
  entrypoint?: string[]
  cmd?: string[]
  env?: string[]
  workingDir?: string
  user?: string
}

/** OCI platform of this machine. */
export function platform(): { os: 'linux'; architecture: string } {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64' }
  const architecture = arch[process.arch]
  if (!architecture) throw new Error(`no OCI architecture for ${process.arch}`)
  return { os: 'linux', architecture }
}

function sha256File(path: string): { digest: string; size: number } {
  const h = createHash('sha256')
  const fd = openSync(path, 'r')
  const buf = Buffer.allocUnsafe(1 << 20)
  let size = 0
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0;) { h.update(buf.subarray(0, n)); size += n }
  } finally { closeSync(fd) }
  return { digest: `sha256:${h.digest('hex')}`, size }
}

/** The shared libraries (and the ELF interpreter) a dynamically linked binary loads. */
export function sharedLibraries(binary: string): string[] {
  const r = spawnSync('ldd', [binary], { encoding: 'utf8' })
  if (r.status !== 0) {
    if (/not a dynamic executable/.test(r.stdout + r.stderr)) return []
    throw new Error(`ldd ${binary}: ${r.stderr}`)
  }
  const libs: string[] = []
  for (const line of r.stdout.split('\n')) {
    const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s+(\/\S+)\s+\(/.exec(line)
    if (m) libs.push(m[1]!)
    else if (/not found/.test(line)) throw new Error(`ldd ${binary}: ${line.trim()}`)
  }
  return libs
}

/** A root filesystem being staged in a directory. */
export class Rootfs {
  readonly dir: string
  constructor(dir: string) {
    this.dir = dir
    mkdirSync(dir, { recursive: true })
  }

  private target(path: string): string {
    const to = join(this.dir, path)
    mkdirSync(dirname(to), { recursive: true })
    return to
  }

  directory(path: string, mode = 0o755): this {
    mkdirSync(join(this.dir, path), { recursive: true })
    chmodSync(join(this.dir, path), mode)
    return this
  }

  file(from: string, path: string, mode = 0o755): this {
    const to = this.target(path)
    copyFileSync(realpathSync(from), to)
    chmodSync(to, mode)
    return this
  }

  content(path: string, text: string | Buffer, mode = 0o644): this {
    const to = this.target(path)
    writeFileSync(to, text)
    chmodSync(to, mode)
    return this
  }

  link(path: string, target: string): this {
    const to = this.target(path)
    if (!existsSync(to)) symlinkSync(target, to)
    return this
  }

  /** A binary and every library it loads, each at the path the loader looks for it. */
  binary(from: string, path: string): this {
    this.file(from, path)
    for (const lib of sharedLibraries(from)) if (!existsSync(join(this.dir, lib))) this.file(lib, lib, 0o755)
    return this
  }

  /** Busybox with links for the applets the suites use. */
  busybox(applets: string[]): this {
    this.file('/bin/busybox', '/bin/busybox')
    for (const a of applets) this.link(`/bin/${a}`, 'busybox')
    return this
  }

  /** A reproducible tar layer of the staged tree, owned by root. */
  layer(out: string): string {
    const r = spawnSync('tar', ['--create', '--file', out, '--directory', this.dir, '--numeric-owner', '--owner=0', '--group=0', '--sort=name', '--mtime=@0', '.'], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`tar: ${r.stderr}`)
    return out
  }
}

/**
 * Writes an OCI image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
 * as a tar archive holding one manifest per image.
 */
export function writeOciArchive(archive: string, images: ImageConfig[], workDir: string): void {
  const layout = join(workDir, 'oci')
  const blobs = join(layout, 'blobs', 'sha256')
  mkdirSync(blobs, { recursive: true })
  const blob = (data: Buffer) => {
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`
    writeFileSync(join(blobs, digest.slice(7)), data)
    return { digest, size: data.length }
  }
  const stored = new Map<string, { mediaType: string; digest: string; size: number }>()
  const layerDesc = (path: string) => {
    let d = stored.get(path)
    if (!d) {
      const { digest, size } = sha256File(path)
      renameSync(path, join(blobs, digest.slice(7)))
      d = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size }
      stored.set(path, d)
    }
    return d
  }
  const manifests = images.map((img) => {
    const layerDescs = img.layers.map(layerDesc)
    const config = blob(Buffer.from(JSON.stringify({
      ...platform(),
      created: '1970-01-01T00:00:00Z',
      config: {
        ...(img.entrypoint ? { Entrypoint: img.entrypoint } : {}),
        ...(img.cmd ? { Cmd: img.cmd } : {}),
        Env: img.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        ...(img.workingDir ? { WorkingDir: img.workingDir } : {}),
        ...(img.user ? { User: img.user } : {}),
      },
      rootfs: { type: 'layers', diff_ids: layerDescs.map((l) => l.digest) },
    })))
    const manifest = blob(Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: layerDescs,
    })))
    return {
      mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, platform: platform(),
      // containerd names the imported image from this annotation.
      annotations: { 'io.containerd.image.name': img.name, 'org.opencontainers.image.ref.name': img.name },
    }
  })
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  writeFileSync(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }))
  const r = spawnSync('tar', ['--create', '--file', archive, '--directory', layout, 'oci-layout', 'index.json', 'blobs'], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`tar: ${r.stderr}`)
}
