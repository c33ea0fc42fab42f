// The tun tier's world on containerd + runc, shared by the suites that run upstream's
// ziti-edge-tunnel in a pod: a node with the agent's device plugin, the cluster's other pod
// (a TCP server and the cluster DNS), the real webhook (tun mode configured), the fake
// controller and one edge-router stand-in on the pod network's gateway, the services the
// pods' identity may dial, and that identity in a Secret.
import type { Test } from 'tap'
import { TestNode, sweepLeftovers } from './node.ts'
import { infraPod } from './pods.ts'
import type { RunningPod } from './kubelet.ts'
import { IMAGES } from './test-images.ts'
import { startWebhook } from './webhook.ts'
import { FakeZitiController } from '../standins/ziti-controller.ts'
import { FakeEdgeRouter } from '../standins/ziti-router.ts'

export const TUN_RESOURCE = 'tun.openziti.io/tun'

export interface TunWorld {
  node: TestNode
  infra: RunningPod
  webhook: Awaited<ReturnType<typeof startWebhook>>
  ctrl: FakeZitiController
  router: FakeEdgeRouter
}

/** The fake controller and one edge router listening on `host`; their close goes on `closers`. */
export async function startZitiFabric(host: string, closers: Array<() => Promise<unknown>>): Promise<{ ctrl: FakeZitiController; router: FakeEdgeRouter }> {
  const ctrl = new FakeZitiController({ host })
  await ctrl.listen()
  closers.push(() => ctrl.close())
  const router = new FakeEdgeRouter(ctrl.ca, { apiSessionIdentity: (tok) => ctrl.apiSessionIdentity(tok), dialService: (d, i) => ctrl.clientApi.dialService(d, i) }, host)
  ctrl.clientApi.addRouter('er-node', await router.listen())
  closers.push(() => router.close())
  return { ctrl, router }
}

/**
 * Starts the world (torn down with `t`; `tproxy`: tproxy mode configured too) and stores `identity` (a cert identity with role
 * attribute `attribute`, dialing postgres, logs and billing-api) as Secret apps/`secret`.
 * Services: postgres (tcp pg.ziti:5432), logs (udp logs.ziti:514), billing-api
 * (tcp 10.99.0.7:443, outside the DNS range) and vault (vault.ziti:8200, no Dial policy).
 */
export async function startTunWorld(t: Test, opts: { id: number; identity: string; attribute: string; secret: string; tproxy?: boolean }): Promise<TunWorld> {
  sweepLeftovers()
  const node = new TestNode({ id: opts.id, tunDevicePlugin: true })
  let webhook: TunWorld['webhook'] | undefined
  const closers: Array<() => Promise<unknown>> = []
  t.teardown(async () => { await node.teardown(); await webhook?.close(); for (const c of closers) await c().catch(() => {}) })
  await node.start()
  await node.deviceManager!.ready(TUN_RESOURCE)
  t.pass('the agent\'s device plugin registered with the kubelet and lists healthy devices')

  const infra = await node.runPod(await node.createPod(infraPod()))
  node.clusterDns.push(infra.ip)
  // tproxy: the contract's stand-in on the eBPF datapath, for suites that need that mode too.
  webhook = await startWebhook({ validator: { image: IMAGES.validator }, tun: { image: IMAGES.tun }, tproxy: { clusterDns: [infra.ip], ...(opts.tproxy ? { image: IMAGES.tproxy, args: [], datapath: 'ebpf' } : {}) } })
  node.api.admission = webhook.admission

  // The controller and one edge router on the pod network's gateway, where sidecars reach them;
  // what the pod's identity may dial comes from the controller (services, configs, a policy).
  const { ctrl, router } = await startZitiFabric(node.gateway, closers)
  const svc = (name: string, attrs: string[], intercept: object) => {
    const s = ctrl.addService(name, attrs, [ctrl.addConfig(`${name}-intercept`, 'intercept.v1', intercept as Record<string, unknown>)])
    s.encryptionRequired = false // the router stand-in has no end-to-end encryption
    return s
  }
  svc('postgres', ['db'], { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })
  svc('logs', ['db'], { protocols: ['udp'], addresses: ['logs.ziti'], portRanges: [{ low: 514, high: 514 }] })
  svc('billing-api', ['db'], { protocols: ['tcp'], addresses: ['10.99.0.7'], portRanges: [{ low: 443, high: 443 }] })
  svc('vault', ['secrets'], { protocols: ['tcp'], addresses: ['vault.ziti'], portRanges: [{ low: 8200, high: 8200 }] })
  const me = ctrl.addCertIdentity(opts.identity, [])
  me.identity.roleAttributes.push(opts.attribute)
  ctrl.addPolicy(`${opts.attribute}-dials-db`, 'Dial', [`#${opts.attribute}`], ['#db'])
  await node.createSecret('apps', opts.secret, { 'identity.json': JSON.stringify({
    ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${me.cert}`, key: `pem:${me.key}`, ca: `pem:${ctrl.ca.certPem}` },
  }) })
  return { node, infra, webhook, ctrl, router }
}
