// The harness's pure parts: the kubelet's pod -> CRI mapping, the managed hosts file, the
// containerd config, the restart back-off, and the CRI proto's field numbers (a wrong number
// makes containerd read another field than we mean, silently). Then, on containerd + runc, the
// kubelet harness behaving like the kubelet: devices allocated at admission, failed init
// containers and exited sidecars restarted with back-off (restartCount, lastState,
// CrashLoopBackOff in the pod status), one startup probe per container, and the agent's repair
// acting on a pod whose status only has the validator's failure as lastState.
import t from 'tap'
import { loadSync } from '@grpc/proto-loader'
import { fileURLToPath } from 'node:url'
import type { V1Pod } from '@kubernetes/client-node'
import { containerConfig, CONTAINER_BACKOFF, DEFAULT_MASKED_PATHS, expand, hostsFile, PodAdmissionError, PodStartError, quantityBytes, restartDelay, sandboxConfig } from './lib/kubelet.ts'
import { containerdConfig, NETNS_LIST } from './lib/containerd.ts'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ANNOTATION_INTERCEPTION, EXIT_NOT_INTERCEPTED, VALIDATOR_NAME } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { AGENT_BUNDLE, TestNode, sweepLeftovers } from './lib/node.ts'
import { IMAGES } from './lib/test-images.ts'
import { spawnSync } from 'node:child_process'

