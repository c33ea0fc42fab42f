// `ip` batches for the datapath modules: one process per family, argv only.
import { CniError, ErrorCode } from '../../cni/spec.ts'
import type { Netns } from '../netns.ts'

/** Runs `ip` argv lists (each starting with -4/-6) as one batch per family; `force` carries on. */
export async function ipBatches(netns: Netns, path: string, argvs: string[][], force: boolean): Promise<void> {
  for (const family of ['-4', '-6'] as const) {
    const lines = argvs.filter((a) => a[0] === family).map((a) => a.slice(1))
    if (lines.length === 0) continue
    const r = await netns.ipBatch(path, family, lines, force)
    if (r.code !== 0 && !force) throw new CniError(ErrorCode.ProgrammingFailed, 'policy routing failed', r.stderr.trim())
  }
}
