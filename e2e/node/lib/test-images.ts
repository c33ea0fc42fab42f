// The images the node suite's pods run, built from this machine and this checkout:
//   pause        the sandbox image (static pause, e2e/node/images/pause.c)
//   tools        app containers and the "cluster" pod: busybox, bash, node, nft, ip, the stand-ins
//   ziti-tunnel  stand-in for docker.io/openziti/ziti-tunnel under its real name, so the injected
//                pod spec runs unchanged (entrypoint contract: standins/ziti-tunnel.ts)
//   validator    the validator init container's image: node + cni-plugin/dist/validator.mjs, and
//                the identity: auto enrollment step (webhook/dist/enroll.mjs)
//   tproxy       a tunneler honouring the tproxy contract (standins/tproxy-standin.c)
//   tun          upstream's ziti-edge-tunnel v1.18.2, built from ../shared/third-party/ziti-edge-tunnel
//                (e2e/node/build-ziti-edge-tunnel.sh), with its ldd closure and the libraries it
//                dlopen()s, upstream's own docker-entrypoint.sh from the same source tarball, and
//                the attach shim preloaded (deploy/shim/ziti-tun-attach.c), as
//                deploy/docker/ziti-edge-tunnel-attach.Dockerfile ships it
//   libc-apps    app containers for the resolver suite (dns-libc.test.ts): e2e/node/images/resolve.c
//                built static with musl (/usr/local/bin/resolve-musl, an Alpine app's resolver) and
//                dynamic with this machine's glibc (/usr/local/bin/resolve-glibc and its ldd
//                closure; glibc >= 2.34 carries the files and dns NSS modules in libc.so.6), with
//                Debian's /etc/nsswitch.conf
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { DEFAULT_CONFIG } from '../../../webhook/src/config.ts'
import { Rootfs, writeOciArchive, type ImageConfig } from './images.ts'

const HERE = fileURLToPath(new URL('.', import.meta.url))
const STANDINS = join(HERE, '../standins')
const REPO = join(HERE, '../../..')

export const IMAGES = {
  pause: 'localhost/zcni/pause:e2e',
  tools: 'localhost/zcni/tools:e2e',
  tunnel: DEFAULT_CONFIG.proxy.image,
  validator: 'localhost/zcni/validator:e2e',
  tproxy: 'localhost/zcni/tproxy-standin:e2e',
  tun: 'localhost/zcni/ziti-edge-tunnel-attach:e2e',
  libcApps: 'localhost/zcni/libc-apps:e2e',
} as const

export const SHIM_PATH = '/usr/local/lib/ziti-tun-attach.so'

/**
 * Upstream's ziti-edge-tunnel, built once per source set (cached by the hash of SOURCES.txt);
 * throws when it cannot be built, so a suite that needs it fails rather than skips.
 * Beside it: upstream's docker-entrypoint.sh and the SOURCES.txt it was built from.
 */
export function zitiEdgeTunnel(): { binary: string; entrypoint: string; sources: string } {
  const r = spawnSync('bash', [join(HERE, '../build-ziti-edge-tunnel.sh')], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`upstream ziti-edge-tunnel could not be built: ${r.stderr.trim()}`)
  const binary = r.stdout.trim().split('\n').at(-1)!
  return { binary, entrypoint: join(dirname(binary), 'docker-entrypoint.sh'), sources: readFileSync(join(dirname(binary), 'SOURCES.txt'), 'utf8') }
}

/** Libraries ziti-edge-tunnel dlopen()s (netif_driver/linux/resolvers.c:69), when this machine has them. */
const DLOPENED = ['libsystemd.so.0']

const PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

function cc(source: string, out: string, link: 'static' | 'shared' | 'dynamic' = 'static', compiler: 'gcc' | 'musl-gcc' = 'gcc'): void {
  const mode = { static: ['-static'], shared: ['-shared', '-fPIC'], dynamic: [] }[link]
  const r = spawnSync(compiler, [...mode, '-O2', '-Wall', '-Werror', '-o', out, source, ...(link === 'shared' ? ['-ldl'] : [])], { encoding: 'utf8' })
  if (r.error) throw new Error(`${compiler} ${source}: ${r.error.message}${compiler === 'musl-gcc' ? ' (Debian package musl-tools)' : ''}`)
  if (r.status !== 0) throw new Error(`${compiler} ${source}: ${r.stderr}`)
}

