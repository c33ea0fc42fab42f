// One CNI invocation as data: environment + stdin config, validated per command.
import { CniError, ErrorCode, SUPPORTED_VERSIONS, commandAllowed, isSupportedVersion, parseCniArgs, podRefFromArgs, type Command, type CniVersion, type NetConf, type PodRef } from './spec.ts'

export interface PluginConf extends NetConf {
  /** Unix socket of the node agent. */
  agentSocket?: string
  /** The agent's node-local intent snapshot, read only when the agent is down. */
  snapshot?: string
  /** Bound on each agent/API call. */
  timeoutSeconds?: number
  /** Optional log file; the plugin never logs to stdout. */
  logFile?: string
}

export interface CniRequest {
  command: Command
  version: CniVersion
  conf: PluginConf
  containerId: string
  netns: string
  ifName: string
  pod: PodRef | undefined
  /** Attachments still valid (GC, spec 1.1). */
  validAttachments: Array<{ containerID: string; ifname: string }>
}

export const DEFAULTS = {
  agentSocket: '/var/run/ziti-cni/agent.sock',
  snapshot: '/var/run/ziti-cni/intents.json',
  timeoutSeconds: 10,
}

const COMMANDS: readonly Command[] = ['ADD', 'DEL', 'CHECK', 'VERSION', 'STATUS', 'GC']

export function parseRequest(env: NodeJS.ProcessEnv, stdin: string): CniRequest {
  const command = env.CNI_COMMAND as Command
  if (!COMMANDS.includes(command)) {
    throw new CniError(ErrorCode.InvalidEnv, `CNI_COMMAND ${JSON.stringify(env.CNI_COMMAND ?? '')} is not one of ${COMMANDS.join(', ')}`)
  }
  let conf: PluginConf
  try {
    conf = JSON.parse(stdin) as PluginConf
  } catch (e) {
    throw new CniError(ErrorCode.DecodeFailure, 'network configuration on stdin is not valid JSON', (e as Error).message)
  }
  if (typeof conf !== 'object' || conf === null || Array.isArray(conf)) throw new CniError(ErrorCode.InvalidConfig, 'network configuration must be a JSON object')
  if (!isSupportedVersion(conf.cniVersion)) {
    throw new CniError(ErrorCode.IncompatibleVersion, `cniVersion ${JSON.stringify(conf.cniVersion)} is not supported`, `supported: ${SUPPORTED_VERSIONS.join(', ')}`)
  }
  const version = conf.cniVersion
  if (!commandAllowed(command, version)) {
    throw new CniError(ErrorCode.IncompatibleVersion, `${command} is not defined for cniVersion ${version}`)
  }
  if (conf.timeoutSeconds !== undefined && (typeof conf.timeoutSeconds !== 'number' || conf.timeoutSeconds <= 0 || conf.timeoutSeconds > 120)) {
    throw new CniError(ErrorCode.InvalidConfig, 'timeoutSeconds must be a number in (0, 120]')
  }
  for (const k of ['agentSocket', 'snapshot', 'logFile'] as const) {
    if (conf[k] !== undefined && typeof conf[k] !== 'string') throw new CniError(ErrorCode.InvalidConfig, `${k} must be a string`)
  }
  const needsContainer = command === 'ADD' || command === 'DEL' || command === 'CHECK'
  const containerId = env.CNI_CONTAINERID ?? ''
  const netns = env.CNI_NETNS ?? ''
  const ifName = env.CNI_IFNAME ?? ''
  if (needsContainer) {
    if (!containerId) throw new CniError(ErrorCode.InvalidEnv, 'CNI_CONTAINERID is required')
    if (!ifName) throw new CniError(ErrorCode.InvalidEnv, 'CNI_IFNAME is required')
    if (command !== 'DEL' && !netns) throw new CniError(ErrorCode.InvalidEnv, 'CNI_NETNS is required')
  }
  const valid = conf['cni.dev/valid-attachments']
  if (command === 'GC' && !Array.isArray(valid)) {
    // Without the list every attachment would look stale: refuse rather than wipe the node.
    throw new CniError(ErrorCode.InvalidConfig, 'GC needs cni.dev/valid-attachments (a list, possibly empty)')
  }
  const validAttachments = Array.isArray(valid)
    ? valid.filter((a): a is { containerID: string; ifname: string } => typeof a?.containerID === 'string' && typeof a?.ifname === 'string')
    : []
  return {
    command, version, conf, containerId, netns, ifName,
    pod: needsContainer ? podRefFromArgs(parseCniArgs(env.CNI_ARGS)) : undefined,
    validAttachments,
  }
}
