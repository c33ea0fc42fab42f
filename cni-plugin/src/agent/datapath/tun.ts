// tun mode: the device the sidecar attaches to, made and checked by the agent.
import { tunCommands, tunDeleteCommands, type TunSpec } from '@ziti-cni/shared'
import { CniError, ErrorCode } from '../../cni/spec.ts'
import type { Netns } from '../netns.ts'
import { ipBatches } from './ip.ts'

export async function addTun(netns: Netns, path: string, tun: TunSpec): Promise<void> {
  await ipBatches(netns, path, tunCommands(tun), false)
}

/** Deletes the device (address and routes go with it); absent is success. */
export async function removeTun(netns: Netns, path: string, tun: TunSpec | undefined): Promise<void> {
  if (tun) await ipBatches(netns, path, tunDeleteCommands(tun), true)
}

/** The device as ADD made it: a tun, owned by the sidecar's uid and no group, addressed, up, routed. */
export async function checkTun(netns: Netns, path: string, tun: TunSpec): Promise<void> {
  const link = await netns.ip(path, ['-d', '-j', 'link', 'show', 'dev', tun.dev])
  if (link.code !== 0) throw new CniError(ErrorCode.Drift, `tun device ${tun.dev} is missing from ${path}`, link.stderr.trim())
  const [info] = JSON.parse(link.stdout) as Array<{ flags?: string[]; linkinfo?: { info_kind?: string; info_data?: { type?: string; user?: number; group?: number; pi?: boolean } } }>
  const data = info?.linkinfo?.info_data
  if (info?.linkinfo?.info_kind !== 'tun' || data?.type !== 'tun') throw new CniError(ErrorCode.Drift, `${tun.dev} is not a tun device`, link.stdout)
  if (data.user !== tun.uid || (data.group !== undefined && data.group !== -1)) throw new CniError(ErrorCode.Drift, `${tun.dev} is owned by ${data.user}${data.group !== undefined ? `:${data.group}` : ''}, not by the sidecar's uid ${tun.uid} alone`)
  if (!info.flags?.includes('UP')) throw new CniError(ErrorCode.Drift, `${tun.dev} is down`)
  const addrs = await netns.ip(path, ['-j', '-4', 'addr', 'show', 'dev', tun.dev])
  const have = (JSON.parse(addrs.stdout || '[]') as Array<{ addr_info?: Array<{ local: string; prefixlen: number }> }>).flatMap((l) => l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`)
  if (!have.includes(tun.addr)) throw new CniError(ErrorCode.Drift, `${tun.dev} lost its address ${tun.addr}`, have.join(', '))
  const routes = (await netns.ip(path, ['-4', 'route', 'show', 'dev', tun.dev])).stdout.split('\n').map((l) => l.split(' ')[0])
  for (const r of tun.routes) if (!routes.includes(r)) throw new CniError(ErrorCode.Drift, `route ${r} dev ${tun.dev} is missing`)
}
