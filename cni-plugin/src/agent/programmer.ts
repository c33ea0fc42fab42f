// ADD/DEL/CHECK/GC on the node: read the pod's intent, render it with the shared renderer,
// apply it inside the pod's netns as one nft transaction plus policy routes, and record it.
import { ANNOTATION_INTERCEPTION, NFT_FAMILY, NFT_TABLE, ValidationError, ipCommands, parseIntent, renderDeleteTable, renderPlan, serializeIntent, type Plan } from '@ziti-cni/shared'
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
}

const LIST_TABLE = ['list', 'table', NFT_FAMILY, NFT_TABLE]

export class Programmer {
  private readonly d: ProgrammerDeps
  constructor(deps: ProgrammerDeps) {
    this.d = deps
  }

  async handle(req: AgentRequest): Promise<AgentResponse> {
    switch (req.command) {
      case 'ADD': return this.add(req)
      case 'DEL': return this.del(req)
      case 'CHECK': return this.check(req)
      case 'GC': return this.gc(req)
    }
  }

  /** The pod's intent text, or undefined when the pod has none. */
  private async intentOf(pod: PodRef): Promise<string | undefined> {
    let found
    try {
      found = await this.d.pods.get(pod, this.d.lookupDeadlineMs)
    } catch (e) {
      throw new CniError(ErrorCode.PodLookupFailed, (e as Error).message)
    }
    return found.pod?.metadata?.annotations?.[ANNOTATION_INTERCEPTION]
  }

  private plan(pod: PodRef, text: string): { plan: Plan; canonical: string } {
    try {
      const intent = parseIntent(text)
      return { plan: renderPlan(intent), canonical: serializeIntent(intent) }
    } catch (e) {
      if (e instanceof ValidationError) {
        throw new CniError(ErrorCode.InvalidIntent, `pod ${pod.namespace}/${pod.name}: ${e.message}`, 'nothing was programmed')
      }
      throw e
    }
  }

  private async nft(netns: string, args: string[], input?: string): Promise<string> {
    const r = await this.d.netns.nft(netns, args, input)
    if (r.code !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `nft ${args[0]} in ${netns} failed`, r.stderr.trim())
    return r.stdout
  }

  private async removeRouting(netns: string, plan: Pick<Plan, 'routes' | 'rules'>): Promise<void> {
    for (const argv of ipCommands(plan)) {
      const del = [...argv]
      del[2] = 'del'
      // Deleting until it fails removes duplicates too; "not found" is the success case here.
      for (let i = 0; i < 8; i++) if ((await this.d.netns.ip(netns, del)).code !== 0) break
    }
  }

  async add(req: AgentRequest): Promise<AgentResponse> {
    const pod = req.pod!
    const text = await this.intentOf(pod)
    if (text === undefined) return { ok: true, intercepted: false, detail: 'no interception intent' }
    const { plan, canonical } = this.plan(pod, text)
    try {
      this.d.netns.assertPodNetns(req.netns)
    } catch (e) {
      throw new CniError(ErrorCode.ProgrammingFailed, (e as Error).message)
    }
    // Routing first (idempotent), then the table in one transaction; undo routing if nft fails.
    await this.removeRouting(req.netns, plan)
    try {
      for (const argv of ipCommands(plan)) {
        const r = await this.d.netns.ip(req.netns, argv)
        if (r.code !== 0) throw new CniError(ErrorCode.ProgrammingFailed, `ip ${argv.join(' ')} failed`, r.stderr.trim())
      }
      await this.nft(req.netns, ['-f', '-'], plan.nft)
    } catch (e) {
      await this.removeRouting(req.netns, plan)
      throw e
    }
    const listing = await this.nft(req.netns, LIST_TABLE)
    this.d.state.put({
      containerId: req.containerId, ifName: req.ifName, netns: req.netns, pod,
      mode: plan.mode, intent: canonical, listing, createdAt: new Date().toISOString(),
    })
    return { ok: true, intercepted: true, mode: plan.mode }
  }

  async del(req: AgentRequest): Promise<AgentResponse> {
    const saved = this.d.state.get(req.containerId, req.ifName)
    const netns = req.netns || saved?.netns || ''
    if (netns && this.d.netns.exists(netns)) {
      try {
        this.d.netns.assertPodNetns(netns)
      } catch (e) {
        throw new CniError(ErrorCode.ProgrammingFailed, (e as Error).message)
      }
      await this.nft(netns, ['-f', '-'], renderDeleteTable())
      if (saved) await this.removeRouting(netns, renderPlan(parseIntent(saved.intent)))
    }
    this.d.state.delete(req.containerId, req.ifName)
    return { ok: true, intercepted: saved !== undefined }
  }

  async check(req: AgentRequest): Promise<AgentResponse> {
    const pod = req.pod!
    const text = await this.intentOf(pod)
    const saved = this.d.state.get(req.containerId, req.ifName)
    this.d.netns.assertPodNetns(req.netns)
    const live = await this.d.netns.nft(req.netns, LIST_TABLE)
    if (text === undefined) {
      if (live.code === 0) throw new CniError(ErrorCode.Drift, `pod ${pod.namespace}/${pod.name} has no intent but its netns has table ${NFT_TABLE}`)
      return { ok: true, intercepted: false }
    }
    const { plan, canonical } = this.plan(pod, text)
    if (!saved) throw new CniError(ErrorCode.Drift, `no record of ADD for ${req.containerId}/${req.ifName}`)
    if (saved.intent !== canonical) throw new CniError(ErrorCode.Drift, `pod ${pod.namespace}/${pod.name}: the interception intent changed since ADD`)
    if (live.code !== 0) throw new CniError(ErrorCode.Drift, `table ${NFT_TABLE} is missing from ${req.netns}`, live.stderr.trim())
    if (live.stdout !== saved.listing) {
      throw new CniError(ErrorCode.Drift, `table ${NFT_TABLE} in ${req.netns} differs from what ADD programmed`, lineDiff(saved.listing, live.stdout))
    }
    for (const rule of plan.rules) {
      const r = await this.d.netns.ip(req.netns, [`-${rule.family}`, 'rule', 'show'])
      if (!r.stdout.includes(`fwmark 0x${rule.fwmark.toString(16)} lookup ${rule.table}`)) {
        throw new CniError(ErrorCode.Drift, `IPv${rule.family} policy rule for fwmark 0x${rule.fwmark.toString(16)} is missing`)
      }
    }
    for (const route of plan.routes) {
      const r = await this.d.netns.ip(req.netns, [`-${route.family}`, 'route', 'show', 'table', String(route.table)])
      if (!/^local default dev lo/m.test(r.stdout)) throw new CniError(ErrorCode.Drift, `IPv${route.family} local route in table ${route.table} is missing`)
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

/** A short, readable difference for the CHECK error's details. */
export function lineDiff(expected: string, actual: string): string {
  const a = new Set(actual.split('\n'))
  const e = new Set(expected.split('\n'))
  const missing = expected.split('\n').filter((l) => !a.has(l)).map((l) => `- ${l.trim()}`)
  const extra = actual.split('\n').filter((l) => !e.has(l)).map((l) => `+ ${l.trim()}`)
  return [...missing, ...extra].slice(0, 20).join('\n')
}
