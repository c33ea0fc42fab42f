// Builds the node-side artifacts:
//   dist/ziti-cni.cjs  the CNI executable as one CommonJS bundle (no dependencies)
//   dist/ziti-cni      the same as a self-contained Node single executable (nodes have no Node.js)
//   dist/agent.mjs     the node agent bundle
//   dist/cli.mjs       the admin CLI bundle
//   dist/validator.mjs the init-container validator
//   dist/tproxy.bpf.o  the eBPF datapath's tc program
//   dist/v1beta1.proto the kubelet device-plugin API the agent loads at run time
import { build } from 'esbuild'
import { execFileSync } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
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

if (process.env.SKIP_SEA !== '1') {
  // Node SEA: blob from the CJS bundle, injected into a copy of this very node binary.
  const seaConfig = `${dist}/sea-config.json`
  writeFileSync(seaConfig, JSON.stringify({ main: `${dist}/ziti-cni.cjs`, output: `${dist}/ziti-cni.blob`, disableExperimentalSEAWarning: true, useCodeCache: true }))
  execFileSync(process.execPath, ['--experimental-sea-config', seaConfig], { stdio: 'inherit' })
  const exe = `${dist}/ziti-cni`
  rmSync(exe, { force: true })
  copyFileSync(process.execPath, exe)
  chmodSync(exe, 0o755)
  const postject = fileURLToPath(new URL('../node_modules/postject/dist/cli.js', import.meta.url))
  execFileSync(process.execPath, [postject, exe, 'NODE_SEA_BLOB', `${dist}/ziti-cni.blob`, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], { stdio: 'ignore' })
  rmSync(`${dist}/ziti-cni.blob`)
  rmSync(seaConfig)
}
process.stderr.write(`built ${dist}\n`)
