// EXEC: a whole CNI invocation the static front end (frontend/ziti-cni.c) forwards over the
// agent's socket, run here through the same runPlugin() the Node executable runs, so a pod
// start pays no Node start-up (bench:cni). Only the plugin's dependencies differ: the agent is
// up by definition (agentStatus true) and its requests go straight to the handler, not back over
// the socket. The snapshot is never read: it is the agent-down path, which the front end takes
// by exec'ing the Node executable when it cannot get a complete answer from here.
import type { AgentRequest, AgentResponse, ExecRequest } from '../cni/agent-protocol.ts'
import { renderExecFallback, renderExecReply } from '../cni/agent-protocol.ts'
import { DEFAULTS, parseRequest } from '../cni/request.ts'
import type { Logger as PinoLogger } from 'pino'
import { pluginLogger, type Logger } from '../plugin/log.ts'
import { renderStdout, runPlugin } from '../plugin/run.ts'

export interface ExecDeps {
  /** The socket path this agent listens on, as the config's `agentSocket` names it. */
  ownSocket: string
  handle(req: AgentRequest): Promise<AgentResponse>
  /** Where the plugin's lines go when its config names no `logFile` (the executable's stderr otherwise). */
  log: PinoLogger
}

/** The raw reply for one EXEC request (already validated by execRequestProblem). */
export async function handleExec(body: ExecRequest, deps: ExecDeps): Promise<Buffer> {
  const env: NodeJS.ProcessEnv = { ...body.env }
  // A config naming another agent's socket is that agent's: the front end asks it via Node.
  const socket = configuredSocket(env, body.stdin)
  if (socket !== undefined && socket !== deps.ownSocket) {
    return renderExecFallback(`the config's agentSocket is ${socket}; this agent listens on ${deps.ownSocket}`)
  }
  const out = await runPlugin(env, body.stdin, {
    callAgent: (_socket, req) => deps.handle(req),
    agentStatus: async () => true,
    // Unreachable (the agent answers every call); undefined would fail closed if it ever were.
    readSnapshot: () => undefined,
    logger: (req) => (req?.conf.logFile ? pluginLogger(env, req) : asPlugin(deps.log)),
  })
  return renderExecReply(out.exitCode, renderStdout(out))
}

/** The agent socket the request's config names; undefined when it does not parse (runPlugin answers that). */
function configuredSocket(env: NodeJS.ProcessEnv, stdin: string): string | undefined {
  if (env.CNI_COMMAND === 'VERSION') return undefined
  try {
    return parseRequest(env, stdin).conf.agentSocket ?? DEFAULTS.agentSocket
  } catch {
    return undefined
  }
}

/** The agent's own log as the plugin's Logger (it already logs each request, so at debug). */
function asPlugin(log: PinoLogger): Logger {
  return { log: (level, msg, fields) => log[level === 'info' ? 'debug' : level]({ plugin: 'ziti-cni', ...fields }, msg) }
}
