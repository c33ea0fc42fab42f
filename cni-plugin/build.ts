// Builds the node-side artifacts:
//   dist/ziti-cni.cjs  the CNI executable as one CommonJS bundle (no dependencies)
//   dist/ziti-cni      the CNI executable the installer copies to the node: a static front end
//                      (frontend/ziti-cni.c) that needs nothing from the host but a kernel, and
//   dist/ziti-cni.d/   what it runs: ziti-cni-node (the bundle as a Node single executable),
//                      ld.so and the shared libraries that binary needs, taken from this build host
//   dist/agent.mjs     the node agent bundle
//   dist/cli.mjs       the admin CLI bundle
//   dist/validator.mjs the init-container validator
//   dist/tproxy.bpf.o  the eBPF datapath's tc program
//   dist/v1beta1.proto the kubelet device-plugin API the agent loads at run time
import { build } from 'esbuild'
import { execFileSync } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'

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

/**
 * The loader and libraries an ELF executable needs, as this host's loader resolves them
 * (ldd's lines: `libX.so.N => /path (0x..)` and the interpreter `/lib64/ld-linux-….so.N (0x..)`).
 */
function sharedObjects(exe: string): { loader: string; libraries: string[] } {
  const out = execFileSync('ldd', [exe], { encoding: 'utf8' })
  let loader: string | undefined
  const libraries: string[] = []
  for (const line of out.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const lib = /^\S+ => (\/\S+) \(0x[0-9a-f]+\)$/.exec(line)
    const interp = /^(\/\S+) \(0x[0-9a-f]+\)$/.exec(line)
    if (lib) libraries.push(lib[1]!)
    else if (interp) loader = interp[1]!
    else if (!/^linux-(vdso|gate)\.so/.test(line)) throw new Error(`ldd ${exe}: cannot read line ${JSON.stringify(line)}`)
  }
  if (!loader) throw new Error(`ldd ${exe}: no loader (a static binary?)`)
  return { loader, libraries }
}

if (process.env.SKIP_SEA !== '1') {
  const runtime = `${dist}/ziti-cni.d`
  rmSync(runtime, { recursive: true, force: true })
  mkdirSync(runtime)
  // Node SEA: blob from the CJS bundle, injected into a copy of this very node binary.
  const seaConfig = `${dist}/sea-config.json`
  writeFileSync(seaConfig, JSON.stringify({ main: `${dist}/ziti-cni.cjs`, output: `${dist}/ziti-cni.blob`, disableExperimentalSEAWarning: true, useCodeCache: true }))
  execFileSync(process.execPath, ['--experimental-sea-config', seaConfig], { stdio: 'inherit' })
  const sea = `${runtime}/ziti-cni-node`
  copyFileSync(process.execPath, sea)
  chmodSync(sea, 0o644) // run only through the bundled loader, never directly
  const postject = fileURLToPath(new URL('../node_modules/postject/dist/cli.js', import.meta.url))
  execFileSync(process.execPath, [postject, sea, 'NODE_SEA_BLOB', `${dist}/ziti-cni.blob`, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], { stdio: 'ignore' })
  rmSync(`${dist}/ziti-cni.blob`)
  rmSync(seaConfig)
  // Its loader and libraries, so the node needs no glibc, libstdc++ or libgcc_s of its own.
  const { loader, libraries } = sharedObjects(process.execPath)
  copyFileSync(loader, `${runtime}/ld.so`)
  chmodSync(`${runtime}/ld.so`, 0o755)
  for (const lib of libraries) { copyFileSync(lib, `${runtime}/${basename(lib)}`); chmodSync(`${runtime}/${basename(lib)}`, 0o644) }
  // The front end: static, so it runs where no loader is; -Os -s keeps it small.
  const exe = `${dist}/ziti-cni`
  rmSync(exe, { force: true })
  try {
    execFileSync('gcc', ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', exe, `${root}frontend/ziti-cni.c`], { stdio: 'inherit' })
  } catch (e) {
    throw new Error(`cannot compile frontend/ziti-cni.c (needs gcc and libc6-dev for the static libc): ${(e as Error).message}`)
  }
  const size = (p: string) => statSync(p).size
  const total = size(exe) + readdirSync(runtime).reduce((n, f) => n + size(join(runtime, f)), 0)
  process.stderr.write(`ziti-cni installed size: ${(total / 2 ** 20).toFixed(1)} MiB (front end ${(size(exe) / 1024).toFixed(0)} KiB, ${readdirSync(runtime).length} files in ziti-cni.d)\n`)
}
process.stderr.write(`built ${dist}\n`)
