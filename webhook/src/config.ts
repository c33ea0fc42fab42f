// The webhook's configuration: a file (the mounted ConfigMap, YAML or JSON) plus env
// overrides, validated at start-up with one clear message per bad key. Pure: the caller
// reads the file; `validateConfig` only looks at values.
import { attributePolicyProblems, type AttributeRule } from './ziti/policy.ts'
import { parseServiceRef } from './cluster-dns.ts'
import type { UnservedPolicy } from './inject/platform.ts'
import { rangeClashes, type NamedRange } from '../../shared/src/ranges.ts'
import { EXTENDED_RESOURCE_NAME, TUN_RESOURCE, ZITI_DNS_RANGE, cidrContains, isDnsName, parseAddress, parseCidr, parseInterfaceAddress, parsePort, formatCidr, tunDeviceProblem, type Cidr, type EgressMode, type Mode } from '@ziti-cni/shared'

export interface Resources {
  requests?: Record<string, string>
  limits?: Record<string, string>
}

/**
 * DNS in tun and tproxy pods. `forward` (the default): the tunneler is the pod's only
 * nameserver and forwards names it does not serve to the cluster DNS. `parallel`: the tunneler,
 * then the cluster DNS; musl asks both at once and takes the first answer, so the cluster DNS's
 * NXDOMAIN for a Ziti name can win and the lookup fails (README "Compatibility").
 */
export type DnsPath = 'forward' | 'parallel'
export const DNS_PATHS: DnsPath[] = ['forward', 'parallel']

export interface WebhookConfig {
  defaultMode: Mode
  /** First initContainers entry with restartPolicy: Always (K8s 1.29+); else a regular container. */
  nativeSidecar: boolean
  sidecarUid: number
  sidecarGid: number
  /** Key used when `identity-secret: <name>` names no key. */
  identitySecretKey: string
  enrollmentSecretKey: string
  identityDir: string
  resources: Resources
  proxy: { image: string; portBase: number; aliasRange: Cidr; servicePollSeconds: number }
  tproxy: {
    /**
     * A tunneler implementing the tproxy contract (README). Empty: no upstream image does, so
     * tproxy pods are refused at admission until one is configured.
     */
    image: string
    args: string[]
    port: number
    defaultCidrs: Cidr[]
    /**
     * DNS for tproxy pods: the pod's resolver is the tunneler's DNS address inside the intercept
     * range (as ziti-edge-tunnel's 100.64.0.2), then the cluster DNS; no capture rule needed.
     */
    dnsCapture: boolean
    dnsServer: string
    /** How the pod reaches the cluster DNS: see `DnsPath` (`ZITI_CNI_DNS_UPSTREAM`, tproxy contract item 5). */
    dns: DnsPath
    /**
     * The cluster DNS addresses pods fall back to after the tunneler (tun mode too). Set: an
     * override. Empty (the default): the ClusterIP(s) of `clusterDnsService`, read and followed
     * at run time (webhook/src/cluster-dns.ts); while unknown, pods that need it are refused.
     */
    clusterDns: string[]
    /** namespace/name of the cluster DNS Service (EKS, kubeadm, GKE: kube-system/kube-dns). */
    clusterDnsService: string
    clusterDomain: string
    protocols: Array<'tcp' | 'udp'>
    /** Default for cni.openziti.io/datapath; ebpf is the only one a real pod can use. */
    datapath: 'ebpf'
  }
  /**
   * tun mode: a tunneler (ziti-edge-tunnel with the attach shim, README "tun mode") on a device
   * the CNI creates, owned by sidecarUid/sidecarGid, handed to the sidecar by the agent's device
   * plugin as the extended resource `resource`.
   */
  tun: {
    /** Empty: tun pods are refused (no stock image attaches to a device it did not create). */
    image: string
    args: string[]
    dev: string
    /** The device's address and prefix; ziti-edge-tunnel's --dns-ip-range (its DNS is the next address). */
    addr: string
    dnsServer: string
    /** How the pod reaches the cluster DNS: see `DnsPath` (forward: `--dns-upstream`). */
    dns: DnsPath
    /** Default intercept CIDRs routed into the device besides its own network. */
    routes: Cidr[]
    resource: string
  }
  /** First init container: proves the redirect before anything else runs (see cni-plugin/src/validator). */
  validator: {
    enabled: boolean
    /**
     * Empty (the default): the image of the agent DaemonSet named by `daemonSet` in the
     * webhook's namespace, read at start-up and followed. The agent image is on every node
     * already (the DaemonSet runs it), so the validator costs no pull, and one
     * `kustomize edit set image` (or skaffold's tag) moves both: they cannot drift.
     */
    image: string
    daemonSet: string
    uid: number
  }
  /**
   * Egress lockdown (cni.openziti.io/egress): the platform's floor, cluster-wide (`default`)
   * and per namespace (`namespaces`, which wins for its namespace); the cluster DNS the
   * locked-down app may still ask, and exceptions every locked-down pod gets (README "Datapath",
   * "Security model"). A floor of ziti-only is one a pod cannot lower: only the platform, which
   * owns this config, can.
   */
  egress: { default: EgressMode; namespaces: Record<string, NamespaceEgress>; clusterDns: string[]; allowCidrs: Cidr[]; allowPorts: string[] }
  /** The OpenZiti controller, for `identity: auto` pods (disabled while url is empty). */
  controller: ControllerConfig
  excludedNamespaces: string[]
  /**
   * Pods headed for nodes no agent serves (Fargate, Windows: inject/platform.ts): `skip` admits
   * them without a sidecar and with a warning (they get no Ziti identity, so no access);
   * `refuse` makes the mistake loud.
   */
  unservedNodes: UnservedPolicy
  /**
   * The cluster's pod and Service networks, when the operator states them (the webhook cannot
   * read them: kube-apiserver keeps --service-cluster-ip-range to itself, and EKS's VPC CNI sets
   * no Node podCIDRs). At start every range ziti-cni takes over is checked against them.
   */
  clusterNetworks: { podCidrs: Cidr[]; serviceCidrs: Cidr[] }
  listen: { host: string; port: number }
  bodyLimitBytes: number
  /** After SIGTERM, keep serving this long while the endpoint is removed (rollouts). */
  drainSeconds: number
  tls: {
    mode: 'self-managed' | 'files'
    certFile: string
    keyFile: string
    secretName: string
    namespace: string
    serviceName: string
    webhookConfigName: string
    validityDays: number
    renewBeforeDays: number
  }
  logLevel: string
}

