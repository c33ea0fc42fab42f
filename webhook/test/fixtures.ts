// AdmissionReview fixtures: the pods a cluster sends, and what the webhook must answer.
import type { V1Pod } from '@kubernetes/client-node'

const restrictedApp = {
  securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
}
const restrictedPod = { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } }

function pod(name: string | undefined, annotations: Record<string, string>, spec: Partial<V1Pod['spec']> = {}, extra: Partial<V1Pod['metadata']> = {}): V1Pod {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { ...(name ? { name } : {}), namespace: 'apps', annotations, ...extra },
    spec: { securityContext: restrictedPod, containers: [{ name: 'app', image: 'registry.example.com/app:1.0', ...restrictedApp }], ...spec } as V1Pod['spec'],
  }
}

const ID = { 'cni.openziti.io/identity-secret': 'app-identity' }
const SERVICES = { ...ID, 'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api' }

export interface Fixture {
  name: string
  pod: V1Pod
  namespace?: string
  /** 'inject' (golden patch), 'skip' (allowed, no patch) or a rejection message. */
  expect: 'inject' | 'skip' | { reject: string }
  warning?: RegExp
}

export const FIXTURES: Fixture[] = [
  { name: 'bare-proxy', pod: pod('web', SERVICES), expect: 'inject' },
  {
    name: 'deployment-style-no-name',
    pod: pod(undefined, SERVICES, {}, { generateName: 'web-7d9f8c-', labels: { app: 'web', 'pod-template-hash': '7d9f8c' }, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-7d9f8c', uid: 'u1', controller: true }] }),
    expect: 'inject',
  },
  {
    name: 'with-init-containers',
    pod: pod('migrate', SERVICES, { initContainers: [{ name: 'migrate', image: 'registry.example.com/migrate:2', ...restrictedApp }] }),
    expect: 'inject',
  },
  {
    name: 'existing-host-aliases',
    pod: pod('aliases', { ...ID, 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }, { hostAliases: [{ ip: '100.64.0.2', hostnames: ['legacy.internal'] }] }),
    expect: 'inject',
  },
  {
    name: 'existing-volumes-and-env',
    pod: pod('vols', { ...SERVICES, 'example.com/owner~team': 'a/b' }, {
      containers: [{ name: 'app', image: 'registry.example.com/app:1.0', env: [{ name: 'A', value: '1' }], volumeMounts: [{ name: 'data', mountPath: '/data' }], ...restrictedApp }],
      volumes: [{ name: 'data', emptyDir: {} }],
    }),
    expect: 'inject',
  },
  { name: 'udp-and-enrollment-jwt', pod: pod('jwt', { 'cni.openziti.io/enrollment-secret': 'enroll/token', 'cni.openziti.io/services': 'syslog.ziti:514/udp=logs, pg.ziti:5432=postgres, pg2.ziti:5432=postgres' }), expect: 'inject' },
  {
    name: 'tproxy-profile',
    pod: pod('tp', { ...ID, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, 100.64.1.0/24, fd00:ffff::/64' }),
    expect: 'inject',
  },
  { name: 'tproxy-ebpf-no-capability', pod: pod('tpe', { ...ID, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'ebpf' }), expect: 'inject' },
  { name: 'user-supplied-intent-replaced', pod: pod('sneaky', { ...SERVICES, 'cni.openziti.io/interception': '{"v":1,"mode":"proxy","uid":1000}' }), expect: 'inject', warning: /replaced the user-supplied/ },
  // The platform's egress floor for namespace payments (TEST_CONFIG egress.namespaces), taken
  // from the request's namespace: a pod a controller creates carries none itself.
  { name: 'namespace-egress-ziti-only', pod: pod('pay', SERVICES, {}, { namespace: undefined }), namespace: 'payments', expect: 'inject' },
  // Skips
  { name: 'pod-opt-out', pod: pod('optout', SERVICES, {}, { labels: { 'cni.openziti.io/inject': 'disabled' } }), expect: 'skip' },
  { name: 'host-network', pod: pod('hostnet', SERVICES, { hostNetwork: true }), expect: 'skip', warning: /hostNetwork.*impossible/ },
  { name: 'mirror-pod', pod: pod('static', { ...SERVICES, 'kubernetes.io/config.mirror': 'abc' }), expect: 'skip' },
  { name: 'kube-system', pod: pod('dns', SERVICES), namespace: 'kube-system', expect: 'skip' },
  { name: 'own-namespace', pod: pod('self', SERVICES), namespace: 'ziti-cni-system', expect: 'skip' },
  // Rejections
  { name: 'no-identity', pod: pod('noid', { 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }), expect: { reject: 'ziti-cni: cni.openziti.io/identity-secret: is required: name the Secret holding the pod\'s Ziti identity as <secret>[/<key>] (or use cni.openziti.io/enrollment-secret for an enrollment JWT, or cni.openziti.io/identity: auto)' } },
  { name: 'both-identities', pod: pod('both', { ...SERVICES, 'cni.openziti.io/enrollment-secret': 'x' }), expect: { reject: 'ziti-cni: cni.openziti.io/identity-secret: set either cni.openziti.io/identity-secret (enrolled identity JSON) or cni.openziti.io/enrollment-secret (enrollment JWT), not both' } },
  { name: 'bad-port', pod: pod('badport', { ...ID, 'cni.openziti.io/services': 'pg.ziti:5432=postgres, pg.ziti:99999=pg' }), expect: { reject: 'ziti-cni: cni.openziti.io/services: entry 2 "pg.ziti:99999=pg": port 99999 is out of range 1-65535' } },
  { name: 'no-services', pod: pod('nosvc', ID), expect: { reject: 'ziti-cni: cni.openziti.io/services: is required in proxy mode (e.g. "pg.ziti:5432=postgres"), also with cni.openziti.io/identity: auto; mode tun needs no list' } },
  { name: 'bad-mode', pod: pod('badmode', { ...SERVICES, 'cni.openziti.io/mode': 'tap' }), expect: { reject: 'ziti-cni: cni.openziti.io/mode: unknown mode "tap" (expected proxy, tproxy or tun)' } },
  { name: 'wrong-mode-annotation', pod: pod('wrongmode', { ...SERVICES, 'cni.openziti.io/intercept-cidrs': '10.0.0.0/8' }), expect: { reject: 'ziti-cni: cni.openziti.io/intercept-cidrs: only applies to tproxy and tun mode, but the pod\'s mode is proxy' } },
  { name: 'namespace-egress-open-refused', pod: pod('payopen', { ...SERVICES, 'cni.openziti.io/egress': 'open' }, {}, { namespace: undefined }), namespace: 'payments', expect: { reject: 'ziti-cni: cni.openziti.io/egress: the platform locks the egress of namespace payments (webhook config egress.namespaces.payments: ziti-only); a pod may tighten its egress, never open it' } },
  { name: 'namespace-egress-pod-exception-refused', pod: pod('payallow', { ...SERVICES, 'cni.openziti.io/egress-allow': '0.0.0.0/0' }, {}, { namespace: undefined }), namespace: 'payments', expect: { reject: 'ziti-cni: cni.openziti.io/egress-allow: the platform locks the egress of namespace payments (webhook config egress.namespaces.payments: ziti-only); a pod cannot add exceptions to it (the platform adds them: egress.namespaces.payments.allowCidrs/allowPorts)' } },
  { name: 'tun-profile', pod: pod('tun', { ...ID, 'cni.openziti.io/mode': 'tun' }), expect: 'inject' },
  { name: 'tun-extra-routes', pod: pod('tunr', { ...ID, 'cni.openziti.io/mode': 'tun', 'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, 10.99.0.0/16' }), expect: 'inject' },
  { name: 'tun-exclusions-refused', pod: pod('tunx', { ...ID, 'cni.openziti.io/mode': 'tun', 'cni.openziti.io/exclude-ports': '22' }), expect: { reject: 'ziti-cni: cni.openziti.io/exclude-ports: only applies to tproxy mode, but the pod\'s mode is tun' } },
  { name: 'tun-partial-overlap', pod: pod('tuno', { ...ID, 'cni.openziti.io/mode': 'tun', 'cni.openziti.io/intercept-cidrs': '100.0.0.0/8' }), expect: { reject: 'ziti-cni: cni.openziti.io/intercept-cidrs: 100.0.0.0/8 partly overlaps the tun\'s network 100.64.0.0/10' } },
  { name: 'bad-cidr', pod: pod('badcidr', { ...ID, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': '10.0.0.1/8' }), expect: { reject: 'ziti-cni: cni.openziti.io/intercept-cidrs: entry 1 "10.0.0.1/8": host bits are set (did you mean 10.0.0.0/8?)' } },
  { name: 'bad-secret-name', pod: pod('badsecret', { ...SERVICES, 'cni.openziti.io/identity-secret': 'Bad_Secret' }), expect: { reject: 'ziti-cni: cni.openziti.io/identity-secret: secret name "Bad_Secret" is not a valid Kubernetes name' } },
  { name: 'app-runs-as-sidecar-uid', pod: pod('uid', SERVICES, { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', securityContext: { runAsUser: 2171 } }] }), expect: { reject: 'ziti-cni: spec.containers[0].securityContext.runAsUser: container "app" runs as 2171, the Ziti sidecar\'s uid; its traffic would escape capture' } },
  { name: 'pod-runs-as-sidecar-uid', pod: pod('poduid', SERVICES, { securityContext: { runAsUser: 2171 } }), expect: { reject: 'ziti-cni: spec.securityContext.runAsUser: 2171 is the Ziti sidecar\'s uid; traffic from it is never intercepted, so the app would escape capture' } },
  { name: 'port-collision', pod: pod('ports', SERVICES, { containers: [{ name: 'app', image: 'registry.example.com/app:1.0', ports: [{ containerPort: 15101 }], ...restrictedApp }] }), expect: { reject: 'ziti-cni: spec.containers[app].ports: port 15101 is used by the Ziti sidecar (its listeners: 15100, 15101)' } },
  { name: 'hostname-collision', pod: pod('hosts', SERVICES, { hostAliases: [{ ip: '10.0.0.9', hostnames: ['pg.ziti'] }] }), expect: { reject: 'ziti-cni: cni.openziti.io/services: entry 1 "pg.ziti:5432=postgres": hostname pg.ziti is already in spec.hostAliases (as 10.0.0.9)' } },
  { name: 'dns-server-outside-cidrs', pod: pod('dnsout', { ...ID, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/intercept-cidrs': '10.200.0.0/16' }), expect: { reject: 'ziti-cni: cni.openziti.io/intercept-cidrs: does not contain the tunneler\'s DNS address 100.64.0.2; add it, or set cni.openziti.io/dns-capture: "false"' } },
  { name: 'dns-capture-with-own-dns-config', pod: pod('owndns', { ...ID, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/dns-capture': 'true' }, { dnsPolicy: 'None', dnsConfig: { nameservers: ['10.0.0.53'] } }), expect: { reject: 'ziti-cni: cni.openziti.io/dns-capture: the pod sets its own dnsPolicy/dnsConfig; drop them, or set it to "false"' } },
  { name: 'tproxy-own-dns-config-warns', pod: pod('owndns2', { ...ID, 'cni.openziti.io/mode': 'tproxy' }, { dnsPolicy: 'None', dnsConfig: { nameservers: ['10.0.0.53'] } }), expect: 'inject', warning: /sets its own DNS/ },
  { name: 'tproxy-with-exclusions', pod: pod('tpx', { ...ID, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/exclude-cidrs': '100.64.0.1', 'cni.openziti.io/exclude-ports': '22, 8000-8100, 8050-8200' }), expect: 'inject' },
  { name: 'tproxy-nftables-datapath', pod: pod('tpn', { ...ID, 'cni.openziti.io/mode': 'tproxy', 'cni.openziti.io/datapath': 'nftables' }), expect: { reject: 'ziti-cni: cni.openziti.io/datapath: nftables: TPROXY only delivers to IP_TRANSPARENT sockets, which need CAP_NET_RAW in the effective set; Kubernetes gives a non-root container added capabilities only in its bounding set (no ambient set), so no injected sidecar can hold it. Use ebpf' } },
  { name: 'service-on-two-protocols', pod: pod('dns2', { ...ID, 'cni.openziti.io/services': 'dns.ziti:53=dns, dns.ziti:53/udp=dns' }), expect: { reject: 'ziti-cni: cni.openziti.io/services: entry 2 "dns.ziti:53/udp=dns": Ziti service "dns" is listed for both tcp and udp; ziti tunnel proxy keeps one listener per service name, so one protocol would be refused. Use a separate Ziti service per protocol' } },
  {
    name: 'enrollment-token-on-replicated-pod',
    pod: pod(undefined, { 'cni.openziti.io/enrollment-secret': 'enroll', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' }, {}, { generateName: 'web-7d9f8c-', ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-7d9f8c', uid: 'u1', controller: true }] }),
    expect: { reject: 'ziti-cni: cni.openziti.io/enrollment-secret: an enrollment token is single-use, but this pod is managed by ReplicaSet web-7d9f8c, which will create more pods from the same template (replicas, rollouts, evictions); every pod after the first would fail to enroll and crash-loop. Enroll once (ziti edge enroll) and use cni.openziti.io/identity-secret with the identity JSON instead' },
  },
  { name: 'datapath-in-proxy-mode', pod: pod('dpp', { ...SERVICES, 'cni.openziti.io/datapath': 'ebpf' }), expect: { reject: 'ziti-cni: cni.openziti.io/datapath: only applies to tproxy mode, but the pod\'s mode is proxy' } },
  { name: 'reserved-container-name', pod: pod('reserved', SERVICES, { containers: [{ name: 'app', image: 'x/y:1', ...restrictedApp }, { name: 'ziti-tunnel', image: 'x/y:1' }] }), expect: { reject: 'ziti-cni: spec.containers[1].name: "ziti-tunnel" is reserved for the injected Ziti sidecar' } },
]
