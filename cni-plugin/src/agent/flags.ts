// Command-line flags of the node agent: every path and endpoint, with defaults that match
// the DaemonSet's hostPath mounts (host paths are mounted at the same paths in the container).
import { parseArgs } from 'node:util'
import { EXTENDED_RESOURCE_NAME, TUN_RESOURCE } from '@ziti-cni/shared'

export interface AgentFlags {
  command: 'run' | 'uninstall'
  nodeName: string
  kubeconfig: string | undefined
  socket: string
  stateDir: string
  cniBinDir: string
  cniConfDir: string
  pluginBinary: string
  pluginKubeconfig: string
  pluginLogFile: string | undefined
  pluginTimeoutSeconds: number
  tokenFile: string
  caFile: string
  apiServer: string | undefined
  healthAddr: { host: string; port: number }
  logLevel: string
  checkIntervalMs: number
  lookupDeadlineMs: number
  uninstallOnExit: boolean
  /** Own DaemonSet: gone or being deleted at SIGTERM means uninstall, present means upgrade. */
  daemonSet: { namespace: string; name: string } | undefined
  install: boolean
  hostNetns: string
  repair: 'off' | 'delete'
  /** --repair=delete: at most this many deletions a minute. */
  repairPerMinute: number
  bpfObject: string
  /** Periodic CHECK of every recorded attachment (drift.ts): off, report only, or re-program. */
  drift: 'off' | 'report' | 'reprogram'
  driftIntervalMs: number
  /** A startup taint this agent removes from its own node once ready (taint.ts); off when unset. */
  startupTaint: string | undefined
  /** Skip the kernel minimums (kernel.ts) for distribution kernels that backport them. */
  skipKernelCheck: boolean
  /** tun mode: the kubelet device plugin handing sidecars /dev/net/tun (off unless asked). */
  tunDevicePlugin: { dir: string; resource: string; node: string; uid: number; gid: number; devices: number } | undefined
}

export const USAGE = `usage: ziti-cni-agent [run|uninstall] [flags]

  --node-name NAME            this node (env NODE_NAME); the pod cache watches spec.nodeName=NAME
  --kubeconfig PATH           the agent's own kubeconfig (default: in-cluster service account)
  --socket PATH               unix socket for the CNI executable (default /var/run/ziti-cni/agent.sock)
  --state-dir PATH            per-attachment state (default /var/run/ziti-cni/state)
  --cni-bin-dir PATH          where the executable is installed (default /opt/cni/bin)
  --cni-conf-dir PATH         where the primary conflist lives (default /etc/cni/net.d)
  --plugin-binary PATH        the ziti-cni executable to install (default /opt/ziti-cni/ziti-cni)
  --plugin-kubeconfig PATH    kubeconfig written for the executable (default <cni-conf-dir>/ziti-cni.d/ziti-cni.kubeconfig)
  --plugin-log-file PATH      log file for the executable (default: its stderr)
  --plugin-timeout SECONDS    the executable's bound on each call (default 10)
  --token-file PATH           service-account token (default /var/run/secrets/kubernetes.io/serviceaccount/token)
  --ca-file PATH              API server CA (default /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)
  --api-server URL            API server for the executable (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)
  --health-addr HOST:PORT     /healthz, /readyz, /metrics (default 127.0.0.1:9107)
  --log-level LEVEL           trace|debug|info|warn|error (default info)
  --check-interval SECONDS    periodic conflist/token check (default 10)
  --lookup-deadline SECONDS   total time for a pod lookup with retries (default 8)
  --uninstall-on-exit         always remove the conflist entry, kubeconfig and executable on SIGTERM
  --daemonset NS/NAME         own DaemonSet (default env POD_NAMESPACE + DAEMONSET_NAME): at SIGTERM,
                              if it is gone or being deleted the agent uninstalls, otherwise (an
                              upgrade or a node drain) it leaves the plugin in place
  --no-install                serve only; do not run the installer
  --host-netns PATH           the namespace never to program (default /proc/self/ns/net)
  --bpf-object PATH           tc program of the eBPF datapath (default /opt/ziti-cni/tproxy.bpf.o)
  --repair off|delete         pods whose validator found no interception: report only (default), or
                              delete them so their controller recreates them (needs RBAC delete on pods)
  --repair-per-minute N       with --repair=delete, at most N deletions a minute (default 5)
  --drift reprogram|report|off  every --drift-interval, verify each programmed pod against what ADD
                              recorded (CHECK is never sent by containerd 1.6 nor with the VPC CNI's
                              disableCheck); on drift: a metric, a log line, a pod Event, and then
                              re-program it from the record (default) or leave it (report)
  --drift-interval SECONDS    time between drift passes (default 60)
  --startup-taint KEY         once the plugin is installed and the agent ready, remove this taint
                              (e.g. cni.openziti.io/agent-not-ready) from this node; needs the
                              startup-taint component's RBAC and admission policy (default: off)
  --skip-kernel-check         install even on a kernel older than the datapaths need (5.6 for
                              concatenated interval sets, 5.7 for bpf_sk_assign): for backports
  --tun-device-plugin         serve the kubelet device plugin for tun-mode sidecars (resource below)
  --device-plugin-dir PATH    the kubelet's device-plugin dir (default /var/lib/kubelet/device-plugins)
  --tun-resource NAME         extended resource (default tun.openziti.io/tun)
  --tun-device-node PATH      private c 10:200 node handed to sidecars (default /var/run/ziti-cni/dev/net-tun)
  --tun-owner UID:GID         its owner: the sidecar's uid/gid, the tun devices' owner (default 2171:2171)
  --tun-devices N             how many tun-mode pods the node may run at once (default 110)
`

