// Pure IPv4/IPv6 address and CIDR handling. Strict parsing (no octal, no leading zeros
// beyond "0", no zone ids) and RFC 5952 canonical output, so an intent has one spelling.

export type Family = 4 | 6

export interface Address {
  family: Family
  value: bigint
}

export interface Cidr {
  family: Family
  /** Network address (host bits are zero). */
  value: bigint
  prefix: number
}

const BITS: Record<Family, number> = { 4: 32, 6: 128 }

/** Returns a reason the text is not an address, or the address. */
export function parseAddress(text: string): Address | string {
  if (text.length === 0) return 'empty address'
  if (text.length > 45) return 'address is too long'
  if (text.includes(':')) {
    const v = parseV6(text)
    return typeof v === 'string' ? v : { family: 6, value: v }
  }
  const v = parseV4(text)
  return typeof v === 'string' ? v : { family: 4, value: v }
}

function parseV4(text: string): bigint | string {
  const parts = text.split('.')
  if (parts.length !== 4) return `"${text}" is not an IPv4 address`
  let v = 0n
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return `"${text}" is not an IPv4 address`
    v = (v << 8n) | BigInt(p)
  }
  return v
}

function parseV6(text: string): bigint | string {
  const bad = `"${text}" is not an IPv6 address`
  if (!/^[0-9a-fA-F:.]+$/.test(text)) return bad
  const halves = text.split('::')
  if (halves.length > 2) return bad
  const groups = (s: string): number[] | null => {
    if (s === '') return []
    const out: number[] = []
    const parts = s.split(':')
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!
      if (i === parts.length - 1 && p.includes('.')) {
        const v4 = parseV4(p)
        if (typeof v4 === 'string') return null
        out.push(Number(v4 >> 16n), Number(v4 & 0xffffn))
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) {
        out.push(parseInt(p, 16))
      } else return null
    }
    return out
  }
  const head = groups(halves[0]!)
  const tail = halves.length === 2 ? groups(halves[1]!) : []
  if (!head || !tail) return bad
  // An embedded IPv4 is only allowed at the very end.
  if (halves.length === 2 && halves[0]!.includes('.')) return bad
  const fill = 8 - head.length - tail.length
  if (halves.length === 2 ? fill < 1 : fill !== 0) return bad
  const all = [...head, ...new Array<number>(fill).fill(0), ...tail]
  return all.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n)
}

export function formatAddress(a: Address): string {
  if (a.family === 4) {
    return [24n, 16n, 8n, 0n].map((s) => String((a.value >> s) & 0xffn)).join('.')
  }
  const g: number[] = []
  for (let i = 7; i >= 0; i--) g.push(Number((a.value >> BigInt(i * 16)) & 0xffffn))
  // RFC 5952: compress the longest run (>= 2) of zero groups, the first one on ties.
  let best = -1
  let bestLen = 1
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) { i++; continue }
    let j = i
    while (j < 8 && g[j] === 0) j++
    if (j - i > bestLen) { best = i; bestLen = j - i }
    i = j
  }
  const hex = g.map((x) => x.toString(16))
  if (best < 0) return hex.join(':')
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`
}

/**
 * Parses `addr/prefix` (or a bare address, meaning a host route when `allowBare`).
 * Host bits must be zero: a silent mask would hide a typo in a security boundary.
 */
export function parseCidr(text: string, allowBare = true): Cidr | string {
  const slash = text.indexOf('/')
  const addrText = slash < 0 ? text : text.slice(0, slash)
  const addr = parseAddress(addrText)
  if (typeof addr === 'string') return addr
  const bits = BITS[addr.family]
  let prefix = bits
  if (slash >= 0) {
    const p = text.slice(slash + 1)
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > bits) {
      return `prefix length "${p}" is invalid for IPv${addr.family} (0-${bits})`
    }
    prefix = Number(p)
  } else if (!allowBare) {
    return 'missing prefix length (write it as address/length)'
  }
  const hostMask = (1n << BigInt(bits - prefix)) - 1n
  if ((addr.value & hostMask) !== 0n) {
    const net = formatCidr({ family: addr.family, value: addr.value & ~hostMask, prefix })
    return `host bits are set (did you mean ${net}?)`
  }
  return { family: addr.family, value: addr.value, prefix }
}

/**
 * An interface address with its prefix, host bits kept (`100.64.0.1/10`): the address, and the
 * network its connected route covers. Returns a reason when it is not one.
 */
export function parseInterfaceAddress(text: string): { address: Address; network: Cidr } | string {
  const m = /^(.+)\/(\d{1,3})$/.exec(text)
  if (!m) return 'missing prefix length'
  const address = parseAddress(m[1]!)
  if (typeof address === 'string') return address
  const prefix = Number(m[2])
  if (prefix > BITS[address.family]) return `prefix length "${m[2]}" is invalid for IPv${address.family} (0-${BITS[address.family]})`
  const hostMask = (1n << BigInt(BITS[address.family] - prefix)) - 1n
  return { address, network: { family: address.family, value: address.value & ~hostMask, prefix } }
}

export function formatCidr(c: Cidr): string {
  return `${formatAddress(c)}/${c.prefix}`
}

/** Inclusive first and last address of a CIDR. */
export function cidrRange(c: Cidr): [bigint, bigint] {
  const span = (1n << BigInt(BITS[c.family] - c.prefix)) - 1n
  return [c.value, c.value + span]
}

export function cidrContains(c: Cidr, a: Address): boolean {
  if (c.family !== a.family) return false
  const [lo, hi] = cidrRange(c)
  return lo <= a.value && a.value <= hi
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false
  const [al, ah] = cidrRange(a)
  const [bl, bh] = cidrRange(b)
  return al <= bh && bl <= ah
}

export function compareCidrs(a: Cidr, b: Cidr): number {
  if (a.family !== b.family) return a.family - b.family
  if (a.value !== b.value) return a.value < b.value ? -1 : 1
  return a.prefix - b.prefix
}

/** The n-th address (0-based) of a CIDR, or undefined when out of range. */
export function nthAddress(c: Cidr, n: number): Address | undefined {
  const [lo, hi] = cidrRange(c)
  const v = lo + BigInt(n)
  return v > hi ? undefined : { family: c.family, value: v }
}

/**
 * Sorts and reduces a CIDR list to disjoint entries: two CIDRs either nest or are
 * disjoint, so dropping every CIDR contained in a previous one is enough.
 */
export function mergeCidrs(list: Cidr[]): Cidr[] {
  const sorted = [...list].sort(compareCidrs)
  const out: Cidr[] = []
  for (const c of sorted) {
    const last = out.at(-1)
    if (last && cidrsOverlap(last, c)) continue
    out.push(c)
  }
  return out
}
