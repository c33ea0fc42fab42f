// The node-level end-to-end suite on a real container runtime: pod manifest -> real webhook
// over HTTPS -> API stand-in -> kubelet-like harness over CRI -> containerd + runc, whose own
// libcni runs loopback, bridge + host-local and ziti-cni -> real agent -> nft/ip in the pod's
// netns -> the pod's containers (stand-in tunnelers, validator, app), unprivileged, in runc.
import t from 'tap'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { V1Pod } from '@kubernetes/client-node'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { AGENT_BUNDLE, TestNode, sweepLeftovers } from './lib/node.ts'
import { PodStartError, type RunningPod } from './lib/kubelet.ts'
import { CniCallError, cachedResult, callPlugin, loadConfList } from './lib/cni-exec.ts'
import { APP_UID, app, appPod, inBatches, infraPod, injected } from './lib/pods.ts'
import { IMAGES } from './lib/test-images.ts'
import { startWebhook } from './lib/webhook.ts'
import { restrictedViolations } from '../../webhook/test/pss-restricted.ts'
import { spawnSync } from 'node:child_process'

/** An identity Secret for a pod; `dialable` is what the stand-in's "controller" grants. */
function identityJson(dialable?: string[]): string {
  return JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' }, ...(dialable ? { standinDialable: dialable } : {}) })
}

t.test('node-level end-to-end on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const webhook = await startWebhook({ validator: { image: IMAGES.validator }, tproxy: { image: IMAGES.tproxy, args: [], datapath: 'ebpf' } })
  const node = new TestNode({ id: 2, admission: webhook.admission })
  t.teardown(async () => {
    await node.teardown()
    await webhook.close()
  })
  await node.start()
  const runtime = await node.containerd.cri.version()
  t.comment(`runtime: ${runtime.runtime_name} ${runtime.runtime_version} (CRI ${runtime.runtime_api_version})`)

  // Another pod on the same bridge: a plain server and the cluster DNS (not Ziti).
  const infra = await node.runPod(await node.createPod(infraPod()))
  node.clusterDns.push(infra.ip)

  const secret = (name: string, dialable?: string[]) => node.createSecret('apps', name, { 'identity.json': identityJson(dialable) })
  await secret('billing-identity')
  const billingPod = await node.createPod(appPod('billing', 'apps', {
    'cni.openziti.io/identity-secret': 'billing-identity',
    'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api, logs.ziti:514/udp=logs',
  }))
  const billing = await node.runPod(billingPod)

  await t.test('1. proxy profile: the app reaches each service by its natural name and port, TCP and UDP, and gets the reply', async (t) => {
    t.equal(parseIntent(billingPod.metadata.annotations['cni.openziti.io/interception']).mode, 'proxy', 'the webhook wrote the intent')
    t.match(billing.netns, /^\/var\/run\/netns\/cni-[0-9a-f-]+$/, 'containerd made the pod netns')
    const pg = await app(node, billing, ['tcp', 'pg.ziti', '5432'])
    t.equal(pg.resolved, '100.64.0.2', 'pg.ziti resolves through the kubelet-written hostAliases')
    t.match(pg.reply, /^ziti-service=postgres listener=15100 /, 'landed on the postgres listener')
    const api = await app(node, billing, ['tcp', 'api.ziti', '443'])
    t.equal(api.resolved, '100.64.0.3')
    t.match(api.reply, /^ziti-service=billing-api listener=15101 /, 'landed on the billing-api listener')
    const logs = await app(node, billing, ['udp', 'logs.ziti', '514'])
    t.match(logs.reply, /^ziti-service=logs listener=15102 via=udp got=ping/, `a connected UDP client gets the reply (${logs.error ?? 'ok'})`)
  })
})
