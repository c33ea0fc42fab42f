// What ADD programmed, per attachment, so CHECK can compare and DEL/GC can clean up.
// One JSON file per attachment under the state dir (a tmpfs on the node).
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

export interface AttachmentState {
  containerId: string
  ifName: string
  netns: string
  pod: { namespace: string; name: string; uid: string | undefined }
  mode: 'proxy' | 'tproxy' | 'tun'
  /** The serialized intent ADD programmed. */
  intent: string
  /** The pod's addresses ADD was given (they shape the eBPF datapath's routes). */
  podIps?: string[]
  /** The declared inbound ports ADD let through the fence (from the pod spec). */
  ingress?: Array<{ proto: 'tcp' | 'udp'; port: number }>
  /** `nft list table` right after ADD: the kernel's own spelling, compared by CHECK. */
  listing: string
  createdAt: string
}

const SAFE = /^[A-Za-z0-9_.-]{1,128}$/

export class StateStore {
  private readonly dir: string
  constructor(dir: string) {
    this.dir = dir
    mkdirSync(dir, { recursive: true, mode: 0o700 })
  }

  private file(containerId: string, ifName: string): string {
    if (!SAFE.test(containerId) || !SAFE.test(ifName)) throw new Error(`unsafe attachment id ${JSON.stringify(`${containerId}/${ifName}`)}`)
    return join(this.dir, `${containerId}_${ifName}.json`)
  }

  get(containerId: string, ifName: string): AttachmentState | undefined {
    try { return JSON.parse(readFileSync(this.file(containerId, ifName), 'utf8')) as AttachmentState } catch { return undefined }
  }

  put(s: AttachmentState): void {
    const f = this.file(s.containerId, s.ifName)
    writeFileSync(`${f}.tmp`, JSON.stringify(s), { mode: 0o600 })
    renameSync(`${f}.tmp`, f)
  }

  delete(containerId: string, ifName: string): void {
    rmSync(this.file(containerId, ifName), { force: true })
  }

  list(): AttachmentState[] {
    return readdirSync(this.dir).filter((n) => n.endsWith('.json')).flatMap((n) => {
      try { return [JSON.parse(readFileSync(join(this.dir, n), 'utf8')) as AttachmentState] } catch { return [] }
    })
  }
}
