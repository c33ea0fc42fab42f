// Per-netns sysctls a plan asks for (the ebpf datapath's arp_ignore and accept_local).
import type { Plan } from '@ziti-cni/shared'
import { CniError, ErrorCode } from '../../cni/spec.ts'
import type { Netns } from '../netns.ts'

export async function setSysctls(netns: Netns, path: string, plan: Pick<Plan, 'sysctls'>): Promise<void> {
  for (const x of plan.sysctls) {
    const r = await netns.sysctl(path, ['-qw', `${x.name}=${x.value}`])
    if (r.code !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `sysctl ${x.name} in ${path} failed`, r.stderr.trim())
  }
}

/** Back to their defaults (ADD's rollback and DEL). */
export async function resetSysctls(netns: Netns, path: string, plan: Pick<Plan, 'sysctls'>): Promise<void> {
  for (const x of plan.sysctls) await netns.sysctl(path, ['-qw', `${x.name}=${x.reset}`])
}

export async function checkSysctls(netns: Netns, path: string, plan: Pick<Plan, 'sysctls'>): Promise<void> {
  for (const x of plan.sysctls) {
    const r = await netns.sysctl(path, ['-n', x.name])
    if (r.stdout.trim() !== x.value) throw new CniError(ErrorCode.Drift, `${x.name} is ${r.stdout.trim() || '(unreadable)'}, not ${x.value}`)
  }
}
