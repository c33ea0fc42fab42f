// The CNI executable's logic: dispatch on CNI_COMMAND, talk to the agent, fall back to the
// API server when the agent is down. Dependencies are injected so every path is testable.
import { ANNOTATION_INTERCEPTION } from '@ziti-cni/shared'
import type { AgentRequest, AgentResponse } from '../cni/agent-protocol.ts'
import { DEFAULTS, parseRequest, type CniRequest } from '../cni/request.ts'
import { CURRENT_VERSION, CniError, ErrorCode, convertResult, versionResult, type CniResult } from '../cni/spec.ts'
import type { PodAnnotations } from './pod-fallback.ts'
import { AgentUnreachable } from './agent-client.ts'
import type { Logger } from './log.ts'

export interface PluginDeps {
  callAgent(socket: string, body: AgentRequest, timeoutMs: number): Promise<AgentResponse>
  agentStatus(socket: string, timeoutMs: number): Promise<boolean>
  readPod(kubeconfig: string, pod: NonNullable<CniRequest['pod']>, timeoutMs: number): Promise<PodAnnotations | undefined>
  kubeconfigReadable(path: string): boolean
  logger(req: CniRequest | undefined): Logger
}

export interface PluginOutput {
  /** Printed as JSON on stdout (a result, a version answer, or the spec's error object); none for DEL/GC/STATUS success. */
  stdout: unknown
  exitCode: number
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
      const kubeconfig = req.conf.kubeconfig ?? DEFAULTS.kubeconfig
      if (deps.kubeconfigReadable(kubeconfig)) {
        log.log('warn', 'agent is down; pods without interception intent can still be added', { socket })
        return { stdout: undefined, exitCode: 0 }
      }
      throw new CniError(ErrorCode.PluginNotAvailable, `ziti-cni cannot service ADD: agent at ${socket} is down and kubeconfig ${kubeconfig} is unreadable`)
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
    await fallback(req, deps, timeoutMs, e)
    return
  }
  await expectOk(res)
  if (res.ok) log.log('info', `${req.command} done`, { intercepted: res.intercepted, mode: res.mode })
}

/** Agent down: a pod without intent passes through; a pod with intent fails closed (retryable). */
async function fallback(req: CniRequest, deps: PluginDeps, timeoutMs: number, cause: AgentUnreachable): Promise<void> {
  const pod = req.pod!
  const kubeconfig = req.conf.kubeconfig ?? DEFAULTS.kubeconfig
  let found: PodAnnotations | undefined
  try {
    found = await deps.readPod(kubeconfig, pod, timeoutMs)
  } catch (e) {
    // Agent gone and our credential refused: ziti-cni is being (or was) uninstalled out of order
    // (namespace, ServiceAccount and RBAC deleted before the DaemonSet). Failing here would stop
    // every pod on the node, kube-system included; pass through instead. An injected pod is
    // still safe: its validator init container exits 126 when it is not intercepted.
    // By name: the class lives in the lazily loaded fallback module (node:https is costly).
    if ((e as Error).name === 'CredentialRefused') {
      deps.logger(req).log('warn', 'agent unreachable and the API refuses our credential (ziti-cni being uninstalled?); passing through', { error: (e as Error).message })
      return
    }
    throw new CniError(ErrorCode.TryAgainLater, `ziti-cni agent is down (${cause.message}) and pod ${pod.namespace}/${pod.name} could not be read directly: ${(e as Error).message}`)
  }
  if (found && pod.uid && found.uid && found.uid !== pod.uid) {
    throw new CniError(ErrorCode.TryAgainLater, `pod ${pod.namespace}/${pod.name} in the API has uid ${found.uid}, not ${pod.uid}: stale read, retry`)
  }
  if (found?.annotations[ANNOTATION_INTERCEPTION] !== undefined) {
    throw new CniError(ErrorCode.TryAgainLater,
      `ziti-cni agent is down (${cause.message}); pod ${pod.namespace}/${pod.name} has interception intent, so it fails closed until the agent is back`)
  }
  deps.logger(req).log('warn', 'agent unreachable; pod has no interception intent, passing through', { found: found !== undefined })
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
