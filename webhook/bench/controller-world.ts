// The "cluster" for bench:auto, in its own process: the fake OpenZiti controller with 20
// services the pods may dial, and the API server stand-in (the per-pod Secrets). Prints what
// the webhook needs as one JSON line, then serves until killed.
import { createCa, createServingCert } from '../src/tls/certs.ts'
import { FakeZitiController } from '../../e2e/node/standins/ziti-controller.ts'
import { KubeApiStandIn } from '../../e2e/node/lib/kube-api.ts'

const ctrl = new FakeZitiController()
await ctrl.listen()
for (let i = 0; i < 20; i++) {
  const intercept = ctrl.addConfig(`svc-${i}-intercept`, 'intercept.v1', { protocols: ['tcp'], addresses: [`svc-${i}.ziti`], portRanges: [{ low: 443, high: 443 }] })
  ctrl.addService(`svc-${i}`, ['bench'], [intercept, ...(i % 2 ? [ctrl.addConfig(`svc-${i}-proxy`, 'proxy.v1', { port: 16000 + i, protocols: ['tcp'] })] : [])])
}
ctrl.addPolicy('bench', 'Dial', ['#bench'], ['#bench'])
const admin = ctrl.addCertIdentity('ziti-cni-webhook', ['identity', 'service.read', 'config.read'])
const ca = createCa({ commonName: 'api-ca', validDays: 1 })
const serving = createServingCert(ca, { commonName: 'api', ipAddresses: ['127.0.0.1'], validDays: 1 })
const api = new KubeApiStandIn({ cert: serving.certPem, key: serving.keyPem, tokens: ['bench'] })
const apiUrl = await api.listen()
process.stdout.write(`${JSON.stringify({
  controllerUrl: ctrl.url,
  credential: JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: admin.cert, key: admin.key, ca: ctrl.ca.certPem } }),
  apiUrl, apiCa: ca.certPem,
})}\n`)
