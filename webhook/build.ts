// dist/*.mjs: the webhook server, the offline injector, the identity controller and the pods'
// enrollment step, each one ESM bundle for the container image.
import { build } from 'esbuild'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('.', import.meta.url))
const banner = "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"
// The identity controller and the pods' enrollment step ship in the same image family.
for (const [entry, out] of [['src/main.ts', 'webhook.mjs'], ['src/cli/inject.ts', 'inject.mjs'], ['src/identity-controller/main.ts', 'identity-controller.mjs'], ['src/identity-controller/enroll-init.ts', 'enroll.mjs']]) {
  await build({ entryPoints: [`${root}${entry}`], outfile: `${root}dist/${out}`, bundle: true, platform: 'node', format: 'esm', target: 'node22', banner: { js: banner } })
}
process.stderr.write(`built ${root}dist\n`)
