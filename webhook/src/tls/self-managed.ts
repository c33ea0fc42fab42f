// Self-managed TLS: the material lives in a Secret shared by all replicas; the CA goes into
// our MutatingWebhookConfiguration's caBundle; renewal swaps the serving context in place.
import { AdmissionregistrationV1Api, CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { decideMaterial, fromSecretData, toSecretData, type TlsMaterial, type TlsPolicy } from './material.ts'
import { makeApiClient } from '../kube-client.ts'

export interface SelfManagedOptions extends TlsPolicy {
  secretName: string
  webhookConfigName: string
}

const code = (e: unknown) => (e as { code?: number }).code

export class SelfManagedTls {
  private readonly core: CoreV1Api
  private readonly admission: AdmissionregistrationV1Api
  private readonly opts: SelfManagedOptions
  private readonly log: Logger

  constructor(kc: KubeConfig, opts: SelfManagedOptions, log: Logger) {
    this.core = makeApiClient(kc, CoreV1Api)
    this.admission = makeApiClient(kc, AdmissionregistrationV1Api)
    this.opts = opts
    this.log = log.child({ component: 'tls' })
  }

  /** Loads, creates or renews the material, then makes sure caBundle trusts it. */
  async ensure(now = new Date()): Promise<TlsMaterial> {
    for (let attempt = 0; attempt < 5; attempt++) {
      let secret
      try {
        secret = await this.core.readNamespacedSecret({ name: this.opts.secretName, namespace: this.opts.namespace })
      } catch (e) {
        if (code(e) !== 404) throw e
      }
      const stored = fromSecretData(secret?.data)
      const decision = decideMaterial(stored, this.opts, now)
      if (!decision) {
        await this.patchCaBundle(stored!.caBundle)
        return stored!
      }
      const body = {
        apiVersion: 'v1', kind: 'Secret', type: 'Opaque',
        metadata: { name: this.opts.secretName, namespace: this.opts.namespace, labels: { 'app.kubernetes.io/name': 'ziti-cni-webhook' }, ...(secret?.metadata?.resourceVersion ? { resourceVersion: secret.metadata.resourceVersion } : {}) },
        data: toSecretData(decision.material),
      }
      try {
        if (secret) await this.core.replaceNamespacedSecret({ name: this.opts.secretName, namespace: this.opts.namespace, body })
        else await this.core.createNamespacedSecret({ namespace: this.opts.namespace, body })
      } catch (e) {
        // Another replica wrote first: read again and use what it stored.
        if (code(e) === 409) { this.log.info('TLS secret changed concurrently; re-reading'); continue }
        throw e
      }
      this.log.info({ reason: decision.reason, secret: this.opts.secretName }, 'stored new TLS material')
      await this.patchCaBundle(decision.material.caBundle)
      return decision.material
    }
    throw new Error(`could not settle TLS secret ${this.opts.namespace}/${this.opts.secretName} after 5 attempts`)
  }

  private async patchCaBundle(caBundle: string): Promise<void> {
    const name = this.opts.webhookConfigName
    const mwc = await this.admission.readMutatingWebhookConfiguration({ name })
    const want = Buffer.from(caBundle).toString('base64')
    const ops = (mwc.webhooks ?? []).flatMap((w, i) => (w.clientConfig.caBundle === want ? [] : [{ op: 'add', path: `/webhooks/${i}/clientConfig/caBundle`, value: want }]))
    if (ops.length === 0) return
    await this.admission.patchMutatingWebhookConfiguration({ name, body: ops }, setHeaderOptions('Content-Type', PatchStrategy.JsonPatch))
    this.log.info({ webhookConfiguration: name, webhooks: ops.length }, 'patched caBundle')
  }
}
