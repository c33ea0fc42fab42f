// Test-only helpers with I/O (not part of the contract). Root-only tests must run in CI
// and fail there when they cannot; outside CI they may skip with a reason.
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'

export interface RootCheck {
  ok: boolean
  reason: string
}

export function rootAvailable(tools: string[] = ['nft', 'ip']): RootCheck {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'needs root (network namespaces, nft)' }
  for (const tool of tools) {
    const r = spawnSync('sh', ['-c', 'command -v "$0"', tool], { encoding: 'utf8' })
    if (r.status !== 0) return { ok: false, reason: `needs ${tool} on PATH` }
  }
  return { ok: true, reason: '' }
}

/**
 * Options for a root-only tap test: in CI an unavailable environment is a failure
 * (the test body runs and fails loudly); elsewhere it is a skip with the reason.
 */
export function rootOnly(tools?: string[]): { skip: string | false } {
  const check = rootAvailable(tools)
  if (check.ok || process.env.CI === 'true') return { skip: false }
  return { skip: check.reason }
}

export function assertRoot(tools?: string[]): void {
  const check = rootAvailable(tools)
  if (!check.ok) throw new Error(`root-only test cannot run: ${check.reason}`)
}

/** A scratch network namespace, deleted by the returned cleanup. */
export function scratchNetns(prefix = 'zcni-t'): { name: string; path: string; remove: () => void } {
  const name = `${prefix}-${randomBytes(4).toString('hex')}`
  execFileSync('ip', ['netns', 'add', name])
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up'])
  return {
    name,
    path: `/var/run/netns/${name}`,
    remove: () => { spawnSync('ip', ['netns', 'del', name]) },
  }
}

/** Runs `nft` inside a named netns with stdin; returns stdout or throws with stderr. */
export function nftIn(netns: string, args: string[], input?: string): string {
  const r = spawnSync('ip', ['netns', 'exec', netns, 'nft', ...args], { input, encoding: 'utf8', maxBuffer: 64 << 20 })
  if (r.status !== 0) throw new Error(`nft ${args.join(' ')} failed: ${r.stderr}`)
  return r.stdout
}
