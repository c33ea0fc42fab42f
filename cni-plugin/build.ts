// Builds the node-side artifacts:
//   dist/ziti-cni.cjs  the CNI executable as one CommonJS bundle (no dependencies)
//   dist/<arch>/ziti-cni    the CNI executable the installer copies to the node, per target arch
//                           (amd64, arm64): a static front end (frontend/ziti-cni.c) that needs
//                           nothing from the host but a kernel, and
//   dist/<arch>/ziti-cni.d/ what it runs: ziti-cni-node (the bundle as a Node single executable),
//                           ld.so and the shared libraries that binary needs (Debian's, of that arch)
//   dist/ziti-cni{,.d}      symlinks to the build host's arch (what this host's tests install)
//   dist/agent.mjs     the node agent bundle
//   dist/cli.mjs       the admin CLI bundle
//   dist/validator.mjs the init-container validator
//   dist/tproxy.bpf.o  the eBPF datapath's tc program
//   dist/v1beta1.proto the kubelet device-plugin API the agent loads at run time
import { build } from 'esbuild'
import { execFileSync } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { resolveRuntime } from './frontend/elf.ts'

const root = fileURLToPath(new URL('.', import.meta.url))
const dist = `${root}dist`
mkdirSync(dist, { recursive: true })
const esmBanner = "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"

await build({ entryPoints: [`${root}src/plugin/main.ts`], outfile: `${dist}/ziti-cni.cjs`, bundle: true, platform: 'node', format: 'cjs', target: 'node22', minify: true, legalComments: 'none' })
await build({ entryPoints: [`${root}src/agent/main.ts`], outfile: `${dist}/agent.mjs`, bundle: true, platform: 'node', format: 'esm', target: 'node22', banner: { js: esmBanner } })
// The agent resolves it next to itself (new URL('./v1beta1.proto', import.meta.url)).
copyFileSync(`${root}src/deviceplugin/v1beta1.proto`, `${dist}/v1beta1.proto`)
await build({ entryPoints: [`${root}src/validator/main.ts`], outfile: `${dist}/validator.mjs`, bundle: true, platform: 'node', format: 'esm', target: 'node22', banner: { js: esmBanner } })
await build({ entryPoints: [`${root}src/cli/main.ts`], outfile: `${dist}/cli.mjs`, bundle: true, platform: 'node', format: 'esm', target: 'node22', banner: { js: esmBanner } })

