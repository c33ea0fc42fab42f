// Kernel minimums of the datapaths, checked once at start: an agent that installs itself on a
// node whose kernel cannot run them would fail every intercepted pod's ADD later, with an nft
// or tc error far from the cause. Pure: `uname -r` text in, the problems out.
//   - concatenated interval sets and maps (nftables: `ipv4_addr . inet_proto . inet_service`
//     with `flags interval`): proxy-mode service ranges and the tproxy intercept sets; Linux
//     5.6 (the pipapo set type, net/netfilter/nft_set_pipapo.c).
//   - bpf_sk_assign from tc: the eBPF tproxy datapath, the only capability-free one; Linux 5.7
//     (the "bpf: Add socket assign support" series, lore.kernel.org/bpf/20200329225342.16317-1-joe@wand.net.nz).
// Distribution kernels may backport both (RHEL 8's 4.18 does): --skip-kernel-check says so.

export interface KernelFeature { name: string; since: [number, number]; usedBy: string }

export const KERNEL_FEATURES: KernelFeature[] = [
  { name: 'nftables concatenated interval sets', since: [5, 6], usedBy: 'proxy-mode service ranges and tproxy intercept sets' },
  { name: 'bpf_sk_assign from tc', since: [5, 7], usedBy: 'the eBPF tproxy datapath' },
]

/** `6.1.0-18-amd64` -> [6, 1]; undefined when it does not start with MAJOR.MINOR. */
export function parseKernelRelease(release: string): [number, number] | undefined {
  const m = /^(\d+)\.(\d+)/.exec(release.trim())
  return m ? [Number(m[1]), Number(m[2])] : undefined
}

/** Every feature this kernel is too old for, worded for the operator. */
export function kernelProblems(release: string, features: KernelFeature[] = KERNEL_FEATURES): string[] {
  const v = parseKernelRelease(release)
  if (!v) return [`cannot read the kernel version from ${JSON.stringify(release)}; pass --skip-kernel-check if you know it supports ${features.map((f) => `${f.name} (Linux ${f.since.join('.')})`).join(' and ')}`]
  return features.filter((f) => v[0] < f.since[0] || (v[0] === f.since[0] && v[1] < f.since[1]))
    .map((f) => `kernel ${release} is older than Linux ${f.since.join('.')}, which ${f.usedBy} need (${f.name}); not installing the plugin on this node. Use a newer node image, or pass --skip-kernel-check if your distribution backports it`)
}