export interface ControllerConfig {
  /** Base URL of the Edge APIs, e.g. https://ziti-controller.ziti.svc:1280. Empty: `identity: auto` is off. */
  url: string
  /** PEM bundle for the controller's serving certificate; empty: the credential's id.ca. */
  caFile: string
  /** Mounted Secret key (identity controller only): an identity JSON (preferred) or {"username","password"}. */
  credentialFile: string
  /**
   * Tag on every identity, so two clusters sharing a controller never reconcile each other's.
   * Empty: the identity controller uses `uid-<uid of the kube-system namespace>`, unique per cluster.
   */
  cluster: string
  identityPrefix: string
  /** auto-drift: most ports one service may intercept (see ziti/services.ts). */
  maxPortsPerService: number
  /** How often the leader compares pods and identities (anything the watch missed). */
  reconcileSeconds: number
  /** An identity younger than this may belong to a pod the last list did not show yet: never deleted. */
  graceSeconds: number
  /** The identity controller's namespace (its Lease lives there). */
  namespace: string
  /** The Lease that elects the one replica that creates and deletes identities. */
  leaseName: string
  leaseSeconds: number
  /** Deny by default: who may request which role attributes (ziti/policy.ts). */
  attributePolicy: AttributeRule[]
  /** The identity controller's enrollment endpoint, as the pods' init step reaches it. */
  enrollUrl: string
  /** PEM bundle the enrollment endpoint's certificate chains to (public; injected into pods). */
  enrollCa: string
  /** Image of the init step (the identity controller's own image: node + enroll.mjs). */
  enrollImage: string
  /** Audience of the pod's projected ServiceAccount token; only the enrollment endpoint accepts it. */
  tokenAudience: string
  tokenSeconds: number
  /** The identity controller's HTTPS listener and its serving certificate. */
  enrollPort: number
  enrollCertFile: string
  enrollKeyFile: string
}