// The eBPF datapath's tc program (clang from Debian: clang, libbpf-dev). `-target bpf` drops the
// host's multiarch include dir (asm/types.h lives there); ask the toolchain for it rather than
// naming one architecture, so the agent image builds on amd64 and arm64 alike.
try {
  const multiarch = execFileSync('clang', ['-print-multiarch'], { encoding: 'utf8' }).trim()
  if (!multiarch) throw new Error('clang -print-multiarch printed nothing')
  execFileSync('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${multiarch}`, '-c', `${root}bpf/tproxy.bpf.c`, '-o', `${dist}/tproxy.bpf.o`], { stdio: 'inherit' })
} catch (e) {
  throw new Error(`cannot compile bpf/tproxy.bpf.c (needs clang and libbpf-dev): ${(e as Error).message}`)
}

/** The plugin's target architectures (Docker's and Kubernetes' names) and what builds each. */
const ARCHES = {
  amd64: { node: 'x64', triple: 'x86_64-linux-gnu' },
  arm64: { node: 'arm64', triple: 'aarch64-linux-gnu' },
} as const
type Arch = keyof typeof ARCHES
const hostArch = (Object.keys(ARCHES) as Arch[]).find((a) => ARCHES[a].node === process.arch)

/**
 * The Node binary, C compiler and library dirs for one target. The host's own arch uses this
 * very node and the host's gcc and libraries; another arch uses the `node-linux-<arch>` npm
 * package (the same Node version: a SEA blob must be injected into the Node that made it, and
 * only code cache and snapshots are platform-specific) and Debian's cross toolchain. Both npm
 * packages have a `node` bin; pnpm links the one of the package named `node` (@pnpm/package-bins
 * pkgOwnsBin), so the Node running this is still the host's.
 */
interface Toolchain { node: string; cc: string; libDirs: string[]; codeCache: boolean }
function toolchain(arch: Arch): Toolchain {
  const { node, triple } = ARCHES[arch]
  if (arch === hostArch) return { node: process.execPath, cc: 'gcc', libDirs: [`/lib/${triple}`, `/usr/lib/${triple}`], codeCache: true }
  const pkg = fileURLToPath(new URL(`../node_modules/node-linux-${node}/`, import.meta.url))
  if (!existsSync(`${pkg}bin/node`)) throw new Error(`cannot build ${arch}: no ${pkg}bin/node (the node-linux-${node} devDependency; pnpm install)`)
  const version = (JSON.parse(readFileSync(`${pkg}package.json`, 'utf8')) as { version: string }).version
  if (version !== process.versions.node) throw new Error(`cannot build ${arch}: node-linux-${node} is ${version}, the building Node ${process.versions.node}; a SEA blob only works in the Node version that made it`)
  // Debian: gcc-${triple} with libc6-dev-<arch>-cross; libc6-, libstdc++6-, libgcc-s1-<arch>-cross.
  return { node: `${pkg}bin/node`, cc: `${triple}-gcc`, libDirs: [`/usr/${triple}/lib`], codeCache: false }
}

/** Which arches to build: ZITI_CNI_ARCHES (comma list), or the host's and every one whose Node is installed. */
function targetArches(): Arch[] {
  const wanted = process.env.ZITI_CNI_ARCHES?.split(',').map((a) => a.trim()).filter(Boolean)
  if (wanted) {
    if (!wanted.length) throw new Error('ZITI_CNI_ARCHES is set but names no arch (amd64, arm64)')
    const bad = wanted.filter((a) => !(a in ARCHES))
    if (bad.length) throw new Error(`ZITI_CNI_ARCHES: unknown arch ${bad.join(', ')} (known: ${Object.keys(ARCHES).join(', ')})`)
    return [...new Set(wanted as Arch[])]
  }
  if (!hostArch) throw new Error(`no plugin target for this host's arch ${process.arch}; set ZITI_CNI_ARCHES`)
  return (Object.keys(ARCHES) as Arch[]).filter((a) => a === hostArch || existsSync(fileURLToPath(new URL(`../node_modules/node-linux-${ARCHES[a].node}/bin/node`, import.meta.url))))
}

/**
 * dist/<arch>/ziti-cni (the static front end) and dist/<arch>/ziti-cni.d/ (the Node SEA as
 * ziti-cni-node, its loader as ld.so and the libraries it needs): the same names on every arch.
 */
function buildPlugin(arch: Arch, tc: Toolchain): void {
  const started = Date.now()
  const out = `${dist}/${arch}`
  const runtime = `${out}/ziti-cni.d`
  rmSync(out, { recursive: true, force: true })
  mkdirSync(runtime, { recursive: true })
  // Node SEA: blob from the CJS bundle (made by this node), injected into a copy of the target's.
  // V8's code cache only loads on the platform that compiled it (Node's SEA docs: cross-platform
  // SEAs need useCodeCache false), so only the host's own arch gets one.
  const seaConfig = `${out}/sea-config.json`
  const blob = `${out}/ziti-cni.blob`
  writeFileSync(seaConfig, JSON.stringify({ main: `${dist}/ziti-cni.cjs`, output: blob, disableExperimentalSEAWarning: true, useCodeCache: tc.codeCache }))
  execFileSync(process.execPath, ['--experimental-sea-config', seaConfig], { stdio: ['ignore', 'ignore', 'inherit'] })
  const sea = `${runtime}/ziti-cni-node`
  copyFileSync(tc.node, sea)
  chmodSync(sea, 0o644) // run only through the bundled loader, never directly
  const postject = fileURLToPath(new URL('../node_modules/postject/dist/cli.js', import.meta.url))
  execFileSync(process.execPath, [postject, sea, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], { stdio: 'ignore' })
  rmSync(blob)
  rmSync(seaConfig)
  // Its loader and libraries, so the node needs no glibc, libstdc++ or libgcc_s of its own.
  const { loader, libraries } = resolveRuntime(tc.node, tc.libDirs)
  copyFileSync(loader, `${runtime}/ld.so`)
  chmodSync(`${runtime}/ld.so`, 0o755)
  for (const lib of libraries) { copyFileSync(lib, `${runtime}/${basename(lib)}`); chmodSync(`${runtime}/${basename(lib)}`, 0o644) }
  // The front end: static (glibc's libc.a), so it runs where no loader is; -Os -s keeps it small.
  const exe = `${out}/ziti-cni`
  try {
    execFileSync(tc.cc, ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', exe, `${root}frontend/ziti-cni.c`], { stdio: 'inherit' })
  } catch (e) {
    throw new Error(`cannot compile frontend/ziti-cni.c for ${arch} with ${tc.cc} (needs ${arch === hostArch ? 'gcc and libc6-dev' : `gcc-${ARCHES[arch].triple} and libc6-dev-${arch}-cross`} for the static libc): ${(e as Error).message}`)
  }
  const size = (p: string) => statSync(p).size
  const total = size(exe) + readdirSync(runtime).reduce((n, f) => n + size(join(runtime, f)), 0)
  process.stderr.write(`ziti-cni ${arch} installed size: ${(total / 2 ** 20).toFixed(1)} MiB (front end ${(size(exe) / 1024).toFixed(0)} KiB, ${readdirSync(runtime).length} files in ziti-cni.d), built in ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
}

if (process.env.SKIP_SEA !== '1') {
  const arches = targetArches().map((arch) => ({ arch, tc: toolchain(arch) })) // every refusal before any change
  // dist/ziti-cni and dist/ziti-cni.d name the host's build (what this host's tests install).
  for (const link of ['ziti-cni', 'ziti-cni.d']) rmSync(`${dist}/${link}`, { recursive: true, force: true })
  for (const { arch, tc } of arches) buildPlugin(arch, tc)
  if (arches.some((a) => a.arch === hostArch)) for (const link of ['ziti-cni', 'ziti-cni.d']) symlinkSync(`${hostArch}/${link}`, `${dist}/${link}`)
}
process.stderr.write(`built ${dist}\n`)
