// The CNI executable's logic: dispatch on CNI_COMMAND, talk to the agent, fall back to the
// agent's node-local intent snapshot when it is down (no API credential on the node).
// Dependencies are injected so every path is testable.
import type { AgentRequest, AgentResponse } from '../cni/agent-protocol.ts'
import { DEFAULTS, parseRequest, type CniRequest } from '../cni/request.ts'
import { CURRENT_VERSION, CniError, ErrorCode, convertResult, versionResult, type CniResult } from '../cni/spec.ts'
import { decide, missingWhy, parseSnapshot, type IntentSnapshot } from '../cni/intent-snapshot.ts'
import { AgentUnreachable } from './agent-client.ts'
import type { Logger } from './log.ts'

export interface PluginDeps {
  callAgent(socket: string, body: AgentRequest, timeoutMs: number): Promise<AgentResponse>
  agentStatus(socket: string, timeoutMs: number): Promise<boolean>
  /** The snapshot file's text; undefined when it does not exist. */
  readSnapshot(path: string): string | undefined
  logger(req: CniRequest | undefined): Logger
}

export interface PluginOutput {
  /** Printed as JSON on stdout (a result, a version answer, or the spec's error object); none for DEL/GC/STATUS success. */
  stdout: unknown
  exitCode: number
}

/** What the executable prints: the JSON and a newline, or nothing. */
export function renderStdout(out: PluginOutput): string {
  return out.stdout === undefined ? '' : JSON.stringify(out.stdout) + '\n'
}

export async function runPlugin(env: NodeJS.ProcessEnv, stdin: string, deps: PluginDeps): Promise<PluginOutput> {
  if (env.CNI_COMMAND === 'VERSION') return { stdout: versionResult(), exitCode: 0 }
  let req: CniRequest | undefined
  try {
    req = parseRequest(env, stdin)
    return await dispatch(req, deps)
  } catch (e) {
    const err = e instanceof CniError ? e : new CniError(ErrorCode.IoFailure, `ziti-cni internal error: ${(e as Error).message}`)
    deps.logger(req).log('error', err.message, { code: err.code, details: err.details })
    return { stdout: err.toJSON(req?.version ?? declaredVersion(stdin)), exitCode: 1 }
  }
}

/** The cniVersion the caller asked for, for errors raised before the request parsed. */
function declaredVersion(stdin: string): string {
  try {
    const v = (JSON.parse(stdin) as { cniVersion?: unknown })?.cniVersion
    return typeof v === 'string' ? v : CURRENT_VERSION
  } catch {
    return CURRENT_VERSION
  }
}

async function dispatch(req: CniRequest, deps: PluginDeps): Promise<PluginOutput> {
  const socket = req.conf.agentSocket ?? DEFAULTS.agentSocket
  const timeoutMs = (req.conf.timeoutSeconds ?? DEFAULTS.timeoutSeconds) * 1000
  const log = deps.logger(req)

  switch (req.command) {
    case 'STATUS': {
      if (await deps.agentStatus(socket, timeoutMs)) return { stdout: undefined, exitCode: 0 }
      const path = req.conf.snapshot ?? DEFAULTS.snapshot
      const snapshot = loadSnapshot(deps, path)
      if (typeof snapshot === 'object') {
        log.log('warn', 'agent is down; pods the intent snapshot shows without intent can still be added', { socket, snapshot: path })
        return { stdout: undefined, exitCode: 0 }
      }
      throw new CniError(ErrorCode.PluginNotAvailable, `ziti-cni cannot service ADD: agent at ${socket} is down and ${missingWhy(snapshot)}`)
    }
    case 'GC':
      await cleanupOrWarn(req, deps, socket, timeoutMs, 'GC skipped: agent unreachable; it drops stale state when it starts')
      return { stdout: undefined, exitCode: 0 }
    case 'ADD':
    case 'CHECK': {
      const prev = req.conf.prevResult
      if (req.command === 'ADD' && !prev) {
        throw new CniError(ErrorCode.InvalidConfig, 'ziti-cni is a chained plugin: it must follow a primary plugin that provides prevResult')
      }
      if (req.pod) await programOrCheck(req, deps, socket, timeoutMs)
      if (req.command === 'CHECK') return { stdout: undefined, exitCode: 0 }
      return { stdout: convertResult(prev as CniResult, req.version), exitCode: 0 }
    }
    case 'DEL':
      // The table lives in the pod's netns and dies with it; the agent drops stale state later.
      if (req.pod) await cleanupOrWarn(req, deps, socket, timeoutMs, 'DEL with the agent unreachable: nothing to clean from here')
      return { stdout: undefined, exitCode: 0 }
    default:
      throw new CniError(ErrorCode.InvalidEnv, `unsupported command ${String(req.command)}`)
  }
}

