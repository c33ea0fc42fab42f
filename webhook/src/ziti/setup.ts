// Wires the controller pieces together for a webhook process: client, provisioner for
// admissions, and the leader-elected reconciler. main.ts and the node suite both use this.
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import type { KubeConfig } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { ControllerConfig } from '../config.ts'
import { LeaderElector } from '../leader.ts'
import { ControllerClient } from './controller.ts'
import { parseCredential } from './credential.ts'
import { createControllerMetrics } from './metrics.ts'
import { EnrollmentSecrets, IdentityProvisioner } from './provision.ts'
import { IdentityReconciler } from './reconcile.ts'

export interface ControllerRuntime {
  provisioner: IdentityProvisioner
  reconciler: IdentityReconciler
  leader: LeaderElector
  client: ControllerClient
  stop: () => void
}

export function startController(cfg: ControllerConfig, kc: KubeConfig, registry: Registry, log: Logger, opts: { namespace: string; identity?: string; credentialText?: string; caText?: string; autoStart?: boolean }): ControllerRuntime {
  const credential = parseCredential(opts.credentialText ?? readFileSync(cfg.credentialFile, 'utf8'))
  const ca = opts.caText ?? (cfg.caFile ? readFileSync(cfg.caFile, 'utf8') : credential.kind === 'cert' ? credential.ca : undefined)
  if (!ca) throw new Error('controller.caFile is empty and the credential carries no id.ca: the controller\'s certificate cannot be verified')
  const metrics = createControllerMetrics(registry)
  const clog = log.child({ component: 'controller', controller: cfg.url })
  const client = new ControllerClient({ url: cfg.url, ca, credential, metrics, log: clog })
  const secrets = new EnrollmentSecrets(kc)
  const provisioner = new IdentityProvisioner(client, secrets, cfg, metrics, clog)
  // POD_NAME comes from the downward API; replicas must differ.
  const leader = new LeaderElector(kc, { namespace: opts.namespace, name: cfg.leaseName, identity: opts.identity ?? process.env.POD_NAME ?? hostname(), leaseSeconds: cfg.leaseSeconds }, log)
  const reconciler = new IdentityReconciler(kc, { client, secrets, cfg, metrics, log: clog.child({ component: 'reconciler' }), isLeader: () => leader.isLeader() })
  const stops = opts.autoStart === false ? [] : [leader.start(), reconciler.start()]
  return { provisioner, reconciler, leader, client, stop: () => { for (const s of stops) s(); client.close() } }
}
