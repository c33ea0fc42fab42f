// Wires the identity controller together: the Ziti client (the only holder of the
// controller credential), the Lease, the pod watch and reconcile, the enrollment endpoint.
// main.ts, the tests and the node suite all use this.
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node'
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { ControllerConfig } from '../config.ts'
import { LeaderElector } from '../leader.ts'
import { ControllerClient } from '../ziti/controller.ts'
import { parseCredential } from '../ziti/credential.ts'
import { createControllerMetrics } from '../ziti/metrics.ts'
import { IdentityController } from './controller.ts'
import { Enrollment } from './enroll-server.ts'
import { Identities } from './identities.ts'
import { makeApiClient } from '../kube-client.ts'

export interface IdentityRuntime {
  cluster: string
  controller: IdentityController
  enrollment: Enrollment
  leader: LeaderElector
  client: ControllerClient
  stop: () => void
}

/**
 * `controller.cluster`, or `uid-<uid of kube-system>`: namespaces cannot be renamed and their
 * uid is unique per cluster, so two clusters sharing a controller can never pick the same tag
 * by default (the old default "kubernetes" made them delete each other's identities).
 */
export async function clusterTag(cfg: ControllerConfig, kc: KubeConfig): Promise<string> {
  if (cfg.cluster) return cfg.cluster
  const ns = await makeApiClient(kc, CoreV1Api).readNamespace({ name: 'kube-system' })
  if (!ns.metadata?.uid) throw new Error('the kube-system namespace has no uid; set controller.cluster')
  return `uid-${ns.metadata.uid}`
}

export async function startIdentityController(cfg: ControllerConfig, kc: KubeConfig, registry: Registry, log: Logger, opts: { identity?: string; credentialText?: string; caText?: string; autoStart?: boolean } = {}): Promise<IdentityRuntime> {
  const credential = parseCredential(opts.credentialText ?? readFileSync(cfg.credentialFile, 'utf8'))
  const ca = opts.caText ?? (cfg.caFile ? readFileSync(cfg.caFile, 'utf8') : credential.kind === 'cert' ? credential.ca : undefined)
  if (!ca) throw new Error('controller.caFile is empty and the credential carries no id.ca: the controller\'s certificate cannot be verified')
  const cluster = await clusterTag(cfg, kc)
  const metrics = createControllerMetrics(registry)
  const clog = log.child({ component: 'identity-controller', controller: cfg.url, cluster })
  const client = new ControllerClient({ url: cfg.url, ca, credential, metrics, log: clog })
  const identities = new Identities(client, metrics, clog)
  // POD_NAME comes from the downward API; replicas must differ.
  const leader = new LeaderElector(kc, { namespace: cfg.namespace, name: cfg.leaseName, identity: opts.identity ?? process.env.POD_NAME ?? hostname(), leaseSeconds: cfg.leaseSeconds }, log)
  const controller = new IdentityController({ kc, identities, cfg, cluster, metrics, log: clog, isLeader: () => leader.isLeader() })
  const enrollment = new Enrollment({ kc, identities, cfg, cluster, log: clog.child({ component: 'enrollment' }) })
  // A new leader first catches up on whatever happened while it followed (autoStart false:
  // the caller drives every step itself).
  if (opts.autoStart !== false) leader.onChange((leading) => { if (leading) void controller.reconcile() })
  const stops = opts.autoStart === false ? [] : [leader.start(), controller.start()]
  return { cluster, controller, enrollment, leader, client, stop: () => { for (const s of stops) s(); client.close() } }
}
