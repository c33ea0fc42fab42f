// ADD/DEL/CHECK/GC on the node: read the pod's intent, render it with the shared renderer,
// apply it inside the pod's netns as one nft transaction plus policy routes, and record it.
// The flow only: each datapath's mechanics (tun device, routing, eBPF program, sysctls) live
// in ./datapath/, one module each.
import { ANNOTATION_INTERCEPTION, NFT_FAMILY, NFT_TABLE, ValidationError, createOnly, parseIntent, podIngress, renderDeleteTable, renderPlan, serializeIntent, type IngressPort, type IngressSpec, type Plan } from '@ziti-cni/shared'
import { lineDiff, normaliseListing } from '@ziti-cni/shared'
import { podAddressClash } from '../../../shared/src/ranges.ts'
import type { Logger } from 'pino'
import type { AgentRequest, AgentResponse } from '../cni/agent-protocol.ts'
import { CniError, ErrorCode, type PodRef } from '../cni/spec.ts'
import type { Netns } from './netns.ts'
import type { PodSource } from './pods.ts'
import type { StateStore } from './state.ts'
import { attachBpf, checkBpf, detachBpf } from './datapath/ebpf.ts'
import { addRouting, checkRouting, removeRouting } from './datapath/routing.ts'
import { checkSysctls, resetSysctls, setSysctls } from './datapath/sysctl.ts'
import { addTun, checkTun, removeTun } from './datapath/tun.ts'

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
  private plan(pod: PodRef, text: string, spec: IngressSpec | undefined, podIps: string[] | undefined): { plan: Plan; canonical: string; ingress: IngressPort[]; listingKey: string } {
    try {
      const intent = parseIntent(text)
      const clash = podAddressClash(intent, podIps ?? [])
      if (clash) throw new CniError(ErrorCode.InvalidIntent, `pod ${pod.namespace}/${pod.name}: ${clash}`, 'nothing was programmed')
      const ingress = podIngress(spec)
      const canonical = serializeIntent(intent)
      return { plan: renderPlan(intent, { podIps, ingress }), canonical, ingress, listingKey: `${canonical} ${JSON.stringify(ingress)}` }
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

  async add(req: AgentRequest): Promise<AgentResponse> {
    const pod = req.pod!
    const { text, spec } = await this.intentOf(pod)
    if (text === undefined) return { ok: true, intercepted: false, detail: 'no interception intent' }
    const { plan, canonical, ingress, listingKey } = this.plan(pod, text, spec, req.podIps)
    this.assertPodNetns(req.netns)
    const { netns } = this.d
    // Routing first (idempotent), then the table in one transaction; undo routing if nft fails.
    await removeRouting(netns, req.netns, plan)
    await removeTun(netns, req.netns, plan.tun)
    try {
      if (plan.tun) await addTun(netns, req.netns, plan.tun)
      await addRouting(netns, req.netns, plan)
      await setSysctls(netns, req.netns, plan)
      const created = await this.d.netns.nft(req.netns, ['-f', '-'], createOnly(plan.nft))
      if (created.code !== 0) {
        if (!created.stderr.includes('File exists')) throw new CniError(ErrorCode.ProgrammingFailed, `nft -f in ${req.netns} failed`, created.stderr.trim())
        await this.nft(req.netns, ['-f', '-'], plan.nft) // a table is there (ADD again): replace it
      }
      if (plan.bpf) await attachBpf(netns, req.netns, this.d.bpfObject)
    } catch (e) {
      // Nothing half-done: the table, the routing, the sysctls and the program go together.
      await netns.nft(req.netns, ['-f', '-'], renderDeleteTable())
      await removeRouting(netns, req.netns, plan)
      await removeTun(netns, req.netns, plan.tun)
      await resetSysctls(netns, req.netns, plan)
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
      mode: plan.mode, intent: canonical, ...(req.podIps ? { podIps: req.podIps } : {}), ...(ingress.length ? { ingress } : {}), listing, createdAt: new Date().toISOString(),
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
        await removeRouting(this.d.netns, netns, plan)
        await removeTun(this.d.netns, netns, plan.tun)
        await resetSysctls(this.d.netns, netns, plan)
        if (plan.bpf) await detachBpf(this.d.netns, netns)
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
    if (plan.tun) await checkTun(this.d.netns, req.netns, plan.tun)
    await checkRouting(this.d.netns, req.netns, plan)
    await checkSysctls(this.d.netns, req.netns, plan)
    if (plan.bpf) await checkBpf(this.d.netns, req.netns)
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
