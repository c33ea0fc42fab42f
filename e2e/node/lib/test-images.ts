// The images the node suite's pods run, built from this machine and this checkout:
//   pause        the sandbox image (static pause, e2e/node/images/pause.c)
//   tools        app containers and the "cluster" pod: busybox, bash, node, nft, ip, the stand-ins
//   ziti-tunnel  stand-in for docker.io/openziti/ziti-tunnel under its real name, so the injected
//                pod spec runs unchanged (entrypoint contract: standins/ziti-tunnel.ts)
//   validator    the validator init container's image: node + cni-plugin/dist/validator.mjs
//   tproxy       a tunneler honouring the tproxy contract (standins/tproxy-standin.c)
//   tun          ziti-edge-tunnel on a pre-provisioned tun (standins/ziti-edge-tunnel.c, dynamically
//                linked like the release binary) with the attach shim preloaded
//                (deploy/shim/ziti-tun-attach.c), as the derived sidecar image ships it
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync, readdirSync } from 'node:fs'
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
} as const

/** Dynamically linked (glibc), so LD_PRELOAD applies, as to the release ziti-edge-tunnel. */
const DYNAMIC = new Set(['ziti-edge-tunnel.c'])
export const SHIM_PATH = '/usr/local/lib/ziti-tun-attach.so'

const PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

function cc(source: string, out: string, link: 'static' | 'dynamic' | 'shared' = 'static'): void {
  const mode = link === 'static' ? ['-static'] : link === 'shared' ? ['-shared', '-fPIC'] : []
  const r = spawnSync('gcc', [...mode, '-O2', '-Wall', '-Werror', '-o', out, source, ...(link === 'shared' ? ['-ldl'] : [])], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`gcc ${source}: ${r.stderr}`)
}

/** Builds every image into one OCI archive; returns its path (caller imports and removes it). */
export function buildTestImages(): { archive: string; work: string } {
  const work = mkdtempSync(join(tmpdir(), 'zcni-images-'))
  const bin = join(work, 'bin')
  spawnSync('mkdir', ['-p', bin])
  cc(join(HERE, '../images/pause.c'), join(bin, 'pause'))
  for (const f of readdirSync(STANDINS).filter((n) => n.endsWith('.c'))) cc(join(STANDINS, f), join(bin, f.slice(0, -2)), DYNAMIC.has(f) ? 'dynamic' : 'static')
  cc(join(REPO, 'deploy/shim/ziti-tun-attach.c'), join(bin, 'ziti-tun-attach.so'), 'shared')

  const pause = new Rootfs(join(work, 'pause-root')).file(join(bin, 'pause'), '/pause')
  const pauseLayer = pause.layer(join(work, 'pause.tar'))

  const tools = new Rootfs(join(work, 'tools-root'))
    .busybox(['sh', 'cat', 'ls', 'sleep', 'echo', 'id', 'grep', 'true', 'false', 'env', 'wc', 'head', 'tail', 'printf', 'test', 'mkdir', 'rm'])
    .binary('/bin/bash', '/bin/bash')
    .binary(process.execPath, '/usr/local/bin/node')
    .binary('/usr/sbin/nft', '/usr/sbin/nft')
    .binary('/usr/bin/ip', '/usr/bin/ip')
    .binary('/usr/sbin/tc', '/usr/sbin/tc')
    .file(join(bin, 'pause'), '/pause')
    .file(join(REPO, 'cni-plugin/dist/validator.mjs'), '/opt/ziti-cni/validator.mjs', 0o644)
    .directory('/tmp', 0o1777)
    .directory('/netfoundry', 0o755)
    .content('/etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n')
    .content('/etc/group', 'root:x:0:\nnogroup:x:65534:\n')
  for (const f of readdirSync(STANDINS)) {
    if (DYNAMIC.has(f)) tools.binary(join(bin, f.slice(0, -2)), `/usr/local/bin/${f.slice(0, -2)}`)
    else if (f.endsWith('.c')) tools.file(join(bin, f.slice(0, -2)), `/opt/zcni/standins/${f.slice(0, -2)}`)
    else tools.file(join(STANDINS, f), `/opt/zcni/standins/${f}`, f.endsWith('.sh') ? 0o755 : 0o644)
  }
  tools.binary(join(bin, 'ziti-tun-attach.so'), SHIM_PATH)
  // The stand-in tunneler's CSR for enrollment (node has no CSR API of its own): node-forge's
  // CommonJS sources, where `require('node-forge')` finds them from the stand-ins' dir.
  const forge = dirname(createRequire(import.meta.url).resolve('node-forge/package.json'))
  tools.file(join(forge, 'package.json'), '/opt/zcni/standins/node_modules/node-forge/package.json', 0o644)
  for (const f of readdirSync(join(forge, 'lib')).filter((n) => n.endsWith('.js'))) tools.file(join(forge, 'lib', f), `/opt/zcni/standins/node_modules/node-forge/lib/${f}`, 0o644)
  tools.content('/entrypoint.sh', '#!/bin/bash\n# Stand-in image entrypoint: see /opt/zcni/standins/ziti-tunnel.ts\nexec node /opt/zcni/standins/ziti-tunnel.ts "$@"\n', 0o755)
  const toolsLayer = tools.layer(join(work, 'tools.tar'))

  const images: ImageConfig[] = [
    { name: IMAGES.pause, layers: [pauseLayer], entrypoint: ['/pause'], env: [PATH] },
    { name: IMAGES.tools, layers: [toolsLayer], entrypoint: ['/pause'], env: [PATH] },
    // The real image: ENTRYPOINT ["/entrypoint.sh"], CMD ["run"], WORKDIR /netfoundry, user root
    // (openziti/ziti dist/docker-images/ziti-tunnel/Dockerfile).
    { name: IMAGES.tunnel, layers: [toolsLayer], entrypoint: ['/entrypoint.sh'], cmd: ['run'], workingDir: '/netfoundry', env: [PATH] },
    { name: IMAGES.validator, layers: [toolsLayer], env: [PATH] },
    { name: IMAGES.tproxy, layers: [toolsLayer], entrypoint: ['/opt/zcni/standins/tproxy-standin'], env: [PATH] },
    // deploy/docker/ziti-edge-tunnel-attach.Dockerfile: ENV LD_PRELOAD, the upstream entrypoint, CMD run.
    { name: IMAGES.tun, layers: [toolsLayer], entrypoint: ['/opt/zcni/standins/ziti-edge-tunnel-entrypoint.sh'], cmd: ['run'], env: [PATH, `LD_PRELOAD=${SHIM_PATH}`] },
  ]
  const archive = join(work, 'images.tar')
  writeOciArchive(archive, images, work)
  return { archive, work }
}
