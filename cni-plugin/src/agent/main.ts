// ziti-cni-agent: the node agent (DaemonSet). Serves the CNI executable, keeps the pod cache,
// programs pod netns, and installs/guards the plugin on the node.
import { chmodSync, mkdirSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { pino, type Logger } from 'pino'
import { PLUGIN_TYPE } from '../install/conflist.ts'
import { Installer, uninstall } from '../install/installer.ts'
import { SnapshotWriter } from './snapshot.ts'
import { FlagError, HelpRequested, parseFlags, USAGE, type AgentFlags } from './flags.ts'
import { EventRecorder, withFailureEvents } from './events.ts'
import { createAgentMetrics } from './metrics.ts'
import { createNetns } from './netns.ts'
import { createPodSource } from './pods.ts'
import { createKubeClient, loadConnection, seg, type KubeClient } from './kube.ts'
import { ApiError } from './reflector.ts'
import { Programmer } from './programmer.ts'
import { startDriftDetection } from './drift.ts'
import { startTaintRemoval } from './taint.ts'
import { kernelProblems } from './kernel.ts'
import { release } from 'node:os'
import { Repairer } from './repair.ts'
import { cniInFlight, createCniServer, createHealthServer } from './server.ts'
import { StateStore } from './state.ts'
import type { TunDevicePlugin } from '../deviceplugin/tun-plugin.ts'

function pluginEntry(f: AgentFlags) {
  return {
    type: PLUGIN_TYPE,
    agentSocket: f.socket,
    snapshot: snapshotPath(f),
    timeoutSeconds: f.pluginTimeoutSeconds,
    ...(f.pluginLogFile ? { logFile: f.pluginLogFile } : {}),
  } as const
}

/** The intent snapshot lives beside the agent's socket, in its root-only run dir. */
function snapshotPath(f: Pick<AgentFlags, 'socket'>): string {
  return join(dirname(f.socket), 'intents.json')
}

async function run(f: AgentFlags): Promise<void> {
  const log = pino({ level: f.logLevel, base: { component: 'agent', node: f.nodeName } })
  // Refuse before anything is served or installed: the kubelet shows this as the crash reason.
  const tooOld = f.install && !f.skipKernelCheck ? kernelProblems(release()) : []
  if (tooOld.length) { for (const p of tooOld) log.fatal(p); throw new FlagError(tooOld.join('\n')) }
  let cachedCount = () => 0
  const metrics = createAgentMetrics(() => cachedCount())
  const kube = createKubeClient(loadConnection(f.kubeconfig, process.env))
  const pods = createPodSource(kube, f.nodeName, log, { onLookup: (source, outcome) => metrics.lookups.inc({ source, outcome }) })
  cachedCount = () => pods.cachedCount()
  let installer: Installer | undefined
  const events = new EventRecorder({ node: f.nodeName, log, post: async (namespace, body) => { await kube.json('POST', `/api/v1/namespaces/${seg(namespace)}/events`, { body }) } })
  const repairer = new Repairer({
    mode: f.repair, nodeName: f.nodeName, maxPerMinute: f.repairPerMinute, log,
    installed: () => !f.install || (installer?.ready ?? false),
    deletePod: async (namespace, name, uid) => { await kube.json('DELETE', `/api/v1/namespaces/${seg(namespace)}/pods/${seg(name)}`, { body: { preconditions: { uid } } }) },
    count: (action) => metrics.repairs.inc({ action }),
    onAction: (pod, action, message) => void events.record({ namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata?.uid }, 'Warning', action === 'failed' ? 'RepairFailed' : action === 'deleted' ? 'DeletedNotIntercepted' : 'NotIntercepted', message),
  })
  pods.onPod((pod) => void repairer.consider(pod))
  mkdirSync(dirname(f.socket), { recursive: true, mode: 0o700 })
  chmodSync(dirname(f.socket), 0o700)
  const snapshot = new SnapshotWriter(snapshotPath(f), f.nodeName)
  snapshot.flush()
  pods.onPod((pod) => snapshot.observe(pod))
  const repairTimer = setInterval(() => void repairer.tick(), 5_000)
  repairTimer.unref()
  const state = new StateStore(f.stateDir)
  const netns = createNetns({ hostNetns: f.hostNetns, nsenter: 'nsenter', timeoutMs: 5000 })
  const programmer = new Programmer({ netns, pods, state, log, lookupDeadlineMs: f.lookupDeadlineMs, bpfObject: f.bpfObject })

  // Attachments whose netns vanished while we were away (pods deleted with the agent down).
  for (const s of state.list()) {
    if (!netns.exists(s.netns)) { state.delete(s.containerId, s.ifName); log.info({ containerId: s.containerId }, 'dropped state of a vanished attachment') }
  }

  const stopDrift = f.drift === 'off' ? () => {} : startDriftDetection({ netns, state, log, lookupDeadlineMs: f.lookupDeadlineMs, bpfObject: f.bpfObject, action: f.drift, nodeName: f.nodeName, minAgeMs: f.driftIntervalMs, registry: metrics.registry, busy: () => cniInFlight.count > 0,
    emitEvent: (ev) => events.record({ namespace: ev.involvedObject.namespace!, name: ev.involvedObject.name!, uid: ev.involvedObject.uid }, 'Warning', ev.reason!, ev.message!) }, () => state.list(), f.driftIntervalMs)

  const cni = createCniServer(withFailureEvents(programmer, events), metrics, log, f.socket)
  rmSync(f.socket, { force: true })
  await new Promise<void>((resolve, reject) => { cni.once('error', reject); cni.listen(f.socket, () => resolve()) })
  chmodSync(f.socket, 0o600)

  if (f.install) {
    installer = new Installer({
      pluginSource: f.pluginBinary, cniBinDir: f.cniBinDir, cniConfDir: f.cniConfDir, pluginKubeconfig: f.pluginKubeconfig,
      entry: pluginEntry(f), checkIntervalMs: f.checkIntervalMs,
      onReinsert: (primary) => metrics.reinserts.inc({ primary }),
    }, log)
    installer.start()
  }

  let tunPlugin: TunDevicePlugin | undefined
  if (f.tunDevicePlugin) {
    const t = f.tunDevicePlugin
    // Loaded only in tun mode: grpc-js and proto-loader cost ~20 MiB resident (bench/rss.ts).
    const { TunDevicePlugin } = await import('../deviceplugin/tun-plugin.ts')
    tunPlugin = new TunDevicePlugin({ dir: t.dir, resource: t.resource, socketName: 'ziti-cni-tun.sock', deviceNode: t.node, uid: t.uid, gid: t.gid, devices: t.devices, log })
    await tunPlugin.start()
  }

  const health = createHealthServer({
    live: () => true,
    ready: () => {
      if (installer && !installer.ready) return { ready: false, reason: `no CNI config in ${f.cniConfDir} yet` }
      if (!pods.synced()) return { ready: false, reason: 'pod cache not synced' }
      return { ready: true, reason: '' }
    },
  }, metrics, log)
  const untaint = f.startupTaint ? startTaintRemoval(kube, f.nodeName, f.startupTaint, log, () => (!installer || installer.ready) && pods.synced()) : undefined
  await health.listen({ host: f.healthAddr.host, port: f.healthAddr.port })
  log.info({ socket: f.socket, health: `${f.healthAddr.host}:${f.healthAddr.port}` }, 'agent ready')

  const shutdown = async (signal: string) => {
    log.info({ signal }, 'shutting down: finishing in-flight requests')
    installer?.stop()
    stopDrift()
    untaint?.stop()
    await tunPlugin?.stop()
    // Stop accepting; in-flight requests finish (close waits for open connections).
    await new Promise<void>((resolve) => cni.close(() => resolve()))
    await health.close()
    await pods.stop()
    snapshot.flush()
    if (await shouldUninstall(f, kube, log)) for (const line of uninstall({ ...f, snapshot: snapshotPath(f) })) log.info(line)
    else log.info('leaving the plugin installed (upgrade or restart)')
    rmSync(f.socket, { force: true })
    process.exit(0)
  }
  process.once('SIGTERM', () => void shutdown('SIGTERM'))
  process.once('SIGINT', () => void shutdown('SIGINT'))
}

/** Uninstall only when asked to, or when our DaemonSet is gone or going: never on upgrade. */
async function shouldUninstall(f: AgentFlags, kube: KubeClient, log: Logger): Promise<boolean> {
  if (f.uninstallOnExit) return true
  if (!f.daemonSet || !f.install) return false
  try {
    const ds = await kube.json<{ metadata?: { deletionTimestamp?: string } }>('GET', `/apis/apps/v1/namespaces/${seg(f.daemonSet.namespace)}/daemonsets/${seg(f.daemonSet.name)}`)
    return ds.metadata?.deletionTimestamp !== undefined
  } catch (e) {
    // 404: the DaemonSet is gone. 401/403: our ServiceAccount or RBAC is gone, which is how a
    // `kubectl delete -k`, `skaffold delete` or a prune (rendered order) looks from here.
    // Leaving the plugin installed then would make every ADD on the node fail.
    const code = e instanceof ApiError ? e.status : undefined
    if (code === 404 || code === 401 || code === 403) {
      log.info({ status: code }, 'the DaemonSet is gone or our credentials are revoked: uninstalling')
      return true
    }
    log.warn({ err: String(e) }, 'cannot tell uninstall from upgrade; leaving the plugin installed')
    return false
  }
}

async function main(): Promise<void> {
  let flags: AgentFlags
  try {
    flags = parseFlags(process.argv.slice(2), process.env)
  } catch (e) {
    if (e instanceof HelpRequested) { process.stdout.write(USAGE); process.exit(0) }
    process.stderr.write(`${(e as Error).message}\n\n${USAGE}`)
    process.exit(2)
  }
  if (flags.command === 'uninstall') {
    for (const line of uninstall({ ...flags, snapshot: snapshotPath(flags) })) process.stderr.write(`${line}\n`)
    return
  }
  await run(flags)
}

main().catch((e: unknown) => {
  process.stderr.write(`ziti-cni-agent: ${(e as Error).stack ?? e}\n`)
  process.exit(1)
})
