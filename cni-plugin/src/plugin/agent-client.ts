// Talks to the node agent over its unix socket (JSON line protocol), bounded by a deadline.
import { connect } from 'node:net'
import { MAX_MESSAGE_BYTES, type AgentRequest, type AgentResponse } from '../cni/agent-protocol.ts'

/** The agent could not be reached at all (as opposed to answering with an error). */
export class AgentUnreachable extends Error {
  override readonly name = 'AgentUnreachable'
}

function call(socketPath: string, body: AgentRequest, timeoutMs: number): Promise<AgentResponse> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath)
    const chunks: Buffer[] = []
    let size = 0
    let settled = false
    const done = (fn: () => void) => { if (!settled) { settled = true; clearTimeout(timer); sock.destroy(); fn() } }
    const timer = setTimeout(() => done(() => reject(new AgentUnreachable(`no answer from the agent at ${socketPath} within ${timeoutMs} ms`))), timeoutMs)
    sock.on('connect', () => sock.write(JSON.stringify(body) + '\n'))
    sock.on('data', (c: Buffer) => {
      chunks.push(c)
      size += c.length
      if (size > MAX_MESSAGE_BYTES) done(() => resolve({ ok: false, code: 5, msg: 'agent answer is too large' }))
      else if (c.includes(10)) sock.end()
    })
    sock.on('end', () => done(() => {
      const text = Buffer.concat(chunks).toString('utf8').trim()
      try {
        resolve(JSON.parse(text) as AgentResponse)
      } catch {
        resolve({ ok: false, code: 5, msg: 'agent answered with something that is not JSON', details: text.slice(0, 200) })
      }
    }))
    sock.on('error', (e: NodeJS.ErrnoException) => done(() => reject(new AgentUnreachable(`cannot reach the agent at ${socketPath}: ${e.code ?? e.message}`))))
  })
}

export function callAgent(socketPath: string, body: AgentRequest, timeoutMs: number): Promise<AgentResponse> {
  return call(socketPath, body, timeoutMs)
}

export async function agentStatus(socketPath: string, timeoutMs: number): Promise<boolean> {
  try {
    const r = await call(socketPath, { command: 'PING', containerId: '', netns: '', ifName: '', pod: undefined, validAttachments: [] }, timeoutMs)
    return r.ok
  } catch {
    return false
  }
}
