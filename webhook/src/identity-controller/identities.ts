// The identity controller's side effects at the OpenZiti controller, one pod at a time and
// idempotent per pod uid: the identity's name carries the uid and Ziti names are unique, so a
// second ensure (the other replica, a retry, the enrollment endpoint racing the watch) finds
// the first one instead of making another.
import type { Logger } from 'pino'
import { ControllerError, type ControllerClient, type IdentityDetail, type IdentitySpec } from '../ziti/controller.ts'
import type { ControllerMetrics } from '../ziti/metrics.ts'
import { quote } from '../ziti/zitiql.ts'

export class Identities {
  private readonly client: ControllerClient
  private readonly metrics: ControllerMetrics
  private readonly log: Logger

  constructor(client: ControllerClient, metrics: ControllerMetrics, log: Logger) {
    this.client = client
    this.metrics = metrics
    this.log = log
  }

  async byName(name: string, deadline: number): Promise<IdentityDetail | undefined> {
    const found = await this.client.listIdentities(`name = ${quote(name)}`, deadline)
    return found.find((i) => i.name === name)
  }

  /** The identity for this spec, created when missing. */
  async ensure(spec: IdentitySpec, deadline: number): Promise<IdentityDetail> {
    const have = await this.byName(spec.name, deadline)
    if (have) return have
    try {
      const id = await this.client.createIdentity(spec, deadline)
      this.metrics.identities.inc({ event: 'created' })
      this.log.info({ identity: spec.name, identityId: id, tags: spec.tags }, 'created the pod\'s Ziti identity')
    } catch (e) {
      // Lost a race for the same name: the other create made it.
      if (!(e instanceof ControllerError && e.status === 400 && /name/.test(e.message))) throw e
    }
    const made = await this.byName(spec.name, deadline)
    if (!made) throw new ControllerError('rejected', `identity ${spec.name} was created but cannot be read back`)
    return made
  }

  /** The full detail (the list omits nothing the fake or the real controller returns, but a
   *  fresh read is what an enrollment must hand out). */
  detail(id: string, deadline: number): Promise<IdentityDetail | undefined> {
    return this.client.getIdentity(id, deadline)
  }

  /**
   * A fresh identity in place of `spent` (same name, new id, new one-time token), for a pod that
   * proved itself but holds no enrolled identity: its enroller died after the controller took
   * the CSR and before the file was written. Deleting the identity deletes its authenticator,
   * so the half-enrolled certificate no longer logs in. By id: a concurrent re-issue (another
   * replica, a retry) deletes nothing twice (404) and both answer the one new identity.
   */
  async reissue(spec: IdentitySpec, spent: IdentityDetail, deadline: number): Promise<IdentityDetail> {
    if (await this.client.deleteIdentity(spent.id, deadline)) this.metrics.identities.inc({ event: 'reissued' })
    this.log.info({ identity: spec.name, identityId: spent.id }, 'deleted the pod\'s spent identity to issue a fresh one-time token')
    return this.ensure(spec, deadline)
  }

  /** True when deleted, false when it was not there. */
  async removeByName(name: string, deadline: number, why: string): Promise<boolean> {
    const have = await this.byName(name, deadline)
    if (!have) return false
    return this.remove(have.id, have.name, deadline, why)
  }

  async remove(id: string, name: string, deadline: number, why: string): Promise<boolean> {
    const gone = await this.client.deleteIdentity(id, deadline)
    this.metrics.identities.inc({ event: why })
    this.log.info({ identity: name, identityId: id, why }, 'deleted the Ziti identity of a pod that is gone')
    return gone
  }

  list(prefix: string, deadline: number): Promise<IdentityDetail[]> {
    return this.client.listIdentities(`name contains ${quote(`${prefix}-`)}`, deadline)
  }
}
