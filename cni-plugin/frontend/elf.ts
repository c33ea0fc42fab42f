// What an ELF file needs from the system it runs on, read from the file itself (ldd runs the
// host's loader, so it cannot read another architecture's binary): its machine, its program
// interpreter (PT_INTERP) and the shared objects its dynamic section names (DT_NEEDED).
// build.ts resolves the plugin's runtime with it for every target architecture alike, and the
// empty-root test checks the installed layout with it.
import { closeSync, existsSync, openSync, readSync } from 'node:fs'
import { join } from 'node:path'

/** e_machine values (ELF gABI; glibc elf.h EM_X86_64 62, EM_AARCH64 183). */
export const ELF_MACHINE = { amd64: 62, arm64: 183 } as const

export interface ElfInfo {
  machine: number
  /** PT_INTERP: the loader the kernel maps; absent in a static executable. */
  interpreter?: string
  /** DT_NEEDED in file order. */
  needed: string[]
  /** DT_SONAME: the name another object's DT_NEEDED matches this one by. */
  soname?: string
}

/** Reads `length` bytes at `offset` (fewer at the end of the file). */
export type ByteSource = (offset: number, length: number) => Buffer

const PT_LOAD = 1, PT_DYNAMIC = 2, PT_INTERP = 3
const DT_NULL = 0n, DT_NEEDED = 1n, DT_STRTAB = 5n, DT_STRSZ = 10n, DT_SONAME = 14n

/** Parses an ELF64 little-endian file (x86_64 and aarch64 Linux binaries are both). */
export function parseElf(read: ByteSource, name = 'file'): ElfInfo {
  const exactly = (offset: number, length: number): Buffer => {
    const b = read(offset, length)
    if (b.length < length) throw new Error(`${name}: truncated ELF (wanted ${length} bytes at ${offset})`)
    return b
  }
  const h = exactly(0, 64)
  if (h.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${name}: not an ELF file`)
  if (h[4] !== 2 || h[5] !== 1) throw new Error(`${name}: not a 64-bit little-endian ELF (class ${h[4]}, data ${h[5]})`)
  const machine = h.readUInt16LE(18)
  const phoff = Number(h.readBigUInt64LE(32))
  const phentsize = h.readUInt16LE(54)
  const phnum = h.readUInt16LE(56)
  const phdrs = exactly(phoff, phentsize * phnum)
  const segments = Array.from({ length: phnum }, (_, i) => {
    const p = phdrs.subarray(i * phentsize)
    return { type: p.readUInt32LE(0), offset: Number(p.readBigUInt64LE(8)), vaddr: Number(p.readBigUInt64LE(16)), filesz: Number(p.readBigUInt64LE(32)) }
  })
  const cString = (b: Buffer, at: number): string => {
    const end = b.indexOf(0, at)
    if (end < 0) throw new Error(`${name}: unterminated string at ${at}`)
    return b.toString('latin1', at, end)
  }
  const interp = segments.find((s) => s.type === PT_INTERP)
  const interpreter = interp ? cString(exactly(interp.offset, interp.filesz), 0) : undefined
  const dyn = segments.find((s) => s.type === PT_DYNAMIC)
  if (!dyn) return { machine, interpreter, needed: [] }

  const entries = exactly(dyn.offset, dyn.filesz)
  const tags: Array<{ tag: bigint; val: bigint }> = []
  for (let o = 0; o + 16 <= entries.length; o += 16) {
    const tag = entries.readBigInt64LE(o)
    if (tag === DT_NULL) break
    tags.push({ tag, val: entries.readBigUInt64LE(o + 8) })
  }
  const value = (tag: bigint) => tags.find((e) => e.tag === tag)?.val
  const strtab = value(DT_STRTAB), strsz = value(DT_STRSZ)
  if (strtab === undefined || strsz === undefined) throw new Error(`${name}: dynamic section without DT_STRTAB/DT_STRSZ`)
  // DT_STRTAB is an address; the PT_LOAD segment holding it says where it is in the file.
  const load = segments.find((s) => s.type === PT_LOAD && s.vaddr <= Number(strtab) && Number(strtab) < s.vaddr + s.filesz)
  if (!load) throw new Error(`${name}: DT_STRTAB 0x${strtab.toString(16)} is in no loaded segment`)
  const strings = exactly(Number(strtab) - load.vaddr + load.offset, Number(strsz))
  const soname = value(DT_SONAME)
  return {
    machine,
    interpreter,
    needed: tags.filter((e) => e.tag === DT_NEEDED).map((e) => cString(strings, Number(e.val))),
    soname: soname === undefined ? undefined : cString(strings, Number(soname)),
  }
}

/** parseElf on a file, reading only the headers and tables it needs (a Node SEA is 120 MB). */
export function readElf(path: string): ElfInfo {
  const fd = openSync(path, 'r')
  try {
    return parseElf((offset, length) => {
      const b = Buffer.alloc(length)
      return b.subarray(0, readSync(fd, b, 0, length, offset))
    }, path)
  } finally {
    closeSync(fd)
  }
}

export interface Runtime {
  /** The loader (the executable's PT_INTERP, found by its file name in libDirs). */
  loader: string
  /** Every shared object it needs, transitively, as found in libDirs (first dir wins). */
  libraries: string[]
}

/**
 * The loader and libraries `exe` needs, resolved the way its loader would with
 * `--library-path libDirs --inhibit-cache`, and checked to be built for its machine.
 * The loader satisfies its own soname (libc.so.6 names ld-linux-*.so.* as DT_NEEDED).
 */
export function resolveRuntime(exe: string, libDirs: string[]): Runtime {
  const top = readElf(exe)
  if (!top.interpreter) throw new Error(`${exe}: no PT_INTERP (a static binary needs no runtime)`)
  const find = (file: string, by: string): string => {
    const hit = libDirs.map((d) => join(d, file)).find((p) => existsSync(p))
    if (!hit) throw new Error(`${by} needs ${file}, which is in none of ${libDirs.join(', ')}`)
    const { machine } = readElf(hit)
    if (machine !== top.machine) throw new Error(`${hit} is for ELF machine ${machine}, ${exe} for ${top.machine}`)
    return hit
  }
  const loaderFile = top.interpreter.slice(top.interpreter.lastIndexOf('/') + 1)
  const loader = find(loaderFile, exe)
  const provided = new Set([loaderFile, readElf(loader).soname])
  const libraries: string[] = []
  const queue = [{ needed: top.needed, by: exe }]
  for (let next = queue.shift(); next; next = queue.shift()) {
    for (const lib of next.needed) {
      if (provided.has(lib)) continue
      provided.add(lib)
      const path = find(lib, next.by)
      libraries.push(path)
      queue.push({ needed: readElf(path).needed, by: path })
    }
  }
  return { loader, libraries }
}
