// What an `identity: auto` pod intercepts (fixed at admission) against what its identity may
// dial now. Pods are not updated when policies change (a running pod's netns rules and sidecar
// arguments are immutable); this is what tells the operator which pods to recreate. Pure.
import type { ProxyIntent } from '@ziti-cni/shared'
import type { V1HostAlias } from '@kubernetes/client-node'
import { entryTarget, type AutoServices } from './services.ts'

export interface Drift {
  /** host:port/proto=service, intercepted and still granted. */
  unchanged: string[]
  /** Granted now, not intercepted in the pod: recreate it to pick them up. */
  added: string[]
  /** Intercepted, no longer granted: connections fail at the controller. */
  removed: string[]
}

/** The pod's intercepted host:port/proto, with the sidecar listener each goes to. */
export function podInterception(intent: ProxyIntent, hostAliases: V1HostAlias[], listeners: Map<number, string>): string[] {
  const host = new Map<string, string>()
  for (const a of hostAliases) if (a.ip && a.hostnames?.[0]) host.set(a.ip, a.hostnames[0])
  return intent.dnat.map((d) => `${entryTarget({ host: host.get(d.dst) ?? d.dst, port: d.port, portTo: d.portTo, proto: d.proto })}=${listeners.get(d.to) ?? `listener ${d.to}`}`)
}

export function drift(pod: string[], now: AutoServices): Drift {
  const want = new Set(now.entries.map((e) => `${entryTarget(e)}=${e.service}`))
  const have = new Set(pod)
  const sorted = (xs: Iterable<string>) => [...xs].sort()
  return {
    unchanged: sorted([...have].filter((x) => want.has(x))),
    added: sorted([...want].filter((x) => !have.has(x))),
    removed: sorted([...have].filter((x) => !want.has(x))),
  }
}

/** Listener port -> Ziti service, from the sidecar's `service:port[:udp]` arguments and proxy.v1. */
export function listenersFromArgs(args: string[]): Map<number, string> {
  const out = new Map<number, string>()
  for (const a of args) {
    const m = /^([^:-][^:]*):(\d+)(?::(?:tcp|udp))?$/.exec(a)
    if (m) out.set(Number(m[2]), m[1]!)
  }
  return out
}
