// The agent's own Kubernetes client (src/agent/kube.ts): what it reads of a kubeconfig (as
// client-node does), what it refuses by name, and the calls against the API stand-in over TLS:
// a bearer token from a file, a 404 as an ApiError, a JSON patch.
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { createCa, createServingCert } from '../../webhook/src/tls/certs.ts'
import { KubeApiStandIn } from '../../e2e/node/lib/kube-api.ts'
import { createKubeClient, inClusterConnection, kubeconfigConnection, loadConnection } from '../src/agent/kube.ts'
import { ApiError } from '../src/agent/reflector.ts'

const doc = (user: object, cluster: object = { server: 'https://10.0.0.1:6443/' }) => ({
  'current-context': 'x',
  contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
  clusters: [{ name: 'c', cluster }],
  users: [{ name: 'u', user }],
})

t.test('kubeconfig: the current context, data inline or files relative to the kubeconfig', async (t) => {
  t.same(kubeconfigConnection(doc({ token: 'tok' }, { server: 'https://10.0.0.1:6443/', 'certificate-authority-data': Buffer.from('CA').toString('base64') }), '/etc/k'),
    { server: 'https://10.0.0.1:6443', ca: { data: 'CA' }, token: 'tok' })
  t.same(kubeconfigConnection(doc({ tokenFile: 'tok', 'client-certificate': '/abs/c.pem', 'client-key': 'k.pem' }, { server: 'https://a', 'certificate-authority': 'ca.pem', 'insecure-skip-tls-verify': true, 'tls-server-name': 'api' }), '/etc/k'),
    { server: 'https://a', ca: { file: '/etc/k/ca.pem' }, insecureSkipTlsVerify: true, tlsServerName: 'api', tokenFile: '/etc/k/tok', cert: { file: '/abs/c.pem' }, key: { file: '/etc/k/k.pem' } })
})

t.test('kubeconfig: what cannot be used is refused by name', async (t) => {
  t.throws(() => kubeconfigConnection({ contexts: [] }, '/'), { message: 'kubeconfig: current-context is not set' })
  t.throws(() => kubeconfigConnection({ ...doc({}), 'current-context': 'y' }, '/'), { message: 'kubeconfig: contexts has no entry named "y"' })
  t.throws(() => kubeconfigConnection(doc({}, { 'certificate-authority-data': 'x' }), '/'), { message: 'kubeconfig: cluster "c" has no server' })
  t.throws(() => kubeconfigConnection(doc({ exec: { command: 'aws' } }), '/'), { message: /users\["u"\]\.user\.exec is not supported by the agent/ })
  t.throws(() => kubeconfigConnection(doc({ 'client-certificate-data': 'eA==' }), '/'), { message: /needs both client-certificate and client-key/ })
  t.throws(() => createKubeClient({ server: 'http://10.0.0.1:8080' }), { message: /must be https, not http:/ })
})

t.test('in cluster: the service account, as client-node loadFromCluster', async (t) => {
  t.same(inClusterConnection({ KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' }, '/sa'), { server: 'https://[fd00::1]:443', ca: { file: '/sa/ca.crt' }, tokenFile: '/sa/token' })
  t.throws(() => inClusterConnection({}), { message: /KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set/ })
})

t.test('against the API: token from a file, 404 as ApiError, JSON patch', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-kube-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const ca = createCa({ commonName: 'api-ca', validDays: 1 })
  const serving = createServingCert(ca, { commonName: 'api', ipAddresses: ['127.0.0.1'], validDays: 1 })
  const api = new KubeApiStandIn({ cert: serving.certPem, key: serving.keyPem, tokens: ['good'] })
  const server = await api.listen()
  t.teardown(() => api.close())
  writeFileSync(join(dir, 'ca.pem'), ca.certPem)
  writeFileSync(join(dir, 'token'), 'good\n')
  writeFileSync(join(dir, 'kubeconfig'), stringify(doc({ tokenFile: 'token' }, { server, 'certificate-authority': 'ca.pem' })))
  const kube = createKubeClient(loadConnection(join(dir, 'kubeconfig'), {}))
  api.put('nodes', { metadata: { name: 'n1' }, spec: { taints: [{ key: 'a', effect: 'NoSchedule' }] } } as never)
  t.equal((await kube.json<{ metadata: { name: string } }>('GET', '/api/v1/nodes/n1')).metadata.name, 'n1', 'authenticated with the file token, CA from a relative path')
  const missing = await kube.json('GET', '/api/v1/namespaces/default/pods/nope').catch((e: unknown) => e)
  t.ok(missing instanceof ApiError && missing.status === 404 && missing.reason === 'NotFound', `404 NotFound: ${String(missing)}`)
  await kube.json('PATCH', '/api/v1/nodes/n1', { body: [{ op: 'remove', path: '/spec/taints' }], contentType: 'application/json-patch+json' })
  t.equal((api.get('nodes', undefined, 'n1') as unknown as { spec: { taints?: unknown } }).spec.taints, undefined, 'the patch was applied')
  api.overload(300, 1)
  const began = Date.now()
  t.equal((await kube.json<{ metadata: { name: string } }>('GET', '/api/v1/nodes/n1')).metadata.name, 'n1', 'a 429 is sent again after its Retry-After')
  t.ok(Date.now() - began >= 1000, 'not before the Retry-After (1 s)')
  const bad = createKubeClient({ server, ca: { data: ca.certPem }, token: 'wrong' })
  const refused = await bad.json('GET', '/api/v1/nodes/n1').catch((e: unknown) => e)
  t.ok(refused instanceof ApiError && refused.status === 401, `a wrong token is 401: ${String(refused)}`)
  const untrusted = await createKubeClient({ server, token: 'good' }).json('GET', '/api/v1/nodes/n1').catch((e: unknown) => e)
  t.match(String(untrusted), /self-signed|unable to verify|certificate/, 'no CA: the server certificate is not trusted')
})
