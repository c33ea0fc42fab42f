// The validator init container runs the agent image: read it from the agent DaemonSet (in the
// webhook's namespace) at start-up, and follow it, so an upgrade of the agent moves both.
import { AppsV1Api, type KubeConfig } from '@kubernetes/client-node'
import type { Logger } from 'pino'
import { makeApiClient } from './kube-client.ts'

export class ValidatorImage {
  private readonly apps: AppsV1Api
  private readonly namespace: string
  private readonly name: string
  private readonly log: Logger
  current = ''

  constructor(kc: KubeConfig, namespace: string, name: string, log: Logger) {
    this.apps = makeApiClient(kc, AppsV1Api)
    this.namespace = namespace
    this.name = name
    this.log = log.child({ component: 'validator-image', daemonSet: `${namespace}/${name}` })
  }

  /** The agent container's image, as the DaemonSet's pod template names it. */
  async read(): Promise<string> {
    const ds = await this.apps.readNamespacedDaemonSet({ name: this.name, namespace: this.namespace })
    const containers = ds.spec?.template.spec?.containers ?? []
    const image = (containers.find((c) => c.name === 'agent') ?? containers[0])?.image
    if (!image) throw new Error(`DaemonSet ${this.namespace}/${this.name} names no container image`)
    return image
  }

  /** Retries until the DaemonSet is readable: the webhook does not listen before it knows. */
  async resolve(retryMs = 2_000): Promise<string> {
    for (;;) {
      try {
        this.current = await this.read()
        this.log.info({ image: this.current }, 'validator image from the agent DaemonSet')
        return this.current
      } catch (e) {
        this.log.warn({ err: String(e) }, 'cannot read the agent DaemonSet for the validator image yet; retrying')
        await new Promise((r) => setTimeout(r, retryMs))
      }
    }
  }

  /** Re-reads every `everyMs`; calls `onChange` with a new image. Returns the stop function. */
  follow(onChange: (image: string) => void, everyMs = Number(process.env.VALIDATOR_IMAGE_CHECK_SECONDS ?? '60') * 1000): () => void {
    const timer = setInterval(() => {
      this.read().then((image) => {
        if (image === this.current) return
        this.log.info({ from: this.current, to: image }, 'the agent DaemonSet changed image; injecting the new validator image')
        this.current = image
        onChange(image)
      }, (e: unknown) => this.log.warn({ err: String(e) }, 'cannot re-read the agent DaemonSet; keeping the validator image'))
    }, everyMs)
    timer.unref()
    return () => clearInterval(timer)
  }
}