export const DEFAULT_CONFIG: WebhookConfig = {
  defaultMode: 'proxy',
  nativeSidecar: true,
  sidecarUid: 2171,
  sidecarGid: 2171,
  identitySecretKey: 'identity.json',
  enrollmentSecretKey: 'token.jwt',
  identityDir: '/netfoundry',
  resources: { requests: { cpu: '20m', memory: '48Mi' }, limits: { memory: '256Mi' } },
  // 2.x: a UDP listener survives its flows' expiry (fixed in v2.0.0, openziti/ziti fcf04d902).
  proxy: { image: 'docker.io/openziti/ziti-tunnel:2.0.3', portBase: 15100, aliasRange: parseCidr(ZITI_DNS_RANGE) as Cidr, servicePollSeconds: 60 },
  tproxy: {
    image: '',
    args: [],
    port: 15001,
    defaultCidrs: [parseCidr(ZITI_DNS_RANGE) as Cidr],
    dnsCapture: true,
    dnsServer: '100.64.0.2',
    dns: 'forward',
    // Found, not assumed: kubeadm puts it at 10.96.0.10, EKS at 10.100.0.10 or 172.20.0.10.
    clusterDns: [],
    clusterDnsService: 'kube-system/kube-dns',
    clusterDomain: 'cluster.local',
    protocols: ['tcp', 'udp'],
    datapath: 'ebpf',
  },
  egress: { default: 'open', namespaces: {}, clusterDns: ['10.96.0.10'], allowCidrs: [], allowPorts: [] },
  tun: {
    image: '',
    args: ['run'],
    dev: 'ziti0',
    addr: '100.64.0.1/10',
    dnsServer: '100.64.0.2',
    dns: 'forward',
    routes: [],
    resource: TUN_RESOURCE,
  },
  validator: { enabled: true, image: '', daemonSet: 'ziti-cni-agent', uid: 2172 },
  controller: {
    url: '',
    caFile: '',
    credentialFile: '/etc/ziti-cni/controller/credential.json',
    cluster: '',
    identityPrefix: 'k8s',
    maxPortsPerService: 16,
    reconcileSeconds: 60,
    graceSeconds: 30,
    namespace: 'ziti-cni-identity',
    leaseName: 'ziti-cni-identity-controller',
    leaseSeconds: 15,
    attributePolicy: [],
    enrollUrl: 'https://ziti-cni-identity-controller.ziti-cni-identity.svc:8443',
    enrollCa: '',
    enrollImage: '',
    tokenAudience: 'enroll.ziti-cni.openziti.io',
    tokenSeconds: 600,
    enrollPort: 8443,
    enrollCertFile: '/etc/ziti-cni/enroll-tls/tls.crt',
    enrollKeyFile: '/etc/ziti-cni/enroll-tls/tls.key',
  },
  excludedNamespaces: ['kube-system', 'kube-node-lease'],
  unservedNodes: 'skip',
  clusterNetworks: { podCidrs: [], serviceCidrs: [] },
  listen: { host: '0.0.0.0', port: 9443 },
  bodyLimitBytes: 6 * 1024 * 1024,
  drainSeconds: 10,
  tls: {
    mode: 'self-managed',
    // Beside, not under, the config mount (/etc/ziti-cni is a ConfigMap volume).
    certFile: '/etc/ziti-cni-tls/tls.crt',
    keyFile: '/etc/ziti-cni-tls/tls.key',
    secretName: 'ziti-cni-webhook-tls',
    namespace: 'ziti-cni-system',
    serviceName: 'ziti-cni-webhook',
    webhookConfigName: 'ziti-cni-webhook',
    validityDays: 365,
    renewBeforeDays: 30,
  },
  logLevel: 'info',
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError'
  readonly problems: string[]
  constructor(problems: string[]) {
    super(`invalid webhook configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`)
    this.problems = problems
  }
}

/** This release's agent image (the offline inject command's validator image). */
export const RELEASE_AGENT_IMAGE = 'ghcr.io/ziti-cni/agent:0.1.0'

/** Why the nftables TPROXY datapath is not offered (measured on containerd + runc). */
/** One namespace's egress floor, and exceptions its pods get on top of the cluster's. */
export interface NamespaceEgress { default: EgressMode; allowCidrs: Cidr[]; allowPorts: string[] }

export const NFTABLES_REFUSED = 'nftables TPROXY only delivers to IP_TRANSPARENT sockets, which need CAP_NET_RAW in the effective set; Kubernetes gives a non-root container added capabilities only in its bounding set (no ambient set), so no injected sidecar can hold it. Use ebpf'

const PINNED_IMAGE = /^[a-z0-9.-]+(:[0-9]+)?(\/[a-z0-9._-]+)+(:[A-Za-z0-9._-]{1,128}|@sha256:[a-f0-9]{64})$/

type Raw = Record<string, unknown>