const pod: V1Pod = {
  metadata: { name: 'web', namespace: 'apps', uid: 'u-1', labels: { app: 'web' }, annotations: { a: 'b' } },
  spec: {
    securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' }, sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }] },
    hostAliases: [{ ip: '100.64.0.2', hostnames: ['pg.ziti', 'db.ziti'] }],
    containers: [{ name: 'app', image: 'x/app:1', args: ['--host=$(HOST)', '$$(HOST)'], securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'], add: ['NET_RAW'] } }, resources: { limits: { memory: '256Mi' } } }],
  },
}

t.test('sandbox config: metadata, DNS for ClusterFirst, pod security context', async (t) => {
  const c = sandboxConfig(pod, { servers: ['10.0.0.10'], domain: 'cluster.local' }, '/logs')
  t.same(c.metadata, { name: 'web', uid: 'u-1', namespace: 'apps', attempt: 0 })
  t.same(c.dns_config, { servers: ['10.0.0.10'], searches: ['apps.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: ['ndots:5'] })
  t.equal(c.labels!['io.kubernetes.pod.uid'], 'u-1')
  t.same(c.linux!.security_context!.namespace_options, { network: 'POD', pid: 'CONTAINER', ipc: 'POD' })
  t.same(c.linux!.security_context!.run_as_user, { value: 1000 })
  t.same(c.linux!.sysctls, { 'net.ipv4.ip_unprivileged_port_start': '0' })
  const none = sandboxConfig({ ...pod, spec: { ...pod.spec!, dnsPolicy: 'None', dnsConfig: { nameservers: ['100.64.0.2'], searches: ['x'], options: [{ name: 'ndots', value: '1' }] } } }, { servers: ['10.0.0.10'], domain: 'cluster.local' }, '/logs')
  t.same(none.dns_config, { servers: ['100.64.0.2'], searches: ['x'], options: ['ndots:1'] }, 'dnsPolicy None uses the pod\'s dnsConfig only')
})

t.test('container config: what a kubelet asks of the runtime, and nothing more', async (t) => {
  const c = containerConfig(pod, pod.spec!.containers[0]!, { env: [{ key: 'HOST', value: 'db' }], mounts: [], attempt: 2, logPath: 'app/2.log' })
  const sc = c.linux!.security_context!
  t.same(c.args, ['--host=db', '$(HOST)'], '$(VAR) expanded, $$ escapes')
  t.same(sc.capabilities, { add_capabilities: ['NET_RAW'], drop_capabilities: ['ALL'] }, 'add/drop passed as asked; no ambient set, ever')
  t.equal(sc.no_new_privs, true, 'allowPrivilegeEscalation: false -> no_new_privs')
  t.same(sc.run_as_user, { value: 1000 }, 'the pod-level uid applies to the container')
  t.same(sc.seccomp, { profile_type: 'RuntimeDefault' })
  t.same(sc.masked_paths, DEFAULT_MASKED_PATHS)
  t.equal(c.linux!.resources!.memory_limit_in_bytes, 256 * 1024 * 1024)
  const loose = containerConfig({ metadata: pod.metadata, spec: { containers: [{ name: 'c', image: 'x/c:1' }] } }, { name: 'c', image: 'x/c:1' }, { env: [], mounts: [], attempt: 0, logPath: 'c/0.log' })
  t.equal(loose.linux!.security_context!.no_new_privs, false, 'no allowPrivilegeEscalation: no no_new_privs')
  t.same(loose.linux!.security_context!.seccomp, { profile_type: 'Unconfined' }, 'no profile anywhere: Unconfined, as the kubelet defaults')
  t.notOk('run_as_user' in loose.linux!.security_context!, 'no uid asked: the image decides')
})

t.test('helpers', async (t) => {
  t.equal(quantityBytes('16Mi'), 16 * 1024 * 1024)
  t.throws(() => quantityBytes('1.5Gi'))
  t.equal(expand('$(A)-$(B)', new Map([['A', '1']])), '1-$(B)', 'unknown variables stay as written')
  t.equal(hostsFile(pod, ['10.1.0.5']), '# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n10.1.0.5\tweb\n\n# Entries added by HostAliases.\n100.64.0.2\tpg.ziti\tdb.ziti\n')
})

t.test('containerd config: private dirs and sockets, the CNI dirs given, never the host\'s', async (t) => {
  const c = containerdConfig({ dir: '/tmp/x/ctd', cniBinDir: '/tmp/x/bin', cniConfDir: '/tmp/x/net.d', sandboxImage: 'localhost/p:1' })
  t.match(c, /^root = "\/tmp\/x\/ctd\/root"$/m)
  t.match(c, /^state = "\/tmp\/x\/ctd\/state"$/m)
  t.match(c, /address = "\/tmp\/x\/ctd\/containerd\.sock"/)
  t.match(c, /bin_dir = "\/tmp\/x\/bin"\n\s+conf_dir = "\/tmp\/x\/net\.d"/)
  t.match(c, /sandbox_image = "localhost\/p:1"/)
  t.notMatch(c, /\/etc\/cni|\/opt\/cni|\/var\/lib\/containerd|\/run\/containerd\/containerd\.sock/)
})

t.test('CRI proto field numbers match kubernetes/cri-api pkg/apis/runtime/v1/api.proto', async (t) => {
  const def = loadSync(fileURLToPath(new URL('./cri/runtime-v1.proto', import.meta.url)), { keepCase: true })
  const fields = (msg: string) => Object.fromEntries(((def[`runtime.v1.${msg}`] as { type: { field: Array<{ name: string; number: number }> } }).type.field).map((f) => [f.name, f.number]))
  // Numbers read from cri-api at 791729b (the same as in containerd 1.6's vendored copy).
  t.match(fields('ContainerConfig'), { metadata: 1, image: 2, command: 3, args: 4, working_dir: 5, envs: 6, mounts: 7, devices: 8, labels: 9, annotations: 10, log_path: 11, linux: 15 })
  t.match(fields('LinuxContainerSecurityContext'), { capabilities: 1, privileged: 2, namespace_options: 3, run_as_user: 5, run_as_username: 6, readonly_rootfs: 7, supplemental_groups: 8, no_new_privs: 11, run_as_group: 12, masked_paths: 13, readonly_paths: 14, seccomp: 15 })
  t.match(fields('Capability'), { add_capabilities: 1, drop_capabilities: 2, add_ambient_capabilities: 3 })
  t.match(fields('PodSandboxConfig'), { metadata: 1, hostname: 2, log_directory: 3, dns_config: 4, labels: 6, annotations: 7, linux: 8 })
  t.match(fields('LinuxSandboxSecurityContext'), { namespace_options: 1, run_as_user: 3, readonly_rootfs: 4, supplemental_groups: 5, privileged: 6, run_as_group: 8, seccomp: 9 })
  t.match(fields('ExecSyncRequest'), { container_id: 1, cmd: 2, timeout: 3 })
  t.match(fields('ContainerStatus'), { id: 1, metadata: 2, state: 3, created_at: 4, started_at: 5, finished_at: 6, exit_code: 7, reason: 10, message: 11, log_path: 15 })
  t.match(fields('Device'), { container_path: 1, host_path: 2, permissions: 3 })
})

t.test('restart back-off: the first restart at once, then 10 s doubling to 5 min (kubelet.go)', async (t) => {
  t.same([0, 1, 2, 3, 4, 5, 6, 9].map((n) => restartDelay(n)), [0, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000])
  t.same(CONTAINER_BACKOFF, { initialMs: 10_000, maxMs: 300_000 })
})

type Status = { phase?: string; initContainerStatuses?: K8sStatus[]; containerStatuses?: K8sStatus[] }
type K8sStatus = { name: string; restartCount: number; state: { running?: object; waiting?: { reason: string; message: string }; terminated?: { exitCode: number; reason: string } }; lastState: { terminated?: { exitCode: number } } }

const SC = { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' } }
const CSC = { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }
const RESOURCE = 'tun.openziti.io/tun'

async function until(what: string, cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

t.test('the kubelet harness on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 7, tunDevicePlugin: true })
  t.teardown(() => node.teardown())
  await node.start()
  await node.deviceManager!.ready(RESOURCE)
  // Every status the kubelet's status manager writes, in order.
  const seen = new Map<string, Status[]>()
  const report = node.kubelet.opts.reportStatus!
  node.kubelet.opts.reportStatus = (pod, status) => {
    seen.set(pod.metadata!.name!, [...(seen.get(pod.metadata!.name!) ?? []), JSON.parse(JSON.stringify(status)) as Status])
    report(pod, status)
  }
  const stored = (name: string, ns = 'plain') => node.api.get('pods', ns, name) as unknown as { status?: Status } | undefined
  // Shorter than the kubelet's 10 s so the suite stays quick; the rule is the same.
  node.kubelet.opts.restartBackoff = { initialMs: 2000, maxMs: 8000 }
  const pod = (name: string, spec: object) => node.createPod({ metadata: { name, namespace: 'plain' }, spec: { securityContext: SC, volumes: [{ name: 'w', emptyDir: {} }], ...spec } })

  await t.test('a failing init container is restarted with back-off until it succeeds: restartCount, lastState, CrashLoopBackOff', async (t) => {
    const p = await pod('init-flaky', {
      initContainers: [{ name: 'flaky', image: IMAGES.tools, command: ['sh', '-c', 'n=$(cat /w/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /w/n; echo attempt $n; [ $n -ge 3 ] || exit 7'], volumeMounts: [{ name: 'w', mountPath: '/w' }], securityContext: CSC }],
      containers: [{ name: 'app', image: IMAGES.tools, securityContext: CSC }],
    })
    const t0 = Date.now()
    const rp = await node.runPod(p, { until: 'running', deadlineMs: 60_000 })
    const took = Date.now() - t0
    const init = stored('init-flaky')!.status!.initContainerStatuses![0]!
    t.equal(init.restartCount, 2, 'two restarts')
    t.equal(init.state.terminated?.exitCode, 0, 'the third attempt completed')
    t.equal(init.lastState.terminated?.exitCode, 7, 'lastState is the failed attempt before it')
    t.equal(stored('init-flaky')!.status!.phase, 'Running')
    const history = seen.get('init-flaky')!.map((s) => s.initContainerStatuses?.[0])
    const loop = history.find((s) => s?.state.waiting?.reason === 'CrashLoopBackOff')
    t.ok(loop, 'CrashLoopBackOff was reported between attempts')
    t.match(loop?.state.waiting?.message, /^back-off 2s restarting failed container=flaky pod=init-flaky_plain\(/)
    t.equal(loop?.lastState.terminated?.exitCode, 7, 'with the failure as lastState')
    t.ok(took >= 2000, `the second restart waited the back-off (${took} ms in all)`)
    t.match(node.kubelet.logs(rp, 'flaky'), /attempt 3/, 'each attempt has its own log')
    t.match(node.kubelet.logs(rp, 'flaky', 0), /attempt 1/)
    await node.removePod(rp)
  })

  await t.test('a native sidecar that exits is restarted with back-off; the pod keeps running', async (t) => {
    const p = await pod('sidecar-exits', {
      initContainers: [{ name: 'side', image: IMAGES.tools, restartPolicy: 'Always', command: ['sh', '-c', 'sleep 1; exit 3'], securityContext: CSC }],
      containers: [{ name: 'app', image: IMAGES.tools, securityContext: CSC }],
    })
    const rp = await node.runPod(p)
    t.ok(rp.containers.has('app'), 'the sidecar has no startup probe: the app starts after it starts')
    await until('the sidecar restarted twice', () => (stored('sidecar-exits')?.status?.initContainerStatuses?.[0]?.restartCount ?? 0) >= 2, 20_000)
    const side = stored('sidecar-exits')!.status!.initContainerStatuses![0]!
    t.equal(side.lastState.terminated?.exitCode, 3, 'lastState: it exited with 3')
    t.equal(stored('sidecar-exits')!.status!.phase, 'Running', 'the pod keeps running')
    await node.removePod(rp)
  })

  await t.test('app containers that exit are restarted by restartPolicy: Always with back-off, OnFailure not after 0, Never not at all', async (t) => {
    const always = await node.runPod(await pod('app-exits', { containers: [{ name: 'app', image: IMAGES.tools, command: ['sh', '-c', 'sleep 1; exit 4'], securityContext: CSC }] }))
    const onFailure = await node.runPod(await pod('app-done', { restartPolicy: 'OnFailure', containers: [{ name: 'app', image: IMAGES.tools, command: ['sh', '-c', 'sleep 1; exit 0'], securityContext: CSC }] }))
    const never = await node.runPod(await pod('app-fails', { restartPolicy: 'Never', containers: [{ name: 'app', image: IMAGES.tools, command: ['sh', '-c', 'sleep 1; exit 3'], securityContext: CSC }] }))
    await until('the Always app restarted twice', () => (stored('app-exits')?.status?.containerStatuses?.[0]?.restartCount ?? 0) >= 2, 30_000)
    const app = stored('app-exits')!.status!.containerStatuses![0]!
    t.equal(app.lastState.terminated?.exitCode, 4, 'lastState: it exited with 4')
    t.equal(stored('app-exits')!.status!.phase, 'Running', 'the pod keeps running')
    const loop = seen.get('app-exits')!.map((s) => s.containerStatuses?.[0]).find((s) => s?.state.waiting?.reason === 'CrashLoopBackOff')
    t.match(loop?.state.waiting?.message, /^back-off 2s restarting failed container=app pod=app-exits_plain\(/, 'CrashLoopBackOff between the restarts, with the configured back-off')
    await until('OnFailure: Succeeded', () => stored('app-done')?.status?.phase === 'Succeeded', 20_000)
    await until('Never: Failed', () => stored('app-fails')?.status?.phase === 'Failed', 20_000)
    const done = stored('app-done')!.status!.containerStatuses![0]!
    const failed = stored('app-fails')!.status!.containerStatuses![0]!
    t.match([done.restartCount, done.state.terminated?.exitCode, done.state.terminated?.reason], [0, 0, 'Completed'], 'OnFailure after exit 0: terminated, not restarted')
    t.match([failed.restartCount, failed.state.terminated?.exitCode, failed.state.terminated?.reason], [0, 3, 'Error'], 'Never after exit 3: terminated, not restarted')
    for (const rp of [always, onFailure, never]) await node.removePod(rp)
  })

  await t.test('a failed sandbox (CNI ADD closed while the agent is down) is retried after the pod worker\'s back-off', async (t) => {
    await node.stopAgent()
    node.kubelet.opts.syncBackoffMs = 1000
    t.teardown(() => { node.kubelet.opts.syncBackoffMs = undefined })
    const intent = JSON.stringify({ v: 1, mode: 'proxy', uid: 2171, dnat: [{ dst: '100.64.0.2', proto: 'tcp', port: 5432, to: 15100 }], fence: [15100] })
    const p = await node.createPod({ metadata: { name: 'retried', namespace: 'apps', annotations: { [ANNOTATION_INTERCEPTION]: intent } }, spec: { securityContext: SC, containers: [{ name: 'app', image: IMAGES.tools, securityContext: CSC }] } })
    const before = node.kubelet.sandboxRetries
    const failFast = await node.runPod(p).then(() => undefined, (e: Error) => e)
    t.match(failFast?.message, /failed \(add\)/, 'first-failure mode: the failed ADD is the answer')
    const running = node.runPod(p, { until: 'running', deadlineMs: 60_000 })
    await until('two retries', () => node.kubelet.sandboxRetries >= before + 2, 20_000)
    await node.startAgent()
    const rp = await running
    t.ok(node.kubelet.sandboxRetries >= before + 2, `retried ${node.kubelet.sandboxRetries - before} times, then ran`)
    t.ok(node.hasTable(rp), 'and the agent programmed it')
    await node.removePod(rp)
  })

  await t.test('app containers start together; each waits only on its own startup probe', async (t) => {
    const p = await pod('probes', {
      containers: [
        { name: 'slow', image: IMAGES.tools, command: ['sh', '-c', 'sleep 3; echo > /w/ready; exec sleep 1000'], volumeMounts: [{ name: 'w', mountPath: '/w' }], securityContext: CSC, startupProbe: { exec: { command: ['test', '-f', '/w/ready'] }, periodSeconds: 1, failureThreshold: 20 } },
        { name: 'fast', image: IMAGES.tools, securityContext: CSC },
      ],
    })
    const rp = await node.runPod(p)
    const slow = await node.containerd.cri.containerStatus(rp.containers.get('slow')!)
    const fast = await node.containerd.cri.containerStatus(rp.containers.get('fast')!)
    const gapMs = Math.abs(fast.started_at - slow.started_at) / 1e6
    t.ok(gapMs < 2000, `'fast' started ${Math.round(gapMs)} ms from 'slow', not after slow's 3 s probe`)
    await node.removePod(rp)
  })

  await t.test('devices are allocated at admission: none free, no sandbox and no CNI ADD; freed with the pod', async (t) => {
    const hog = { podUid: 'hog', container: 'c' }
    await node.deviceManager!.allocate(RESOURCE, node.deviceManager!.capacity(RESOURCE).healthy, hog)
    const netnsList = join(node.containerd.dirs.dir, NETNS_LIST)
    const before = readFileSync(netnsList, 'utf8')
    const asks = { resources: { limits: { [RESOURCE]: '1' } } }
    const p = await pod('wants-tun', { containers: [{ name: 'app', image: IMAGES.tools, securityContext: CSC, ...asks }] })
    const err = await node.runPod(p).then(() => undefined, (e: Error) => e)
    t.type(err, PodAdmissionError)
    t.match(err?.message, /OutOftun\.openziti\.io\/tun: 0 of 1 available/)
    t.equal(readFileSync(netnsList, 'utf8'), before, 'no sandbox was made (no netns, so no CNI ADD)')
    t.match(stored('wants-tun')!.status, { phase: 'Failed', reason: 'UnexpectedAdmissionError' })
    node.deviceManager!.freePod('hog')
    node.api.delete('pods', 'plain', 'wants-tun')
    const again = await node.runPod(await pod('wants-tun', { containers: [{ name: 'app', image: IMAGES.tools, securityContext: CSC, ...asks }] }))
    t.ok(node.deviceManager!.podsWithDevices().includes(again.pod.metadata!.uid!), 'admitted: the pod holds a device')
    t.ok(readFileSync(netnsList, 'utf8') !== before, 'and has its sandbox')
    await node.removePod(again)
    t.notOk(node.deviceManager!.podsWithDevices().includes(again.pod.metadata!.uid!), 'removing the pod frees its device')
  })

  await t.test('repair acts on lastState: a validator crash-looping while the agent was away', async (t) => {
    // The agent is gone and so is ziti-cni from the chain (a node boot race, as scenario 12).
    await node.stopAgent()
    const un = spawnSync(process.execPath, [AGENT_BUNDLE, 'uninstall', '--cni-bin-dir', node.binDir, '--cni-conf-dir', node.confDir, '--plugin-kubeconfig', node.pluginKubeconfig], { encoding: 'utf8' })
    t.equal(un.status, 0, un.stderr)
    // A long back-off so the status the agent finds is CrashLoopBackOff, not a fresh exit.
    node.kubelet.opts.restartBackoff = { initialMs: 120_000, maxMs: 120_000 }
    const intent = JSON.stringify({ v: 1, mode: 'proxy', uid: 2171, dnat: [{ dst: '100.64.0.2', proto: 'tcp', port: 5432, to: 15100 }], fence: [15100] })
    const p = await node.createPod({ metadata: { name: 'crashloop', namespace: 'apps', annotations: { [ANNOTATION_INTERCEPTION]: intent } }, spec: {
      securityContext: SC,
      // What the validator does when the redirect is missing: exit EXIT_NOT_INTERCEPTED.
      initContainers: [{ name: VALIDATOR_NAME, image: IMAGES.tools, command: ['sh', '-c', `echo traffic is NOT intercepted; exit ${EXIT_NOT_INTERCEPTED}`], securityContext: CSC }],
      containers: [{ name: 'app', image: IMAGES.tools, securityContext: CSC }],
    } })
    const first = await node.runPod(p).then(() => undefined, (e: unknown) => e as PodStartError)
    t.type(first, PodStartError)
    await until('CrashLoopBackOff', () => stored('crashloop', 'apps')?.status?.initContainerStatuses?.[0]?.state.waiting?.reason === 'CrashLoopBackOff', 20_000)
    const status = stored('crashloop', 'apps')!.status!.initContainerStatuses![0]!
    t.notOk(status.state.terminated, 'the current state is waiting: only lastState holds the exit')
    t.equal(status.lastState.terminated?.exitCode, EXIT_NOT_INTERCEPTED)
    t.equal(status.restartCount, 1)
    await node.startAgent()
    await until('the agent deleted the pod', () => !node.api.get('pods', 'apps', 'crashloop'), 20_000)
    t.pass('the agent deleted the unintercepted pod from its lastState')
    t.match(await node.metrics(), /ziti_cni_repairs_total\{action="deleted"\} 1/)
    const ev = node.api.eventsApi.events.find((e) => e.involvedObject.name === 'crashloop')
    t.match(ev, { reason: 'DeletedNotIntercepted', type: 'Warning', involvedObject: { kind: 'Pod', namespace: 'apps', uid: p.metadata.uid }, reportingComponent: 'ziti-cni-agent' }, 'and said so in an Event on the pod')
    await node.removePod(first!.pod)
  })
})
