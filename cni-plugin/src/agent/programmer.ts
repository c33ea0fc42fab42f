// ADD/DEL/CHECK/GC on the node: read the pod's intent, render it with the shared renderer,
// apply it inside the pod's netns as one nft transaction plus policy routes, and record it.
import { ANNOTATION_INTERCEPTION, NFT_FAMILY, NFT_TABLE, ValidationError, createOnly, ipCommands, parseIntent, podIngress, renderDeleteTable, renderPlan, serializeIntent, tunCommands, tunDeleteCommands, type IngressSpec, type Plan, type TunSpec } from '@ziti-cni/shared'
import { lineDiff, normaliseListing } from '@ziti-cni/shared'
import type { Logger } from 'pino'
import type { AgentRequest, AgentResponse } from '../cni/agent-protocol.ts'
import { CniError, ErrorCode, type PodRef } from '../cni/spec.ts'
import type { Netns } from './netns.ts'
import type { PodSource } from './pods.ts'
import type { StateStore } from './state.ts'

export interface ProgrammerDeps {
  netns: Netns
  pods: PodSource
  state: StateStore
  log: Logger
  lookupDeadlineMs: number
  /** The compiled tc program for the eBPF datapath (cni-plugin/bpf/tproxy.bpf.c). */
  bpfObject: string
}

const LIST_TABLE = ['list', 'table', NFT_FAMILY, NFT_TABLE]

export class Programmer {
  private readonly d: ProgrammerDeps
  /** Normalised listing per canonical intent and ingress: pods of one template share it, saving a call per ADD. */
  private readonly listings = new Map<string, string>()
  constructor(deps: ProgrammerDeps) {
    this.d = deps
  }

  async handle(req: AgentRequest & { command: 'ADD' | 'DEL' | 'CHECK' | 'GC' }): Promise<AgentResponse> {
    switch (req.command) {
      case 'ADD': return this.add(req)
      case 'DEL': return this.del(req)
      case 'CHECK': return this.check(req)
      case 'GC': return this.gc(req)
    }
  }

  /**
   * The pod's intent text (undefined when the pod has none) and its spec, whose declared
   * ports are what the fence lets in.
   */
  private async intentOf(pod: PodRef): Promise<{ text: string | undefined; spec: IngressSpec | undefined }> {
    let found
    try {
      found = await this.d.pods.get(pod, this.d.lookupDeadlineMs)
    } catch (e) {
      throw new CniError(ErrorCode.PodLookupFailed, (e as Error).message)
    }
    return { text: found.pod?.metadata?.annotations?.[ANNOTATION_INTERCEPTION], spec: found.pod?.spec as IngressSpec | undefined }
  }

  /** `canonical` keys what the kernel lists back: the intent and the ports let in. */
  private plan(pod: PodRef, text: string, spec: IngressSpec | undefined, podIps: string[] | undefined): { plan: Plan; canonical: string; listingKey: string } {
    try {
      const intent = parseIntent(text)
      const ingress = podIngress(spec)
      const canonical = serializeIntent(intent)
      return { plan: renderPlan(intent, { podIps, ingress }), canonical, listingKey: `${canonical} ${JSON.stringify(ingress)}` }
    } catch (e) {
      if (e instanceof ValidationError) {
        throw new CniError(ErrorCode.InvalidIntent, `pod ${pod.namespace}/${pod.name}: ${e.message}`, 'nothing was programmed')
      }
      throw e
    }
  }

  /** Never the host's netns, never a path that is not one: the CNI error every command gives. */
  private assertPodNetns(netns: string): void {
    try {
      this.d.netns.assertPodNetns(netns)
    } catch (e) {
      throw new CniError(ErrorCode.ProgrammingFailed, (e as Error).message)
    }
  }

  private async nft(netns: string, args: string[], input?: string): Promise<string> {
    const r = await this.d.netns.nft(netns, args, input)
    if (r.code !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `nft ${args[0]} in ${netns} failed`, r.stderr.trim())
    return r.stdout
  }

  private async attachBpf(netns: string): Promise<void> {
    for (const args of [
      ['qdisc', 'replace', 'dev', 'lo', 'clsact'],
      ['filter', 'replace', 'dev', 'lo', 'ingress', 'pref', '1', 'handle', '1', 'bpf', 'direct-action', 'object-file', this.d.bpfObject, 'section', 'tc'],
    ]) {
      const r = await this.d.netns.tc(netns, args)
      if (r.code !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `tc ${args.slice(0, 2).join(' ')} in ${netns} failed`, r.stderr.trim())
    }
  }