export class FlagError extends Error {
  override readonly name = 'FlagError'
}

/** `--help`: print the usage and exit 0. */
export class HelpRequested extends Error {
  override readonly name = 'HelpRequested'
}

function seconds(name: string, v: string): number {
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0) throw new FlagError(`--${name}: ${JSON.stringify(v)} is not a positive number of seconds`)
  return n
}

export function parseFlags(argv: string[], env: NodeJS.ProcessEnv): AgentFlags {
  let parsed
  try {
    parsed = parseArgs({
      args: argv, allowPositionals: true, strict: true,
      options: {
        'node-name': { type: 'string' }, kubeconfig: { type: 'string' }, socket: { type: 'string' },
        'state-dir': { type: 'string' }, 'cni-bin-dir': { type: 'string' }, 'cni-conf-dir': { type: 'string' },
        'plugin-binary': { type: 'string' }, 'plugin-kubeconfig': { type: 'string' }, 'plugin-log-file': { type: 'string' },
        'plugin-timeout': { type: 'string' }, 'token-file': { type: 'string' }, 'ca-file': { type: 'string' },
        'api-server': { type: 'string' }, 'health-addr': { type: 'string' }, 'log-level': { type: 'string' },
        'check-interval': { type: 'string' }, 'lookup-deadline': { type: 'string' },
        'uninstall-on-exit': { type: 'boolean' }, 'no-install': { type: 'boolean' }, 'host-netns': { type: 'string' }, daemonset: { type: 'string' }, repair: { type: 'string' }, 'repair-per-minute': { type: 'string' }, 'bpf-object': { type: 'string' },
        drift: { type: 'string' }, 'drift-interval': { type: 'string' }, 'startup-taint': { type: 'string' }, 'skip-kernel-check': { type: 'boolean' },
        'tun-device-plugin': { type: 'boolean' }, 'device-plugin-dir': { type: 'string' }, 'tun-resource': { type: 'string' }, 'tun-device-node': { type: 'string' }, 'tun-owner': { type: 'string' }, 'tun-devices': { type: 'string' },
        help: { type: 'boolean' },
      },
    })
  } catch (e) {
    throw new FlagError((e as Error).message)
  }
  const v = parsed.values
  if (v.help) throw new HelpRequested()
  const command = (parsed.positionals[0] ?? 'run') as AgentFlags['command']
  if (command !== 'run' && command !== 'uninstall') throw new FlagError(`unknown command ${JSON.stringify(command)}`)
  const nodeName = v['node-name'] ?? env.NODE_NAME ?? ''
  if (command === 'run' && !nodeName) throw new FlagError('--node-name (or env NODE_NAME) is required')
  const health = v['health-addr'] ?? '127.0.0.1:9107'
  const m = /^(.*):([0-9]{1,5})$/.exec(health)
  if (!m || Number(m[2]) > 65535) throw new FlagError(`--health-addr: ${JSON.stringify(health)} is not HOST:PORT`)
  const level = v['log-level'] ?? 'info'
  if (!['trace', 'debug', 'info', 'warn', 'error'].includes(level)) throw new FlagError(`--log-level: unknown level ${JSON.stringify(level)}`)
  const dsText = v.daemonset ?? (env.POD_NAMESPACE && env.DAEMONSET_NAME ? `${env.POD_NAMESPACE}/${env.DAEMONSET_NAME}` : undefined)
  const ds = dsText?.split('/')
  if (ds && (ds.length !== 2 || !ds[0] || !ds[1])) throw new FlagError(`--daemonset: ${JSON.stringify(dsText)} is not NAMESPACE/NAME`)
  const repair = v.repair ?? 'off'
  if (repair !== 'off' && repair !== 'delete') throw new FlagError(`--repair: ${JSON.stringify(repair)} is not off or delete`)
  const repairPerMinute = v['repair-per-minute'] === undefined ? 5 : Number(v['repair-per-minute'])
  if (!Number.isInteger(repairPerMinute) || repairPerMinute < 1 || repairPerMinute > 600) throw new FlagError('--repair-per-minute must be an integer in 1-600')
  const drift = v.drift ?? 'reprogram'
  if (drift !== 'off' && drift !== 'report' && drift !== 'reprogram') throw new FlagError(`--drift: ${JSON.stringify(drift)} is not reprogram, report or off`)
  const driftInterval = seconds('drift-interval', v['drift-interval'] ?? '60')
  if (driftInterval < 5 || driftInterval > 86400) throw new FlagError('--drift-interval must be 5-86400 seconds')
  const startupTaint = v['startup-taint']
  // A taint key: an optional DNS-subdomain prefix and a name (apimachinery's qualified name).
  if (startupTaint !== undefined && !/^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/.test(startupTaint)) throw new FlagError(`--startup-taint: ${JSON.stringify(startupTaint)} is not a taint key`)
  let tunDevicePlugin: AgentFlags['tunDevicePlugin']
  if (v['tun-device-plugin']) {
    const owner = /^([0-9]{1,10}):([0-9]{1,10})$/.exec(v['tun-owner'] ?? '2171:2171')
    if (!owner || Number(owner[1]) < 1 || Number(owner[2]) < 1) throw new FlagError(`--tun-owner: ${JSON.stringify(v['tun-owner'])} is not UID:GID (non-root)`)
    const devices = Number(v['tun-devices'] ?? '110')
    if (!Number.isInteger(devices) || devices < 1 || devices > 10000) throw new FlagError('--tun-devices must be an integer in 1-10000')
    const resource = v['tun-resource'] ?? TUN_RESOURCE
    if (!EXTENDED_RESOURCE_NAME.test(resource)) throw new FlagError(`--tun-resource: ${JSON.stringify(resource)} is not an extended resource name (domain/name)`)
    tunDevicePlugin = { dir: v['device-plugin-dir'] ?? '/var/lib/kubelet/device-plugins', resource, node: v['tun-device-node'] ?? '/var/run/ziti-cni/dev/net-tun', uid: Number(owner[1]), gid: Number(owner[2]), devices }
  } else {
    for (const k of ['device-plugin-dir', 'tun-resource', 'tun-device-node', 'tun-owner', 'tun-devices'] as const) if (v[k] !== undefined) throw new FlagError(`--${k} needs --tun-device-plugin`)
  }
  const sa = '/var/run/secrets/kubernetes.io/serviceaccount'
  const lookupDeadline = seconds('lookup-deadline', v['lookup-deadline'] ?? '8')
  const pluginTimeout = seconds('plugin-timeout', v['plugin-timeout'] ?? '10')
  if (lookupDeadline >= pluginTimeout) throw new FlagError(`--lookup-deadline (${lookupDeadline}s) must be shorter than --plugin-timeout (${pluginTimeout}s)`)
  return {
    command,
    nodeName,
    kubeconfig: v.kubeconfig ?? env.KUBECONFIG,
    socket: v.socket ?? '/var/run/ziti-cni/agent.sock',
    stateDir: v['state-dir'] ?? '/var/run/ziti-cni/state',
    cniBinDir: v['cni-bin-dir'] ?? '/opt/cni/bin',
    cniConfDir: v['cni-conf-dir'] ?? '/etc/cni/net.d',
    pluginBinary: v['plugin-binary'] ?? '/opt/ziti-cni/ziti-cni',
    // Next to the CNI config it serves, wherever the platform keeps that (k3s, MicroK8s, ...).
    pluginKubeconfig: v['plugin-kubeconfig'] ?? `${v['cni-conf-dir'] ?? '/etc/cni/net.d'}/ziti-cni.d/ziti-cni.kubeconfig`,
    pluginLogFile: v['plugin-log-file'],
    pluginTimeoutSeconds: pluginTimeout,
    tokenFile: v['token-file'] ?? `${sa}/token`,
    caFile: v['ca-file'] ?? `${sa}/ca.crt`,
    apiServer: v['api-server'],
    healthAddr: { host: m[1] || '0.0.0.0', port: Number(m[2]) },
    logLevel: level,
    checkIntervalMs: seconds('check-interval', v['check-interval'] ?? '10') * 1000,
    lookupDeadlineMs: lookupDeadline * 1000,
    uninstallOnExit: v['uninstall-on-exit'] ?? false,
    daemonSet: ds ? { namespace: ds[0]!, name: ds[1]! } : undefined,
    install: !(v['no-install'] ?? false),
    hostNetns: v['host-netns'] ?? '/proc/self/ns/net',
    repair,
    repairPerMinute,
    bpfObject: v['bpf-object'] ?? '/opt/ziti-cni/tproxy.bpf.o',
    drift,
    driftIntervalMs: driftInterval * 1000,
    startupTaint,
    skipKernelCheck: v['skip-kernel-check'] ?? false,
    tunDevicePlugin,
  }
}
