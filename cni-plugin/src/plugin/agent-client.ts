// HTTP over the agent's unix socket, bounded by a deadline.
import { request } from 'node:http'
import type { AgentRequest, AgentResponse } from '../cni/agent-protocol.ts'
import { AGENT_CNI_PATH, AGENT_STATUS_PATH } from '../cni/agent-protocol.ts'

/** The agent could not be reached at all (as opposed to answering with an error). */
export class AgentUnreachable extends Error {
  override readonly name = 'AgentUnreachable'
}

function call(socketPath: string, method: string, path: string, body: unknown, timeoutMs: number): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = request({
      socketPath, method, path,
      headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {},
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }))
      res.on('error', reject)
    })
    const timer = setTimeout(() => req.destroy(new AgentUnreachable(`no answer from the agent at ${socketPath} within ${timeoutMs} ms`)), timeoutMs)
    req.on('close', () => clearTimeout(timer))
    req.on('error', (e: NodeJS.ErrnoException) => {
      reject(e instanceof AgentUnreachable ? e : new AgentUnreachable(`cannot reach the agent at ${socketPath}: ${e.code ?? e.message}`))
    })
    req.end(payload)
  })
}

export async function callAgent(socketPath: string, body: AgentRequest, timeoutMs: number): Promise<AgentResponse> {
  const { status, text } = await call(socketPath, 'POST', AGENT_CNI_PATH, body, timeoutMs)
  try {
    return JSON.parse(text) as AgentResponse
  } catch {
    return { ok: false, code: 5, msg: `agent answered HTTP ${status} with a body that is not JSON`, details: text.slice(0, 200) }
  }
}

export async function agentStatus(socketPath: string, timeoutMs: number): Promise<boolean> {
  try {
    const { status } = await call(socketPath, 'GET', AGENT_STATUS_PATH, undefined, timeoutMs)
    return status === 200
  } catch {
    return false
  }
}