/** Builds every image into one OCI archive; returns its path (caller imports and removes it). */
export function buildTestImages(): { archive: string; work: string } {
  const work = mkdtempSync(join(tmpdir(), 'zcni-images-'))
  const bin = join(work, 'bin')
  spawnSync('mkdir', ['-p', bin])
  cc(join(HERE, '../images/pause.c'), join(bin, 'pause'))
  for (const f of readdirSync(STANDINS).filter((n) => n.endsWith('.c'))) cc(join(STANDINS, f), join(bin, f.slice(0, -2)))
  cc(join(REPO, 'deploy/shim/ziti-tun-attach.c'), join(bin, 'ziti-tun-attach.so'), 'shared')
  cc(join(HERE, '../images/resolve.c'), join(bin, 'resolve-musl'), 'static', 'musl-gcc')
  cc(join(HERE, '../images/resolve.c'), join(bin, 'resolve-glibc'), 'dynamic')

  const pause = new Rootfs(join(work, 'pause-root')).file(join(bin, 'pause'), '/pause')
  const pauseLayer = pause.layer(join(work, 'pause.tar'))

  const tools = new Rootfs(join(work, 'tools-root'))
    .busybox(['sh', 'cat', 'ls', 'sleep', 'echo', 'id', 'grep', 'true', 'false', 'env', 'wc', 'head', 'tail', 'printf', 'test', 'mkdir', 'rm', 'stat', 'dirname'])
    .binary('/bin/bash', '/bin/bash')
    .binary(process.execPath, '/usr/local/bin/node')
    .binary('/usr/sbin/nft', '/usr/sbin/nft')
    .binary('/usr/bin/ip', '/usr/bin/ip')
    .binary('/usr/sbin/tc', '/usr/sbin/tc')
    .file(join(bin, 'pause'), '/pause')
    .file(join(REPO, 'cni-plugin/dist/validator.mjs'), '/opt/ziti-cni/validator.mjs', 0o644)
    .file(join(REPO, 'webhook/dist/enroll.mjs'), '/app/enroll.mjs', 0o644)
    .directory('/tmp', 0o1777)
    .directory('/netfoundry', 0o755)
    .content('/etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n')
    // `ziti` (2171): upstream's image adds it (docker/ziti-edge-tunnel.Dockerfile:33); the
    // tunneler serves its IPC sockets only when the group exists (ziti-edge-tunnel.c:1039).
    .content('/etc/group', 'root:x:0:\nnogroup:x:65534:\nziti:x:2171:\n')
  for (const f of readdirSync(STANDINS)) {
    if (f.endsWith('.c')) tools.file(join(bin, f.slice(0, -2)), `/opt/zcni/standins/${f.slice(0, -2)}`)
    else tools.file(join(STANDINS, f), `/opt/zcni/standins/${f}`, f.endsWith('.sh') ? 0o755 : 0o644)
  }
  tools.binary(join(bin, 'ziti-tun-attach.so'), SHIM_PATH)
  // The real tunneler as upstream's image lays it out (docker/ziti-edge-tunnel.Dockerfile:29-32):
  // /usr/local/bin/ziti-edge-tunnel, /docker-entrypoint.sh, /ziti-edge-tunnel mode 0777.
  const zet = zitiEdgeTunnel()
  tools.binary(zet.binary, '/usr/local/bin/ziti-edge-tunnel').file(zet.entrypoint, '/docker-entrypoint.sh').directory('/ziti-edge-tunnel', 0o777)
    .link('/usr/bin/env', '/bin/busybox') // the entrypoint's #!/usr/bin/env bash
  for (const lib of DLOPENED.map((l) => `/lib/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu/${l}`).filter((l) => existsSync(l))) tools.binary(lib, lib)
  // The stand-in tunneler's CSR for enrollment (node has no CSR API of its own): node-forge's
  // CommonJS sources, where `require('node-forge')` finds them from the stand-ins' dir.
  const forge = dirname(createRequire(import.meta.url).resolve('node-forge/package.json'))
  tools.file(join(forge, 'package.json'), '/opt/zcni/standins/node_modules/node-forge/package.json', 0o644)
  for (const f of readdirSync(join(forge, 'lib')).filter((n) => n.endsWith('.js'))) tools.file(join(forge, 'lib', f), `/opt/zcni/standins/node_modules/node-forge/lib/${f}`, 0o644)
  tools.content('/entrypoint.sh', '#!/bin/bash\n# Stand-in image entrypoint: see /opt/zcni/standins/ziti-tunnel.ts\nexec node /opt/zcni/standins/ziti-tunnel.ts "$@"\n', 0o755)
  const toolsLayer = tools.layer(join(work, 'tools.tar'))

  const libcApps = new Rootfs(join(work, 'libc-apps-root'))
    .file(join(bin, 'pause'), '/pause')
    .file(join(bin, 'resolve-musl'), '/usr/local/bin/resolve-musl')
    .binary(join(bin, 'resolve-glibc'), '/usr/local/bin/resolve-glibc')
    // Debian's default (libc-bin, /usr/share/libc-bin/nsswitch.conf): /etc/hosts, then DNS.
    // Without the file glibc would ask DNS first (nss_database.c default "dns [!UNAVAIL=return] files").
    .content('/etc/nsswitch.conf', 'hosts: files dns\n')
    .content('/etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n')
    .directory('/tmp', 0o1777)
  const libcAppsLayer = libcApps.layer(join(work, 'libc-apps.tar'))

  const images: ImageConfig[] = [
    { name: IMAGES.pause, layers: [pauseLayer], entrypoint: ['/pause'], env: [PATH] },
    { name: IMAGES.tools, layers: [toolsLayer], entrypoint: ['/pause'], env: [PATH] },
    // The real image: ENTRYPOINT ["/entrypoint.sh"], CMD ["run"], WORKDIR /netfoundry, user root
    // (openziti/ziti dist/docker-images/ziti-tunnel/Dockerfile).
    { name: IMAGES.tunnel, layers: [toolsLayer], entrypoint: ['/entrypoint.sh'], cmd: ['run'], workingDir: '/netfoundry', env: [PATH] },
    { name: IMAGES.validator, layers: [toolsLayer], env: [PATH] },
    { name: IMAGES.tproxy, layers: [toolsLayer], entrypoint: ['/opt/zcni/standins/tproxy-standin'], env: [PATH] },
    // deploy/docker/ziti-edge-tunnel-attach.Dockerfile: upstream's ENTRYPOINT and CMD
    // (docker/ziti-edge-tunnel.Dockerfile:38-39) plus ENV LD_PRELOAD and USER 2171.
    { name: IMAGES.tun, layers: [toolsLayer], entrypoint: ['/docker-entrypoint.sh'], cmd: ['run'], env: [PATH, `LD_PRELOAD=${SHIM_PATH}`], user: '2171:2171' },
    { name: IMAGES.libcApps, layers: [libcAppsLayer], entrypoint: ['/pause'], env: [PATH] },
  ]
  const archive = join(work, 'images.tar')
  writeOciArchive(archive, images, work)
  return { archive, work }
}
