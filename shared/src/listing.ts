// Comparing nft listings. Hash-backed sets and maps list their elements in a per-instance
// hash order, so two identical tables can list differently: normalise before comparing.

/** Sorts the elements of every `elements = { ... }` block; everything else is kept as is. */
export function normaliseListing(listing: string): string {
  return listing.replace(/elements = \{([^}]*)\}/g, (_m, body: string) => {
    const items = body.split(',').map((e) => e.trim()).filter(Boolean).sort()
    return `elements = { ${items.join(', ')} }`
  })
}

/** A short, readable difference for CHECK's error details. */
export function lineDiff(expected: string, actual: string): string {
  const a = new Set(actual.split('\n'))
  const e = new Set(expected.split('\n'))
  const missing = expected.split('\n').filter((l) => !a.has(l)).map((l) => `- ${l.trim()}`)
  const extra = actual.split('\n').filter((l) => !e.has(l)).map((l) => `+ ${l.trim()}`)
  return [...missing, ...extra].slice(0, 20).join('\n')
}
