// Kernel minimums: each datapath feature named with the version it needs, on the releases
// distributions ship (uname -r spellings), and the escape hatch for backports.
import t from 'tap'
import { release } from 'node:os'
import { kernelProblems, parseKernelRelease } from '../src/agent/kernel.ts'
import { parseFlags } from '../src/agent/flags.ts'

t.test('releases as uname -r spells them', async (t) => {
  t.same(parseKernelRelease('6.1.0-18-amd64'), [6, 1], 'Debian 12')
  t.same(parseKernelRelease('5.10.228-219.884.amzn2.x86_64'), [5, 10], 'Amazon Linux 2')
  t.same(parseKernelRelease('4.18.0-553.el8_10.x86_64'), [4, 18], 'RHEL 8')
  t.equal(parseKernelRelease('weird'), undefined)
})

t.test('what each kernel cannot do', async (t) => {
  t.same(kernelProblems('6.1.102-108.177.amzn2023.x86_64'), [], 'AL2023 and Bottlerocket (6.1): everything')
  t.same(kernelProblems('5.7.0'), [], '5.7: everything')
  t.same(kernelProblems('5.6.19'), ['kernel 5.6.19 is older than Linux 5.7, which the eBPF tproxy datapath need (bpf_sk_assign from tc); not installing the plugin on this node. Use a newer node image, or pass --skip-kernel-check if your distribution backports it'])
  t.equal(kernelProblems('4.18.0-553.el8_10.x86_64').length, 2, '4.18: both named')
  t.match(kernelProblems('4.14.355-275.570.amzn2.x86_64')[0], /^kernel 4\.14\.355.* older than Linux 5\.6, which proxy-mode service ranges and tproxy intercept sets need \(nftables concatenated interval sets\)/, 'Amazon Linux 2 with its 4.14 kernel')
  t.match(kernelProblems('weird')[0], /cannot read the kernel version from "weird"; pass --skip-kernel-check/)
  t.same(kernelProblems(release()), [], `this machine (${release()}) runs every datapath (the root tiers prove it)`)
  t.equal(parseFlags(['--node-name', 'n'], {}).skipKernelCheck, false)
  t.equal(parseFlags(['--node-name', 'n', '--skip-kernel-check'], {}).skipKernelCheck, true)
})