/** Validates a raw (parsed YAML) object over the defaults; every problem is reported at once. */
export function validateConfig(raw: unknown, env: NodeJS.ProcessEnv = {}): WebhookConfig {
  const problems: string[] = []
  const root = (raw ?? {}) as Raw
  if (typeof root !== 'object' || Array.isArray(root)) throw new ConfigError(['the configuration must be a mapping'])
  const known: Record<string, string[]> = {
    '': ['defaultMode', 'nativeSidecar', 'sidecarUid', 'sidecarGid', 'identitySecretKey', 'enrollmentSecretKey', 'identityDir', 'resources', 'proxy', 'tproxy', 'tun', 'egress', 'validator', 'controller', 'excludedNamespaces', 'unservedNodes', 'clusterNetworks', 'listen', 'bodyLimitBytes', 'drainSeconds', 'tls', 'logLevel'],
    proxy: ['image', 'portBase', 'aliasRange', 'servicePollSeconds'],
    tproxy: ['image', 'args', 'port', 'defaultCidrs', 'dnsCapture', 'dnsServer', 'dns', 'clusterDns', 'clusterDnsService', 'clusterDomain', 'protocols', 'datapath'],
    listen: ['host', 'port'],
    clusterNetworks: ['podCidrs', 'serviceCidrs'],
    tls: ['mode', 'certFile', 'keyFile', 'secretName', 'namespace', 'serviceName', 'webhookConfigName', 'validityDays', 'renewBeforeDays'],
    resources: ['requests', 'limits'],
    validator: ['enabled', 'image', 'daemonSet', 'uid'],
    tun: ['image', 'args', 'dev', 'addr', 'dnsServer', 'dns', 'routes', 'resource'],
    egress: ['default', 'namespaces', 'clusterDns', 'allowCidrs', 'allowPorts'],
    controller: ['url', 'caFile', 'credentialFile', 'cluster', 'identityPrefix', 'maxPortsPerService', 'reconcileSeconds', 'graceSeconds', 'namespace', 'leaseName', 'leaseSeconds', 'attributePolicy', 'enrollUrl', 'enrollCa', 'enrollImage', 'tokenAudience', 'tokenSeconds', 'enrollPort', 'enrollCertFile', 'enrollKeyFile'],
  }
  const section = (name: string): Raw => {
    const v = name === '' ? root : root[name]
    if (v === undefined) return {}
    if (typeof v !== 'object' || v === null || Array.isArray(v)) { problems.push(`${name}: must be a mapping`); return {} }
    for (const k of Object.keys(v)) if (!known[name]!.includes(k)) problems.push(`${name ? `${name}.` : ''}${k}: unknown key`)
    return v as Raw
  }
  const top = section('')
  const d = DEFAULT_CONFIG
  const pick = <T>(key: string, v: unknown, fallback: T, check: (v: unknown) => string | undefined): T => {
    if (v === undefined) return fallback
    const problem = check(v)
    if (problem) { problems.push(`${key}: ${problem}`); return fallback }
    return v as T
  }
  const bool = (v: unknown) => (typeof v === 'boolean' ? undefined : 'must be true or false')
  const int = (min: number, max: number) => (v: unknown) => (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? undefined : `must be an integer in ${min}-${max}`)
  const port = (v: unknown) => (typeof v === 'number' && typeof parsePort(String(v)) === 'number' ? undefined : 'must be a port 1-65535')
  const dnsPath = (v: unknown) => (DNS_PATHS.includes(v as DnsPath) ? undefined : `must be ${DNS_PATHS.join(' or ')}`)
  const str = (v: unknown) => (typeof v === 'string' && v.length > 0 ? undefined : 'must be a non-empty string')
  const image = (v: unknown) => (typeof v === 'string' && PINNED_IMAGE.test(v) && !v.endsWith(':latest') ? undefined : 'must be a fully qualified image with a pinned tag or digest (not :latest)')
  const cidr = (key: string, v: unknown, fallback: Cidr): Cidr => {
    if (v === undefined) return fallback
    const c = typeof v === 'string' ? parseCidr(v, false) : 'must be a CIDR string'
    if (typeof c === 'string') { problems.push(`${key}: ${c}`); return fallback }
    return c
  }
  const list = <T>(key: string, v: unknown, fallback: T[], each: (x: unknown) => string | undefined): T[] => {
    if (v === undefined) return fallback
    if (!Array.isArray(v)) { problems.push(`${key}: must be a list`); return fallback }
    v.forEach((x, i) => { const p = each(x); if (p) problems.push(`${key}[${i}]: ${p}`) })
    return v as T[]
  }

  const cidrList = (key: string, v: unknown, fallback: Cidr[]): Cidr[] =>
    list<unknown>(key, v, fallback.map(formatCidr), (x) => {
      const c = typeof x === 'string' ? parseCidr(x, false) : 'must be a CIDR string'
      return typeof c === 'string' ? c : undefined
    }).map((x) => (typeof x === 'string' ? parseCidr(x, false) : x) as Cidr)

  const egressMode = (v: unknown) => (v === 'open' || v === 'ziti-only' ? undefined : 'must be open or ziti-only')
  const portSpan = (v: unknown) => (typeof v === 'string' && /^[0-9]+(-[0-9]+)?$/.test(v) && v.split('-').every((p) => typeof parsePort(p) === 'number') ? undefined : 'must be a port or a range "from-to" (a string)')
  const egressNamespaces = (v: unknown): Record<string, NamespaceEgress> => {
    if (v === undefined) return {}
    if (typeof v !== 'object' || v === null || Array.isArray(v)) { problems.push('egress.namespaces: must be a mapping of namespace name to { default, allowCidrs, allowPorts }'); return {} }
    const out: Record<string, NamespaceEgress> = {}
    for (const [ns, entry] of Object.entries(v as Raw)) {
      const key = `egress.namespaces.${ns}`
      if (!isDnsName(ns)) { problems.push(`${key}: not a namespace name`); continue }
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) { problems.push(`${key}: must be a mapping { default, allowCidrs, allowPorts }`); continue }
      const e = entry as Raw
      for (const k of Object.keys(e)) if (!['default', 'allowCidrs', 'allowPorts'].includes(k)) problems.push(`${key}.${k}: unknown key`)
      if (e.default === undefined) problems.push(`${key}.default: required (open or ziti-only)`)
      out[ns] = {
        default: pick(`${key}.default`, e.default, 'ziti-only', egressMode),
        allowCidrs: cidrList(`${key}.allowCidrs`, e.allowCidrs, []),
        allowPorts: list(`${key}.allowPorts`, e.allowPorts, [], portSpan),
      }
    }
    return out
  }

  const proxy = section('proxy')
  const tproxy = section('tproxy')
  const listen = section('listen')
  const tls = section('tls')
  const resources = section('resources')
  const validator = section('validator')
  const tun = section('tun')
  const egress = section('egress')
  const controller = section('controller')
  const clusterNetworks = section('clusterNetworks')
  const path = (v: unknown) => (typeof v === 'string' && (v === '' || v.startsWith('/')) ? undefined : 'must be an absolute path (or empty)')
  const envPort = env.WEBHOOK_PORT !== undefined ? Number(env.WEBHOOK_PORT) : undefined
  if (env.WEBHOOK_PORT !== undefined && port(envPort)) problems.push(`WEBHOOK_PORT: must be a port 1-65535`)
  if (env.DRAIN_SECONDS !== undefined && int(0, 120)(Number(env.DRAIN_SECONDS))) problems.push('DRAIN_SECONDS: must be an integer in 0-120')

  const cfg: WebhookConfig = {
    defaultMode: pick('defaultMode', top.defaultMode, d.defaultMode, (v) => (v === 'proxy' || v === 'tproxy' || v === 'tun' ? undefined : 'must be proxy, tproxy or tun')),
    nativeSidecar: pick('nativeSidecar', top.nativeSidecar, d.nativeSidecar, bool),
    sidecarUid: pick('sidecarUid', top.sidecarUid, d.sidecarUid, int(1, 2147483647)),
    sidecarGid: pick('sidecarGid', top.sidecarGid, d.sidecarGid, int(1, 2147483647)),
    identitySecretKey: pick('identitySecretKey', top.identitySecretKey, d.identitySecretKey, str),
    enrollmentSecretKey: pick('enrollmentSecretKey', top.enrollmentSecretKey, d.enrollmentSecretKey, str),
    identityDir: pick('identityDir', top.identityDir, d.identityDir, (v) => (typeof v === 'string' && v.startsWith('/') ? undefined : 'must be an absolute path')),
    resources: {
      requests: pick('resources.requests', resources.requests, d.resources.requests, (v) => (typeof v === 'object' && v !== null ? undefined : 'must be a mapping')),
      limits: pick('resources.limits', resources.limits, d.resources.limits, (v) => (typeof v === 'object' && v !== null ? undefined : 'must be a mapping')),
    },
    proxy: {
      image: pick('proxy.image', proxy.image, d.proxy.image, image),
      portBase: pick('proxy.portBase', proxy.portBase, d.proxy.portBase, int(1024, 65000)),
      aliasRange: cidr('proxy.aliasRange', proxy.aliasRange, d.proxy.aliasRange),
      servicePollSeconds: pick('proxy.servicePollSeconds', proxy.servicePollSeconds, d.proxy.servicePollSeconds, int(5, 86400)),
    },
    tproxy: {
      image: pick('tproxy.image', tproxy.image, d.tproxy.image, (v) => (v === '' ? undefined : image(v))),
      args: list('tproxy.args', tproxy.args, d.tproxy.args, str),
      port: pick('tproxy.port', tproxy.port, d.tproxy.port, port),
      defaultCidrs: cidrList('tproxy.defaultCidrs', tproxy.defaultCidrs, d.tproxy.defaultCidrs),
      dnsCapture: pick('tproxy.dnsCapture', tproxy.dnsCapture, d.tproxy.dnsCapture, bool),
      dnsServer: pick('tproxy.dnsServer', tproxy.dnsServer, d.tproxy.dnsServer, (v) => (typeof v === 'string' && typeof parseAddress(v) !== 'string' ? undefined : 'must be an IP address')),
      dns: pick('tproxy.dns', tproxy.dns, d.tproxy.dns, dnsPath),
      clusterDns: list('tproxy.clusterDns', tproxy.clusterDns, d.tproxy.clusterDns, (v) => (typeof v === 'string' && typeof parseAddress(v) !== 'string' ? undefined : 'must be an IP address')),
      clusterDnsService: pick('tproxy.clusterDnsService', tproxy.clusterDnsService, d.tproxy.clusterDnsService, (v) => { const r = typeof v === 'string' ? parseServiceRef(v) : 'must be a string'; return typeof r === 'string' ? r : undefined }),
      clusterDomain: pick('tproxy.clusterDomain', tproxy.clusterDomain, d.tproxy.clusterDomain, (v) => (typeof v === 'string' && isDnsName(v) ? undefined : 'must be a DNS domain')),
      protocols: list('tproxy.protocols', tproxy.protocols, d.tproxy.protocols, (v) => (v === 'tcp' || v === 'udp' ? undefined : 'must be tcp or udp')),
      datapath: pick('tproxy.datapath', tproxy.datapath, d.tproxy.datapath, (v) => (v === 'ebpf' ? undefined : v === 'nftables' ? NFTABLES_REFUSED : 'must be ebpf')),
    },
    tun: {
      image: pick('tun.image', tun.image, d.tun.image, (v) => (v === '' ? undefined : image(v))),
      args: list('tun.args', tun.args, d.tun.args, str),
      dev: pick('tun.dev', tun.dev, d.tun.dev, (v) => (typeof v === 'string' && tunDeviceProblem(v) === undefined ? undefined : 'must be an interface name (a-z then a-z0-9, at most 15), not lo or eth*')),
      addr: pick('tun.addr', tun.addr, d.tun.addr, (v) => {
        const a = typeof v === 'string' ? parseInterfaceAddress(v) : 'not a string'
        return typeof a !== 'string' && a.address.family === 4 && a.network.prefix >= 8 && a.network.prefix <= 30 ? undefined : 'must be an IPv4 address with a prefix of 8-30 (e.g. 100.64.0.1/10)'
      }),
      dnsServer: pick('tun.dnsServer', tun.dnsServer, d.tun.dnsServer, (v) => (typeof v === 'string' && typeof parseAddress(v) !== 'string' && v.includes('.') ? undefined : 'must be an IPv4 address')),
      dns: pick('tun.dns', tun.dns, d.tun.dns, dnsPath),
      routes: cidrList('tun.routes', tun.routes, d.tun.routes),
      resource: pick('tun.resource', tun.resource, d.tun.resource, (v) => (typeof v === 'string' && EXTENDED_RESOURCE_NAME.test(v) ? undefined : 'must be an extended resource name (domain/name)')),
    },
    egress: {
      default: pick('egress.default', egress.default, d.egress.default, egressMode),
      namespaces: egressNamespaces(egress.namespaces),
      clusterDns: list('egress.clusterDns', egress.clusterDns, d.egress.clusterDns, (v) => (typeof v === 'string' && typeof parseAddress(v) !== 'string' ? undefined : 'must be an IP address')),
      allowCidrs: cidrList('egress.allowCidrs', egress.allowCidrs, d.egress.allowCidrs),
      allowPorts: list('egress.allowPorts', egress.allowPorts, d.egress.allowPorts, portSpan),
    },
    validator: {
      enabled: pick('validator.enabled', validator.enabled, d.validator.enabled, bool),
      image: pick('validator.image', validator.image, d.validator.image, (v) => (v === '' ? undefined : image(v))),
      daemonSet: pick('validator.daemonSet', validator.daemonSet, d.validator.daemonSet, (v) => (typeof v === 'string' && isDnsName(v) ? undefined : 'must be a DaemonSet name')),
      uid: pick('validator.uid', validator.uid, d.validator.uid, int(1, 2147483647)),
    },
    controller: {
      // The controller-identities component sets the URL from a ConfigMap an overlay can merge into.
      url: pick(env.ZITI_CONTROLLER_URL !== undefined ? 'ZITI_CONTROLLER_URL' : 'controller.url', env.ZITI_CONTROLLER_URL ?? controller.url, d.controller.url, (v) => (v === '' || (typeof v === 'string' && /^https:\/\/[^/\s]+\/?$/.test(v)) ? undefined : 'must be an https:// URL with no path (the Edge API base), or empty')),
      caFile: pick('controller.caFile', controller.caFile, d.controller.caFile, path),
      credentialFile: pick('controller.credentialFile', controller.credentialFile, d.controller.credentialFile, path),
      cluster: pick('controller.cluster', controller.cluster, d.controller.cluster, (v) => (v === '' || (typeof v === 'string' && isDnsName(v)) ? undefined : 'must be a DNS label-like name (or empty: derived from the kube-system namespace uid)')),
      identityPrefix: pick('controller.identityPrefix', controller.identityPrefix, d.controller.identityPrefix, (v) => (typeof v === 'string' && /^[a-z0-9][a-z0-9-]{0,15}$/.test(v) ? undefined : 'must be 1-16 of a-z, 0-9, -')),
      maxPortsPerService: pick('controller.maxPortsPerService', controller.maxPortsPerService, d.controller.maxPortsPerService, int(1, 256)),
      reconcileSeconds: pick('controller.reconcileSeconds', controller.reconcileSeconds, d.controller.reconcileSeconds, int(1, 86400)),
      graceSeconds: pick('controller.graceSeconds', controller.graceSeconds, d.controller.graceSeconds, int(0, 86400)),
      namespace: pick('controller.namespace', controller.namespace, d.controller.namespace, (v) => (typeof v === 'string' && isDnsName(v) ? undefined : 'must be a namespace name')),
      leaseName: pick('controller.leaseName', controller.leaseName, d.controller.leaseName, (v) => (typeof v === 'string' && isDnsName(v) ? undefined : 'must be a Lease name')),
      leaseSeconds: pick('controller.leaseSeconds', controller.leaseSeconds, d.controller.leaseSeconds, int(2, 300)),
      attributePolicy: controller.attributePolicy === undefined ? d.controller.attributePolicy : (problems.push(...attributePolicyProblems(controller.attributePolicy)), controller.attributePolicy as AttributeRule[]),
      enrollUrl: pick('controller.enrollUrl', controller.enrollUrl, d.controller.enrollUrl, (v) => (typeof v === 'string' && /^https:\/\/[^/\s]+\/?$/.test(v) ? undefined : 'must be an https:// URL with no path')),
      enrollCa: pick('controller.enrollCa', controller.enrollCa, d.controller.enrollCa, (v) => (v === '' || (typeof v === 'string' && v.includes('BEGIN CERTIFICATE')) ? undefined : 'must be a PEM certificate bundle (or empty)')),
      enrollImage: pick('controller.enrollImage', controller.enrollImage, d.controller.enrollImage, (v) => (v === '' ? undefined : image(v))),
      tokenAudience: pick('controller.tokenAudience', controller.tokenAudience, d.controller.tokenAudience, str),
      // The kubelet refuses projected tokens shorter than 10 minutes (pkg/volume/projected).
      tokenSeconds: pick('controller.tokenSeconds', controller.tokenSeconds, d.controller.tokenSeconds, int(600, 86400)),
      enrollPort: pick('controller.enrollPort', controller.enrollPort, d.controller.enrollPort, port),
      enrollCertFile: pick('controller.enrollCertFile', controller.enrollCertFile, d.controller.enrollCertFile, str),
      enrollKeyFile: pick('controller.enrollKeyFile', controller.enrollKeyFile, d.controller.enrollKeyFile, str),
    },
    excludedNamespaces: list('excludedNamespaces', top.excludedNamespaces, d.excludedNamespaces, (v) => (typeof v === 'string' && isDnsName(v) ? undefined : 'must be a namespace name')),
    unservedNodes: pick('unservedNodes', top.unservedNodes, d.unservedNodes, (v) => (v === 'skip' || v === 'refuse' ? undefined : 'must be skip or refuse')),
    clusterNetworks: {
      podCidrs: cidrList('clusterNetworks.podCidrs', clusterNetworks.podCidrs, d.clusterNetworks.podCidrs),
      serviceCidrs: cidrList('clusterNetworks.serviceCidrs', clusterNetworks.serviceCidrs, d.clusterNetworks.serviceCidrs),
    },
    listen: {
      host: pick('listen.host', listen.host, d.listen.host, str),
      port: envPort ?? pick('listen.port', listen.port, d.listen.port, port),
    },
    bodyLimitBytes: pick('bodyLimitBytes', top.bodyLimitBytes, d.bodyLimitBytes, int(64 * 1024, 64 * 1024 * 1024)),
    drainSeconds: env.DRAIN_SECONDS !== undefined ? Number(env.DRAIN_SECONDS) : pick('drainSeconds', top.drainSeconds, d.drainSeconds, int(0, 120)),
    tls: {
      // env TLS_MODE: what deploy/components/webhook-tls-self-managed sets, whatever the file says.
      mode: pick(env.TLS_MODE !== undefined ? 'TLS_MODE' : 'tls.mode', env.TLS_MODE ?? tls.mode, d.tls.mode, (v) => (v === 'self-managed' || v === 'files' ? undefined : 'must be self-managed or files')),
      certFile: pick('tls.certFile', tls.certFile, d.tls.certFile, str),
      keyFile: pick('tls.keyFile', tls.keyFile, d.tls.keyFile, str),
      secretName: pick('tls.secretName', tls.secretName, d.tls.secretName, (v) => (typeof v === 'string' && isDnsName(v) ? undefined : 'must be a Secret name')),
      namespace: env.POD_NAMESPACE ?? pick('tls.namespace', tls.namespace, d.tls.namespace, str),
      serviceName: pick('tls.serviceName', tls.serviceName, d.tls.serviceName, str),
      webhookConfigName: pick('tls.webhookConfigName', tls.webhookConfigName, d.tls.webhookConfigName, str),
      validityDays: pick('tls.validityDays', tls.validityDays, d.tls.validityDays, int(2, 3650)),
      renewBeforeDays: pick('tls.renewBeforeDays', tls.renewBeforeDays, d.tls.renewBeforeDays, int(1, 3649)),
    },
    logLevel: env.LOG_LEVEL ?? pick('logLevel', top.logLevel, d.logLevel, (v) => (['trace', 'debug', 'info', 'warn', 'error'].includes(v as string) ? undefined : 'must be trace, debug, info, warn or error')),
  }
  if (cfg.tls.renewBeforeDays >= cfg.tls.validityDays) problems.push('tls.renewBeforeDays: must be less than tls.validityDays')
  const tunAddr = parseInterfaceAddress(cfg.tun.addr)
  const tunDns = parseAddress(cfg.tun.dnsServer)
  if (typeof tunAddr !== 'string' && typeof tunDns !== 'string' && !cidrContains(tunAddr.network, tunDns)) problems.push(`tun.dnsServer: ${cfg.tun.dnsServer} is outside ${cfg.tun.addr} (the tunneler answers DNS inside its device)`)
  // forward: the webhook gives the tunneler the cluster DNS (followed at run time); a fixed one in args would fight it.
  if (cfg.tun.dns === 'forward' && cfg.tun.args.some((a) => a === '-u' || a.startsWith('--dns-upstream'))) problems.push('tun.args: --dns-upstream is set by the webhook (the cluster DNS) while tun.dns is forward; drop it, or set tun.dns: parallel')
  if (cfg.tproxy.protocols.length === 0) problems.push('tproxy.protocols: must list tcp, udp or both')
  // `ziti tunnel proxy` listens on 0.0.0.0 only: a v6 alias would be DNATed to [::1] where
  // nothing listens.
  if (cfg.proxy.aliasRange.family !== 4) problems.push('proxy.aliasRange: must be an IPv4 range (the proxy tunneler listens on 0.0.0.0 only)')
  if (cfg.validator.uid === cfg.sidecarUid) problems.push('validator.uid: must differ from sidecarUid (the sidecar\'s traffic is never captured)')
  if (cfg.controller.url) {
    // identity: auto is injected as a reference to the enrollment endpoint: it must be complete.
    if (!cfg.controller.enrollCa) problems.push('controller.enrollCa: is required when controller.url is set (the pods\' init step verifies the enrollment endpoint with it)')
    if (!cfg.controller.enrollImage) problems.push('controller.enrollImage: is required when controller.url is set (the image of the pods\' enrollment init step)')
  }
  if (problems.length === 0) problems.push(...rangeClashes(takenRanges(cfg), clusterRanges(cfg)))
  if (problems.length) throw new ConfigError(problems)
  // The webhook's own namespace is never injected.
  if (!cfg.excludedNamespaces.includes(cfg.tls.namespace)) cfg.excludedNamespaces = [...cfg.excludedNamespaces, cfg.tls.namespace]
  return cfg
}

