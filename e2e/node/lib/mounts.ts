// Test dirs may hold mounts (containerd's rootfs and shm, tmpfs emptyDirs): unmount them,
// deepest first, before the dir goes.
import { spawnSync } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'

export function removeDirWithMounts(dir: string): void {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(dir + '/'))
  for (const m of mounts.sort((a, b) => b.length - a.length)) spawnSync('umount', ['-l', m])
  rmSync(dir, { recursive: true, force: true })
}
