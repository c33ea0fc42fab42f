// The plan's policy routing: local routes and fwmark rules (tproxy, both datapaths), and on the
// ebpf datapath the `lookup local` rule moved behind the bypass rule.
import { ipCommands, type Plan } from '@ziti-cni/shared'
import { CniError, ErrorCode } from '../../cni/spec.ts'
import type { Netns } from '../netns.ts'
import { ipBatches } from './ip.ts'

export async function addRouting(netns: Netns, path: string, plan: Plan): Promise<void> {
  await ipBatches(netns, path, ipCommands(plan), false)
  await moveLocalRule(netns, path, plan)
}

/** Removes our routes and rules; "not found" is success, repeats catch duplicates. */
export async function removeRouting(netns: Netns, path: string, plan: Pick<Plan, 'routes' | 'rules' | 'localRulePriority'>): Promise<void> {
  const dels = ipCommands(plan).map((argv) => argv.map((a, i) => (i === 2 ? 'del' : a)))
  await ipBatches(netns, path, [...dels, ...dels, ...dels], true)
  if (plan.localRulePriority !== undefined) await placeLocalRule(netns, path, plan, 0)
}

/**
 * ebpf: exactly one `lookup local` rule, at `priority` (ours, after the bypass rules; or 0,
 * the kernel's default, to undo). Added before the old one is deleted, so there is never a
 * moment without it; `ip rule add` happily duplicates, so the current rules are read first.
 */
async function placeLocalRule(netns: Netns, path: string, plan: Pick<Plan, 'rules' | 'localRulePriority'>, priority: number): Promise<void> {
  const other = priority === 0 ? plan.localRulePriority! : 0
  for (const family of new Set(plan.rules.map((r) => r.family))) {
    const before = (await netns.ip(path, [`-${family}`, 'rule', 'show'])).stdout
    const cmds: string[][] = []
    const at = localRulesAt(before, priority)
    if (at === 0) cmds.push([`-${family}`, 'rule', 'add', 'priority', String(priority), 'lookup', 'local'])
    for (let i = 1; i < at; i++) cmds.push([`-${family}`, 'rule', 'del', 'priority', String(priority), 'lookup', 'local'])
    for (let i = 0; i < localRulesAt(before, other); i++) cmds.push([`-${family}`, 'rule', 'del', 'priority', String(other), 'lookup', 'local'])
    if (cmds.length) await ipBatches(netns, path, cmds, false)
  }
}

/** ebpf: the local rule after our bypass rule, verified. */
async function moveLocalRule(netns: Netns, path: string, plan: Plan): Promise<void> {
  if (plan.localRulePriority === undefined) return
  await placeLocalRule(netns, path, plan, plan.localRulePriority)
  for (const family of new Set(plan.rules.map((r) => r.family))) {
    const r = await netns.ip(path, [`-${family}`, 'rule', 'show'])
    if (localRulesAt(r.stdout, plan.localRulePriority) !== 1 || localRulesAt(r.stdout, 0) !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `IPv${family}: could not move the local rule to priority ${plan.localRulePriority}`, r.stdout)
  }
}

export async function checkRouting(netns: Netns, path: string, plan: Plan): Promise<void> {
  for (const rule of plan.rules) {
    const r = await netns.ip(path, [`-${rule.family}`, 'rule', 'show'])
    if (!r.stdout.includes(`fwmark 0x${rule.fwmark.toString(16)} lookup ${rule.table}`)) {
      throw new CniError(ErrorCode.Drift, `IPv${rule.family} policy rule for fwmark 0x${rule.fwmark.toString(16)} is missing`)
    }
    if (plan.localRulePriority !== undefined && (localRulesAt(r.stdout, plan.localRulePriority) !== 1 || localRulesAt(r.stdout, 0) !== 0)) {
      throw new CniError(ErrorCode.Drift, `IPv${rule.family} local rule is not at priority ${plan.localRulePriority}`, r.stdout)
    }
  }
  // `ip route show ... type local` lines: "local <dst> dev lo ... [src <ip>]", keyed by dst.
  const routeTables = new Map<string, Map<string, string>>()
  for (const route of plan.routes) {
    const key = `-${route.family} ${route.table}`
    if (!routeTables.has(key)) {
      const r = await netns.ip(path, [`-${route.family}`, 'route', 'show', 'table', String(route.table), 'type', 'local'])
      routeTables.set(key, new Map(r.stdout.split('\n').map((l) => [l.split(' ')[1] ?? '', l] as const)))
    }
    const dst = route.dst === '0.0.0.0/0' || route.dst === '::/0' ? 'default' : route.dst.replace(/\/(32|128)$/, '')
    const line = routeTables.get(key)!.get(dst)
    if (line === undefined) throw new CniError(ErrorCode.Drift, `IPv${route.family} local route ${route.dst} in table ${route.table} is missing`)
    if (route.src && !line.includes(` src ${route.src}`)) throw new CniError(ErrorCode.Drift, `IPv${route.family} local route ${route.dst} lost its source ${route.src}`, line)
  }
}

/** How many `lookup local` rules `ip rule show` lists at this priority. */
function localRulesAt(ruleShow: string, priority: number): number {
  return ruleShow.match(new RegExp(`^${priority}:\\s+from all lookup local\\s*$`, 'gm'))?.length ?? 0
}