  /** Runs `ip` argv lists (each starting with -4/-6) as one batch per family. */
  private async ipBatches(netns: string, argvs: string[][], force: boolean): Promise<void> {
    for (const family of ['-4', '-6'] as const) {
      const lines = argvs.filter((a) => a[0] === family).map((a) => a.slice(1))
      if (lines.length === 0) continue
      const r = await this.d.netns.ipBatch(netns, family, lines, force)
      if (r.code !== 0 && !force) throw new CniError(ErrorCode.ProgrammingFailed, 'policy routing failed', r.stderr.trim())
    }
  }

  /** Removes our routes and rules; "not found" is success, repeats catch duplicates. */
  private async removeRouting(netns: string, plan: Pick<Plan, 'routes' | 'rules' | 'localRulePriority'>): Promise<void> {
    const dels = ipCommands(plan).map((argv) => argv.map((a, i) => (i === 2 ? 'del' : a)))
    await this.ipBatches(netns, [...dels, ...dels, ...dels], true)
    if (plan.localRulePriority !== undefined) await this.placeLocalRule(netns, plan, 0)
  }

  /** tun: deletes the device (address and routes go with it); absent is success. */
  private async removeTun(netns: string, tun: TunSpec | undefined): Promise<void> {
    if (tun) await this.ipBatches(netns, tunDeleteCommands(tun), true)
  }