/** DEL and GC: the agent's errors count, an unreachable agent does not (nothing to clean here). */
async function cleanupOrWarn(req: CniRequest, deps: PluginDeps, socket: string, timeoutMs: number, warning: string): Promise<void> {
  try {
    await expectOk(await deps.callAgent(socket, agentRequest(req), timeoutMs))
  } catch (e) {
    if (!(e instanceof AgentUnreachable)) throw e
    deps.logger(req).log('warn', warning, { error: e.message })
  }
}

async function programOrCheck(req: CniRequest, deps: PluginDeps, socket: string, timeoutMs: number): Promise<void> {
  const log = deps.logger(req)
  let res: AgentResponse
  try {
    res = await deps.callAgent(socket, agentRequest(req), timeoutMs)
  } catch (e) {
    if (!(e instanceof AgentUnreachable)) throw e
    await fallback(req, deps, e)
    return
  }
  await expectOk(res)
  if (res.ok) log.log('info', `${req.command} done`, { intercepted: res.intercepted, mode: res.mode })
}

/** Agent down: only a pod the snapshot proves has no intent passes; every other fails closed (retryable). */
async function fallback(req: CniRequest, deps: PluginDeps, cause: AgentUnreachable): Promise<void> {
  const pod = req.pod!
  const path = req.conf.snapshot ?? DEFAULTS.snapshot
  const d = decide(loadSnapshot(deps, path), pod)
  if (d.verdict === 'fail') {
    throw new CniError(ErrorCode.TryAgainLater, `ziti-cni agent is down (${cause.message}) and ${d.why}, so pod ${pod.namespace}/${pod.name} fails closed until the agent is back`)
  }
  deps.logger(req).log('warn', `agent unreachable; passing through: ${d.why}`, { snapshot: path })
}

function loadSnapshot(deps: PluginDeps, path: string): IntentSnapshot | string | undefined {
  let text: string | undefined
  try { text = deps.readSnapshot(path) } catch (e) { return `${path}: ${(e as Error).message}` }
  return text === undefined ? undefined : parseSnapshot(text)
}

async function expectOk(res: AgentResponse): Promise<void> {
  if (!res.ok) throw new CniError(res.code, res.msg, res.details ?? '')
}

/** The pod's addresses as the primary plugin reported them (`ips[].address`, CIDR form). */
function podIps(prev: unknown): string[] {
  const ips = (prev as { ips?: Array<{ address?: unknown }> } | undefined)?.ips
  return Array.isArray(ips) ? ips.flatMap((i) => (typeof i?.address === 'string' ? [i.address.split('/')[0]!] : [])).slice(0, 16) : []
}

function agentRequest(req: CniRequest): AgentRequest {
  const ips = podIps(req.conf.prevResult)
  return {
    command: req.command as AgentRequest['command'],
    containerId: req.containerId,
    netns: req.netns,
    ifName: req.ifName,
    pod: req.pod,
    validAttachments: req.validAttachments,
    ...(ips.length ? { podIps: ips } : {}),
  }
}
