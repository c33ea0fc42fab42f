// Admission-time work for `cni.openziti.io/identity: auto`: create the pod's identity, put its
// enrollment JWT into a per-pod Secret, list what it may dial. Undone (best effort) when the
// admission fails after the identity exists; the reconciler removes whatever that misses.
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import type { ControllerConfig } from '../config.ts'
import { ENROLLMENT_TOKEN_KEY, type ControllerGrant } from '../inject/mutate.ts'
import { ControllerError, type ControllerClient } from './controller.ts'
import { enrollmentSecretName, identityName, identityTags, MANAGED_BY, type PodRef } from './identity.ts'
import type { ControllerMetrics } from './metrics.ts'
import { autoServices } from './services.ts'
import { LIMITS } from '@ziti-cni/shared'

/** Secrets in pods' namespaces: create one, delete one by name. Never list or read. */
export class EnrollmentSecrets {
  private readonly core: CoreV1Api
  constructor(kc: KubeConfig) {
    this.core = kc.makeApiClient(CoreV1Api)
  }

  async create(namespace: string, name: string, jwt: string, identity: { id: string; name: string }, deadline: number): Promise<void> {
    await withDeadline(this.core.createNamespacedSecret({
      namespace,
      body: {
        metadata: {
          name, namespace,
          labels: { 'app.kubernetes.io/managed-by': MANAGED_BY },
          annotations: { 'cni.openziti.io/identity-id': identity.id, 'cni.openziti.io/identity-name': identity.name },
        },
        type: 'Opaque',
        stringData: { [ENROLLMENT_TOKEN_KEY]: jwt },
      },
    }), deadline, `creating Secret ${namespace}/${name}`)
  }

  /** True when deleted, false when it was not there. */
  async delete(namespace: string, name: string): Promise<boolean> {
    try {
      await this.core.deleteNamespacedSecret({ namespace, name })
      return true
    } catch (e) {
      if ((e as { code?: number }).code === 404) return false
      throw e
    }
  }
}

export class DeadlineError extends Error {
  override readonly name = 'DeadlineError'
}

function withDeadline<T>(p: Promise<T>, deadline: number, what: string): Promise<T> {
  const left = deadline - Date.now()
  if (left <= 0) return Promise.reject(new DeadlineError(`no time left for ${what}`))
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new DeadlineError(`${what} took longer than ${left} ms`)), left) }),
  ])
}

export interface ProvisionRequest {
  pod: PodRef
  roleAttributes: string[]
  /** List the identity's dialable services too (proxy mode without its own list). */
  services: boolean
  deadline: number
}

export class IdentityProvisioner {
  private readonly client: ControllerClient
  private readonly secrets: EnrollmentSecrets
  private readonly cfg: ControllerConfig
  private readonly metrics: ControllerMetrics
  private readonly log: Logger

  constructor(client: ControllerClient, secrets: EnrollmentSecrets, cfg: ControllerConfig, metrics: ControllerMetrics, log: Logger) {
    this.client = client
    this.secrets = secrets
    this.cfg = cfg
    this.metrics = metrics
    this.log = log.child({ component: 'identity-provisioner' })
  }

  async provision(req: ProvisionRequest): Promise<ControllerGrant> {
    const name = identityName(this.cfg.identityPrefix, req.pod)
    const secretName = enrollmentSecretName(req.pod.admissionUid)
    const id = await this.client.createIdentity({ name, roleAttributes: req.roleAttributes, tags: identityTags(this.cfg.cluster, req.pod) }, req.deadline)
    this.metrics.identities.inc({ event: 'created' })
    const grant: ControllerGrant = { identityId: id, identityName: name, secretName, services: undefined }
    try {
      const [detail, services] = await Promise.all([
        this.client.getIdentity(id, req.deadline),
        req.services ? this.client.dialableServices(id, req.deadline) : Promise.resolve(undefined),
      ])
      const jwt = detail?.enrollment?.ott?.jwt
      if (!jwt) throw new ControllerError('rejected', `the controller created identity ${name} (${id}) without a one-time enrollment token`)
      await this.secrets.create(req.pod.namespace, secretName, jwt, { id, name }, req.deadline)
      if (services) grant.services = autoServices(services, { maxPortsPerService: this.cfg.maxPortsPerService, maxEntries: LIMITS.services })
      this.log.info({ identity: name, identityId: id, namespace: req.pod.namespace, pod: req.pod.name ?? req.pod.generateName, services: services?.length }, 'created the pod\'s Ziti identity')
      return grant
    } catch (e) {
      await this.rollback(grant, req.pod.namespace, (e as Error).message)
      throw e
    }
  }

  /** Undoes a grant whose admission failed; what fails here is left to the reconciler. */
  async rollback(grant: ControllerGrant, namespace: string, reason: string): Promise<void> {
    // A short deadline of its own: the admission's may be spent already.
    const deadline = Date.now() + 3000
    const results = await Promise.allSettled([
      this.client.deleteIdentity(grant.identityId, deadline),
      this.secrets.delete(namespace, grant.secretName),
    ])
    const failed = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))
    this.metrics.identities.inc({ event: 'rolled-back' })
    if (failed.length) this.log.warn({ identity: grant.identityName, identityId: grant.identityId, reason, failed }, 'admission failed after the identity was created; the reconciler will remove what this could not')
    else this.log.info({ identity: grant.identityName, identityId: grant.identityId, reason }, 'admission failed after the identity was created; identity and Secret deleted')
  }
}