  /** tun: the device as ADD made it: a tun, owned by the sidecar, addressed, up, routed. */
  private async checkTun(netns: string, tun: TunSpec): Promise<void> {
    const link = await this.d.netns.ip(netns, ['-d', '-j', 'link', 'show', 'dev', tun.dev])
    if (link.code !== 0) throw new CniError(ErrorCode.Drift, `tun device ${tun.dev} is missing from ${netns}`, link.stderr.trim())
    const [info] = JSON.parse(link.stdout) as Array<{ flags?: string[]; linkinfo?: { info_kind?: string; info_data?: { type?: string; user?: number; group?: number; pi?: boolean } } }>
    const data = info?.linkinfo?.info_data
    if (info?.linkinfo?.info_kind !== 'tun' || data?.type !== 'tun') throw new CniError(ErrorCode.Drift, `${tun.dev} is not a tun device`, link.stdout)
    if (data.user !== tun.uid || (data.group !== undefined && data.group !== -1)) throw new CniError(ErrorCode.Drift, `${tun.dev} is owned by ${data.user}${data.group !== undefined ? `:${data.group}` : ''}, not by the sidecar's uid ${tun.uid} alone`)
    if (!info.flags?.includes('UP')) throw new CniError(ErrorCode.Drift, `${tun.dev} is down`)
    const addrs = await this.d.netns.ip(netns, ['-j', '-4', 'addr', 'show', 'dev', tun.dev])
    const have = (JSON.parse(addrs.stdout || '[]') as Array<{ addr_info?: Array<{ local: string; prefixlen: number }> }>).flatMap((l) => l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`)
    if (!have.includes(tun.addr)) throw new CniError(ErrorCode.Drift, `${tun.dev} lost its address ${tun.addr}`, have.join(', '))
    const routes = (await this.d.netns.ip(netns, ['-4', 'route', 'show', 'dev', tun.dev])).stdout.split('\n').map((l) => l.split(' ')[0])
    for (const r of tun.routes) if (!routes.includes(r)) throw new CniError(ErrorCode.Drift, `route ${r} dev ${tun.dev} is missing`)
  }

  /** Puts our sysctls back to their defaults (ADD's rollback and DEL). */
  private async resetSysctls(netns: string, plan: Pick<Plan, 'sysctls'>): Promise<void> {
    for (const x of plan.sysctls) await this.d.netns.sysctl(netns, ['-qw', `${x.name}=${x.reset}`])
  }

  /**
   * ebpf: exactly one `lookup local` rule, at `priority` (ours, after the bypass rules; or 0,
   * the kernel's default, to undo). Added before the old one is deleted, so there is never a
   * moment without it; `ip rule add` happily duplicates, so the current rules are read first.
   */
  private async placeLocalRule(netns: string, plan: Pick<Plan, 'rules' | 'localRulePriority'>, priority: number): Promise<void> {
    const other = priority === 0 ? plan.localRulePriority! : 0
    for (const family of new Set(plan.rules.map((r) => r.family))) {
      const before = (await this.d.netns.ip(netns, [`-${family}`, 'rule', 'show'])).stdout
      const cmds: string[][] = []
      const at = localRulesAt(before, priority)
      if (at === 0) cmds.push([`-${family}`, 'rule', 'add', 'priority', String(priority), 'lookup', 'local'])
      for (let i = 1; i < at; i++) cmds.push([`-${family}`, 'rule', 'del', 'priority', String(priority), 'lookup', 'local'])
      for (let i = 0; i < localRulesAt(before, other); i++) cmds.push([`-${family}`, 'rule', 'del', 'priority', String(other), 'lookup', 'local'])
      if (cmds.length) await this.ipBatches(netns, cmds, false)
    }
  }

  /** ebpf: the local rule after our bypass rule, verified. */
  private async moveLocalRule(netns: string, plan: Plan): Promise<void> {
    if (plan.localRulePriority === undefined) return
    await this.placeLocalRule(netns, plan, plan.localRulePriority)
    for (const family of new Set(plan.rules.map((r) => r.family))) {
      const r = await this.d.netns.ip(netns, [`-${family}`, 'rule', 'show'])
      if (localRulesAt(r.stdout, plan.localRulePriority) !== 1 || localRulesAt(r.stdout, 0) !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `IPv${family}: could not move the local rule to priority ${plan.localRulePriority}`, r.stdout)
    }
  }

  async add(req: AgentRequest): Promise<AgentResponse> {
    const pod = req.pod!
    const { text, spec } = await this.intentOf(pod)
    if (text === undefined) return { ok: true, intercepted: false, detail: 'no interception intent' }
    const { plan, canonical, listingKey } = this.plan(pod, text, spec, req.podIps)
    this.assertPodNetns(req.netns)
    // Routing first (idempotent), then the table in one transaction; undo routing if nft fails.
    await this.removeRouting(req.netns, plan)
    await this.removeTun(req.netns, plan.tun)
    try {
      if (plan.tun) await this.ipBatches(req.netns, tunCommands(plan.tun), false)
      await this.ipBatches(req.netns, ipCommands(plan), false)
      await this.moveLocalRule(req.netns, plan)
      for (const x of plan.sysctls) {
        const r = await this.d.netns.sysctl(req.netns, ['-qw', `${x.name}=${x.value}`])
        if (r.code !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `sysctl ${x.name} in ${req.netns} failed`, r.stderr.trim())
      }
      const created = await this.d.netns.nft(req.netns, ['-f', '-'], createOnly(plan.nft))
      if (created.code !== 0) {
        if (!created.stderr.includes('File exists')) throw new CniError(ErrorCode.ProgrammingFailed, `nft -f in ${req.netns} failed`, created.stderr.trim())
        await this.nft(req.netns, ['-f', '-'], plan.nft) // a table is there (ADD again): replace it
      }
      if (plan.bpf) await this.attachBpf(req.netns)
    } catch (e) {
      // Nothing half-done: the table, the routing, the sysctls and the program go together.
      await this.d.netns.nft(req.netns, ['-f', '-'], renderDeleteTable())
      await this.removeRouting(req.netns, plan)
      await this.removeTun(req.netns, plan.tun)
      await this.resetSysctls(req.netns, plan)
      throw e
    }
    // The kernel's own spelling of what was committed, once per distinct intent.
    let listing = this.listings.get(listingKey)
    if (listing === undefined) {
      listing = normaliseListing(await this.nft(req.netns, LIST_TABLE))
      if (this.listings.size >= 1024) this.listings.delete(this.listings.keys().next().value!)
      this.listings.set(listingKey, listing)
    }
    this.d.state.put({
      containerId: req.containerId, ifName: req.ifName, netns: req.netns, pod,
      mode: plan.mode, intent: canonical, ...(req.podIps ? { podIps: req.podIps } : {}), listing, createdAt: new Date().toISOString(),
    })
    return { ok: true, intercepted: true, mode: plan.mode }
  }

  async del(req: AgentRequest): Promise<AgentResponse> {
    const saved = this.d.state.get(req.containerId, req.ifName)
    const netns = req.netns || saved?.netns || ''
    if (netns && this.d.netns.exists(netns)) {
      this.assertPodNetns(netns)
      await this.nft(netns, ['-f', '-'], renderDeleteTable())
      if (saved) {
        const plan = renderPlan(parseIntent(saved.intent), { podIps: saved.podIps })
        await this.removeRouting(netns, plan)
        await this.removeTun(netns, plan.tun)
        await this.resetSysctls(netns, plan)
        if (plan.bpf) await this.d.netns.tc(netns, ['qdisc', 'del', 'dev', 'lo', 'clsact'])
      }
    }
    this.d.state.delete(req.containerId, req.ifName)
    return { ok: true, intercepted: saved !== undefined }
  }

  async check(req: AgentRequest): Promise<AgentResponse> {
    const pod = req.pod!
    const { text, spec } = await this.intentOf(pod)
    const saved = this.d.state.get(req.containerId, req.ifName)
    this.assertPodNetns(req.netns)
    const live = await this.d.netns.nft(req.netns, LIST_TABLE)
    if (text === undefined) {
      if (live.code === 0) throw new CniError(ErrorCode.Drift, `pod ${pod.namespace}/${pod.name} has no intent but its netns has table ${NFT_TABLE}`)
      return { ok: true, intercepted: false }
    }
    const { plan, canonical } = this.plan(pod, text, spec, req.podIps ?? saved?.podIps)
    if (!saved) throw new CniError(ErrorCode.Drift, `no record of ADD for ${req.containerId}/${req.ifName}`)
    if (saved.intent !== canonical) throw new CniError(ErrorCode.Drift, `pod ${pod.namespace}/${pod.name}: the interception intent changed since ADD`)
    if (live.code !== 0) throw new CniError(ErrorCode.Drift, `table ${NFT_TABLE} is missing from ${req.netns}`, live.stderr.trim())
    const liveListing = normaliseListing(live.stdout)
    if (liveListing !== saved.listing) {
      throw new CniError(ErrorCode.Drift, `table ${NFT_TABLE} in ${req.netns} differs from what ADD programmed`, lineDiff(saved.listing, liveListing))
    }
    if (plan.tun) await this.checkTun(req.netns, plan.tun)
    for (const rule of plan.rules) {
      const r = await this.d.netns.ip(req.netns, [`-${rule.family}`, 'rule', 'show'])
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
        const r = await this.d.netns.ip(req.netns, [`-${route.family}`, 'route', 'show', 'table', String(route.table), 'type', 'local'])
        routeTables.set(key, new Map(r.stdout.split('\n').map((l) => [l.split(' ')[1] ?? '', l] as const)))
      }
      const dst = route.dst === '0.0.0.0/0' || route.dst === '::/0' ? 'default' : route.dst.replace(/\/(32|128)$/, '')
      const line = routeTables.get(key)!.get(dst)
      if (line === undefined) throw new CniError(ErrorCode.Drift, `IPv${route.family} local route ${route.dst} in table ${route.table} is missing`)
      if (route.src && !line.includes(` src ${route.src}`)) throw new CniError(ErrorCode.Drift, `IPv${route.family} local route ${route.dst} lost its source ${route.src}`, line)
    }
    for (const x of plan.sysctls) {
      const r = await this.d.netns.sysctl(req.netns, ['-n', x.name])
      if (r.stdout.trim() !== x.value) throw new CniError(ErrorCode.Drift, `${x.name} is ${r.stdout.trim() || '(unreadable)'}, not ${x.value}`)
    }
    if (plan.bpf) {
      const r = await this.d.netns.tc(req.netns, ['filter', 'show', 'dev', 'lo', 'ingress'])
      if (!r.stdout.includes('name ziti_tproxy')) throw new CniError(ErrorCode.Drift, 'the eBPF program is not attached to lo ingress')
    }
    return { ok: true, intercepted: true, mode: plan.mode }
  }

  async gc(req: AgentRequest): Promise<AgentResponse> {
    const valid = new Set(req.validAttachments.map((a) => `${a.containerID}/${a.ifname}`))
    let removed = 0
    for (const s of this.d.state.list()) {
      if (valid.has(`${s.containerId}/${s.ifName}`)) continue
      try {
        await this.del({ ...req, command: 'DEL', containerId: s.containerId, ifName: s.ifName, netns: s.netns, pod: s.pod })
        removed++
      } catch (e) {
        this.d.log.warn({ err: (e as Error).message, containerId: s.containerId }, 'GC could not clean an attachment')
      }
    }
    return { ok: true, intercepted: false, detail: `removed ${removed} stale attachment(s)` }
  }
}

/** How many `lookup local` rules `ip rule show` lists at this priority. */
function localRulesAt(ruleShow: string, priority: number): number {
  return ruleShow.match(new RegExp(`^${priority}:\\s+from all lookup local\\s*$`, 'gm'))?.length ?? 0
}
