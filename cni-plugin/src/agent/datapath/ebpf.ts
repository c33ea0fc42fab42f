// The ebpf datapath's program: tc clsact on lo, the compiled tproxy.bpf.c at ingress.
import { CniError, ErrorCode } from '../../cni/spec.ts'
import type { Netns } from '../netns.ts'

export async function attachBpf(netns: Netns, path: string, bpfObject: string): Promise<void> {
  for (const args of [
    ['qdisc', 'replace', 'dev', 'lo', 'clsact'],
    ['filter', 'replace', 'dev', 'lo', 'ingress', 'pref', '1', 'handle', '1', 'bpf', 'direct-action', 'object-file', bpfObject, 'section', 'tc'],
  ]) {
    const r = await netns.tc(path, args)
    if (r.code !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `tc ${args.slice(0, 2).join(' ')} in ${path} failed`, r.stderr.trim())
  }
}

export async function detachBpf(netns: Netns, path: string): Promise<void> {
  await netns.tc(path, ['qdisc', 'del', 'dev', 'lo', 'clsact'])
}

export async function checkBpf(netns: Netns, path: string): Promise<void> {
  const r = await netns.tc(path, ['filter', 'show', 'dev', 'lo', 'ingress'])
  if (!r.stdout.includes('name ziti_tproxy')) throw new CniError(ErrorCode.Drift, 'the eBPF program is not attached to lo ingress')
}
