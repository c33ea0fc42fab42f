// cert-manager mode: the serving pair is a mounted Secret; reload it when the kubelet swaps
// the files (atomic `..data` symlink flips show up as directory events).
import { readFileSync, watch, type FSWatcher } from 'node:fs'
import { dirname } from 'node:path'

export interface FilePair { cert: string; key: string }

export function readPair(certFile: string, keyFile: string): FilePair {
  return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') }
}

export function watchPair(certFile: string, keyFile: string, onChange: (p: FilePair) => void, onError: (e: Error) => void): () => void {
  let last = readPair(certFile, keyFile)
  let timer: NodeJS.Timeout | undefined
  const check = () => {
    timer = undefined
    try {
      const next = readPair(certFile, keyFile)
      if (next.cert !== last.cert || next.key !== last.key) { last = next; onChange(next) }
    } catch (e) {
      onError(e as Error)
    }
  }
  const dirs = [...new Set([dirname(certFile), dirname(keyFile)])]
  const watchers: FSWatcher[] = dirs.map((d) => watch(d, () => { timer ??= setTimeout(check, 100) }))
  const poll = setInterval(check, 30_000)
  poll.unref()
  return () => { for (const w of watchers) w.close(); clearInterval(poll); if (timer) clearTimeout(timer) }
}
