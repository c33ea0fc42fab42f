// The wire contract between the thin CNI executable and the node agent (unix socket, HTTP/1.1).
import type { PodRef } from './spec.ts'

export const AGENT_CNI_PATH = '/v1/cni'
export const AGENT_STATUS_PATH = '/v1/status'

export interface AgentRequest {
  command: 'ADD' | 'DEL' | 'CHECK' | 'GC'
  containerId: string
  netns: string
  ifName: string
  pod: PodRef | undefined
  validAttachments: Array<{ containerID: string; ifname: string }>
}

export type AgentResponse =
  | { ok: true; intercepted: boolean; mode?: string; detail?: string }
  | { ok: false; code: number; msg: string; details?: string }
