// A netns joined to this host by a /30 veth, with lo up: the bare network the tun tier's
// out-of-cluster tests (the attach shim, the tunnel benchmark) run upstream's tunneler in.
import { spawnSync } from 'node:child_process'

/** Runs a command (argv, no shell); throws with its stderr when it fails. */
export function must(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`)
  return r.stdout
}

export interface VethNetns { ns: string; hostIf: string; nsIf: string; hostIp: string; nsIp: string }

/** Creates the netns and the veth (host end hostIp/30, netns end nsIp/30), both up. */
export function createVethNetns(n: VethNetns): void {
  must('ip', ['netns', 'add', n.ns])
  must('ip', ['link', 'add', n.hostIf, 'type', 'veth', 'peer', 'name', n.nsIf, 'netns', n.ns])
  must('ip', ['addr', 'add', `${n.hostIp}/30`, 'dev', n.hostIf])
  must('ip', ['link', 'set', n.hostIf, 'up'])
  must('ip', ['-n', n.ns, 'addr', 'add', `${n.nsIp}/30`, 'dev', n.nsIf])
  must('ip', ['-n', n.ns, 'link', 'set', n.nsIf, 'up'])
  must('ip', ['-n', n.ns, 'link', 'set', 'lo', 'up'])
}

/** Removes both (the veth's host end goes with the netns; deleted explicitly in case it did not). */
export function removeVethNetns(n: Pick<VethNetns, 'ns' | 'hostIf'>): void {
  spawnSync('ip', ['netns', 'del', n.ns])
  spawnSync('ip', ['link', 'del', n.hostIf])
}
