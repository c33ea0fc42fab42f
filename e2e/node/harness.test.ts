// The harness's pure parts: the kubelet's pod -> CRI mapping, the managed hosts file, the
// containerd config, and the CRI proto's field numbers (a wrong number makes containerd read
// another field than we mean, silently).
import t from 'tap'
import { loadSync } from '@grpc/proto-loader'
import { fileURLToPath } from 'node:url'
import type { V1Pod } from '@kubernetes/client-node'
import { containerConfig, DEFAULT_MASKED_PATHS, expand, hostsFile, quantityBytes, sandboxConfig } from './lib/kubelet.ts'
import { containerdConfig } from './lib/containerd.ts'

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
