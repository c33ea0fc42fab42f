import t from 'tap'
import { ConfigError, DEFAULT_CONFIG, NFTABLES_REFUSED, validateConfig } from '../src/config.ts'
import { formatCidr } from '@ziti-cni/shared'

const problems = (raw: unknown, env: NodeJS.ProcessEnv = {}) => {
  try { validateConfig(raw, env) } catch (e) { if (e instanceof ConfigError) return e.problems; throw e }
  return []
}

t.test('defaults are valid and exclude the webhook namespace', async (t) => {
  const c = validateConfig({}, {})
  t.equal(c.defaultMode, 'proxy')
  t.same(c.excludedNamespaces, ['kube-system', 'kube-node-lease', 'ziti-cni-system'])
  t.equal(formatCidr(c.proxy.aliasRange), '100.64.0.0/10')
  t.equal(validateConfig({}, { POD_NAMESPACE: 'zt' }).excludedNamespaces.at(-1), 'zt', 'POD_NAMESPACE wins')
  t.equal(validateConfig({}, { WEBHOOK_PORT: '8443' }).listen.port, 8443)
})

t.test('every bad key is reported at once, by name', async (t) => {
  t.same(problems({
    defaultMode: 'tap', sidecarUid: 0, frob: 1, proxy: { image: 'openziti/ziti-tunnel:latest', aliasRange: '100.64.0.1/10' },
    tproxy: { addCapabilities: ['NET_RAW'], datapath: 'nftables', port: 15053, dnsPort: 15053 }, tls: { mode: 'magic', renewBeforeDays: 400 },
  }), [
    'frob: unknown key',
    'tproxy.addCapabilities: unknown key',
    'tproxy.dnsPort: unknown key',
    'defaultMode: must be proxy, tproxy or tun',
    'sidecarUid: must be an integer in 1-2147483647',
    'proxy.image: must be a fully qualified image with a pinned tag or digest (not :latest)',
    'proxy.aliasRange: host bits are set (did you mean 100.64.0.0/10?)',
    `tproxy.datapath: ${NFTABLES_REFUSED}`,
    'tls.mode: must be self-managed or files',
    'tls.renewBeforeDays: must be less than tls.validityDays',
  ])
  t.same(problems({ proxy: { image: 'ziti-tunnel' } }), ['proxy.image: must be a fully qualified image with a pinned tag or digest (not :latest)'])
  t.same(problems({ listen: 'x' }), ['listen: must be a mapping'])
  t.same(problems({ proxy: { aliasRange: 'fd00::/64' } }), ['proxy.aliasRange: must be an IPv4 range (the proxy tunneler listens on 0.0.0.0 only)'])
  t.same(problems({ validator: { uid: 2171 } }), ['validator.uid: must differ from sidecarUid (the sidecar\'s traffic is never captured)'])
  t.same(problems({}, { WEBHOOK_PORT: 'abc' }), ['WEBHOOK_PORT: must be a port 1-65535'])
  t.match(new ConfigError(['a: b']).message, /invalid webhook configuration:\n  - a: b/)
  t.equal(DEFAULT_CONFIG.tproxy.image, '', 'no tproxy tunneler by default: none upstream implements the contract')
  t.equal(DEFAULT_CONFIG.tproxy.datapath, 'ebpf')
})

t.test('with no tproxy tunneler configured, a tproxy pod is refused naming the mode key', async (t) => {
  const { mutatePod } = await import('../src/inject/mutate.ts')
  const pod = { metadata: { name: 'tp', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'id', 'cni.openziti.io/mode': 'tproxy' } }, spec: { containers: [{ name: 'app', image: 'registry.example.com/app:1', securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } }] } }
  t.throws(() => mutatePod(pod, validateConfig({}, {})), { message: /^cni\.openziti\.io\/mode: tproxy needs a tunneler that implements the ziti-cni tproxy contract \(README\), and none is configured \(webhook config tproxy\.image\)/ })
  t.doesNotThrow(() => mutatePod(pod, validateConfig({ tproxy: { image: 'registry.example.com/t:1', clusterDns: ['10.96.0.10'] } }, {})))
})

t.test('tun and controller sections: each bad value named', async (t) => {
  t.same(problems({ tun: { dev: 'eth0', addr: '100.64.0.1', dnsServer: 'fd00::2', resource: 'tun', image: 'x' } }), [
    'tun.image: must be a fully qualified image with a pinned tag or digest (not :latest)',
    'tun.dev: must be an interface name (a-z then a-z0-9, at most 15), not lo or eth*',
    'tun.addr: must be an IPv4 address with a prefix of 8-30 (e.g. 100.64.0.1/10)',
    'tun.dnsServer: must be an IPv4 address',
    'tun.resource: must be an extended resource name (domain/name)',
  ])
  t.same(problems({ tun: { dnsServer: '10.0.0.2' } }), ['tun.dnsServer: 10.0.0.2 is outside 100.64.0.1/10 (the tunneler answers DNS inside its device)'])
  t.same(problems({ controller: { url: 'http://ctrl:1280', identityPrefix: 'K8S!', admissionBudgetMs: 100, enrollUrl: 'http://x', tokenSeconds: 60 } }), [
    'controller.admissionBudgetMs: unknown key',
    'controller.url: must be an https:// URL with no path (the Edge API base), or empty',
    'controller.identityPrefix: must be 1-16 of a-z, 0-9, -',
    'controller.enrollUrl: must be an https:// URL with no path',
    'controller.tokenSeconds: must be an integer in 600-86400',
  ])
  const CA = '-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n'
  t.same(problems({ controller: { url: 'https://ctrl:1280' } }), [
    'controller.enrollCa: is required when controller.url is set (the pods\' init step verifies the enrollment endpoint with it)',
    'controller.enrollImage: is required when controller.url is set (the image of the pods\' enrollment init step)',
  ], 'identity: auto is injected as a reference: it must be complete')
  t.same(problems({ controller: { attributePolicy: [{ namespace: 'apps' }, { namespace: 'Bad!', attributes: ['x'] }, { namespace: '*', prefixes: ['k8s'] }, { namespace: 'a', attributes: 'x', team: 1 }] } }), [
    'controller.attributePolicy[0]: names neither attributes nor prefixes (a rule that allows nothing)',
    'controller.attributePolicy[1].namespace: must be a namespace name or "*"',
    'controller.attributePolicy[2].prefixes: "k8s" would let pods request the platform\'s own "k8s." attributes',
    'controller.attributePolicy[3].team: unknown key',
    'controller.attributePolicy[3].attributes: must be a list of non-empty strings',
  ])
  const ok = validateConfig({ controller: { url: 'https://ctrl:1280', enrollCa: CA, enrollImage: 'ghcr.io/ziti-cni/webhook:0.1.0' } }, {})
  t.equal(ok.controller.cluster, '', 'no shared default cluster tag: the identity controller derives one from the kube-system uid')
  t.same(problems({}, { ZITI_CONTROLLER_URL: 'ctrl' }), ['ZITI_CONTROLLER_URL: must be an https:// URL with no path (the Edge API base), or empty'])
  t.equal(validateConfig({ controller: { enrollCa: CA, enrollImage: 'ghcr.io/ziti-cni/webhook:0.1.0' } }, { ZITI_CONTROLLER_URL: 'https://ctrl.ziti:1280' }).controller.url, 'https://ctrl.ziti:1280')
})