/** The ranges this config takes over in pods (address-range sanity, shared/src/ranges.ts). */
export function takenRanges(cfg: WebhookConfig): NamedRange[] {
  const tun = parseInterfaceAddress(cfg.tun.addr)
  return [
    { cidr: cfg.proxy.aliasRange, what: 'the proxy alias range', key: 'proxy.aliasRange' },
    ...cfg.tproxy.defaultCidrs.map((c) => ({ cidr: c, what: 'a default tproxy intercept range', key: 'tproxy.defaultCidrs' })),
    ...(typeof tun === 'string' ? [] : [{ cidr: tun.network, what: 'the tun device\'s network', key: 'tun.addr' }]),
    ...cfg.tun.routes.map((c) => ({ cidr: c, what: 'a default route into the tun device', key: 'tun.routes' })),
  ]
}

/** What of the cluster's networks the config knows: stated CIDRs and an explicit cluster DNS. */
export function clusterRanges(cfg: WebhookConfig): NamedRange[] {
  return [
    ...cfg.clusterNetworks.podCidrs.map((c) => ({ cidr: c, what: 'the cluster\'s pod network', key: 'clusterNetworks.podCidrs' })),
    ...cfg.clusterNetworks.serviceCidrs.map((c) => ({ cidr: c, what: 'the cluster\'s Service network', key: 'clusterNetworks.serviceCidrs' })),
    ...clusterDnsRanges(cfg.tproxy.clusterDns, 'tproxy.clusterDns'),
  ]
}

/** The cluster DNS addresses as ranges (explicit in the config, or read from its Service). */
export function clusterDnsRanges(ips: string[], key: string): NamedRange[] {
  return ips.flatMap((ip) => { const c = parseCidr(ip); return typeof c === 'string' ? [] : [{ cidr: c, what: 'the cluster DNS address', key }] })
}
