// What the fence lets in from outside the pod: the ports the pod's own containers declare
// (containerPorts) and the numeric ports the kubelet probes. Read by the agent from the pod
// spec it gets from the API server (authenticated, and ports are immutable once the pod
// exists), so pods of one template share one intent and a pod admitted before the fence
// existed gets it right too. Pure: a spec in, a sorted list out.
import type { Proto } from './annotations.ts'
import { SIDECAR_NAME, VALIDATOR_NAME } from './keys.ts'
import { LIMITS } from './limits.ts'
import { ValidationError } from './errors.ts'

export interface IngressPort { proto: Proto; port: number }

/** The slice of a core/v1 PodSpec this reads (structural, so shared needs no client types). */
export interface IngressSpec {
  containers?: IngressContainer[]
  initContainers?: IngressContainer[]
}
interface Probe {
  httpGet?: { port?: number | string }
  tcpSocket?: { port?: number | string }
  grpc?: { port?: number }
}
interface IngressContainer {
  name?: string
  ports?: Array<{ containerPort?: number; protocol?: string }>
  livenessProbe?: Probe
  readinessProbe?: Probe
  startupProbe?: Probe
}

const isPort = (p: unknown): p is number => typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535

/**
 * The app's inbound ports. The sidecar's own container (and the validator) never open a port
 * to the outside, whatever they declare; SCTP ports are left out (the fence is TCP and UDP:
 * everything else non-lo but ICMP is dropped). Named probe ports resolve to declared ports,
 * which are already in; numeric ones are added as TCP (the kubelet probes over TCP).
 */
export function podIngress(spec: IngressSpec | undefined): IngressPort[] {
  const seen = new Map<string, IngressPort>()
  const add = (proto: Proto, port: unknown) => { if (isPort(port)) seen.set(`${proto}/${port}`, { proto, port }) }
  for (const c of [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])]) {
    if (c.name === SIDECAR_NAME || c.name === VALIDATOR_NAME) continue
    for (const p of c.ports ?? []) {
      const proto = (p.protocol ?? 'TCP').toUpperCase()
      if (proto === 'TCP' || proto === 'UDP') add(proto.toLowerCase() as Proto, p.containerPort)
    }
    for (const probe of [c.livenessProbe, c.readinessProbe, c.startupProbe]) {
      add('tcp', probe?.httpGet?.port)
      add('tcp', probe?.tcpSocket?.port)
      add('tcp', probe?.grpc?.port)
    }
  }
  const list = [...seen.values()].sort((a, b) => (a.proto === b.proto ? a.port - b.port : a.proto < b.proto ? -1 : 1))
  if (list.length > LIMITS.ingress) throw new ValidationError('spec.containers[*].ports', `the pod declares ${list.length} inbound ports, more than the limit of ${LIMITS.ingress}`)
  return list
}
