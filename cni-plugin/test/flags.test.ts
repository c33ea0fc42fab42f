import t from 'tap'
import { parseFlags, FlagError, HelpRequested } from '../src/agent/flags.ts'

t.test('defaults match the DaemonSet mounts', async (t) => {
  const f = parseFlags([], { NODE_NAME: 'n1' })
  t.equal(f.nodeName, 'n1')
  t.equal(f.socket, '/var/run/ziti-cni/agent.sock')
  t.equal(f.cniConfDir, '/etc/cni/net.d')
  t.same(f.healthAddr, { host: '127.0.0.1', port: 9107 })
  t.equal(f.install, true)
})

t.test('bad flags are specific errors', async (t) => {
  t.throws(() => parseFlags([], {}), new FlagError('--node-name (or env NODE_NAME) is required'))
  t.throws(() => parseFlags(['--node-name', 'n', '--health-addr', 'x'], {}), /--health-addr: "x" is not HOST:PORT/)
  t.throws(() => parseFlags(['--node-name', 'n', '--lookup-deadline', '20'], {}), /must be shorter than --plugin-timeout/)
  t.throws(() => parseFlags(['--node-name', 'n', '--frob'], {}), /Unknown option '--frob'/)
  t.throws(() => parseFlags(['--node-name', 'n', '--log-level', 'loud'], {}), /unknown level "loud"/)
  t.equal(parseFlags(['uninstall'], {}).command, 'uninstall', 'uninstall needs no node name')
  t.throws(() => parseFlags(['--repair', 'fix'], { NODE_NAME: 'n' }), /--repair: "fix" is not off or delete/)
  t.throws(() => parseFlags(['--daemonset', 'x'], { NODE_NAME: 'n' }), /--daemonset: "x" is not NAMESPACE\/NAME/)
  t.throws(() => parseFlags(['--help'], {}), HelpRequested)
})

t.test('the plugin kubeconfig follows the CNI conf dir (k3s, MicroK8s and OpenShift keep it elsewhere)', async (t) => {
  t.equal(parseFlags([], { NODE_NAME: 'n1' }).pluginKubeconfig, '/etc/cni/net.d/ziti-cni.d/ziti-cni.kubeconfig')
  t.equal(parseFlags(['--cni-conf-dir=/var/lib/rancher/k3s/agent/etc/cni/net.d'], { NODE_NAME: 'n1' }).pluginKubeconfig, '/var/lib/rancher/k3s/agent/etc/cni/net.d/ziti-cni.d/ziti-cni.kubeconfig')
})

t.test('the tun device plugin: off by default, its flags need it, and are checked', async (t) => {
  t.equal(parseFlags([], { NODE_NAME: 'n1' }).tunDevicePlugin, undefined)
  t.same(parseFlags(['--tun-device-plugin'], { NODE_NAME: 'n1' }).tunDevicePlugin, { dir: '/var/lib/kubelet/device-plugins', resource: 'tun.openziti.io/tun', node: '/var/run/ziti-cni/dev/net-tun', uid: 2171, gid: 2171, devices: 110 })
  t.throws(() => parseFlags(['--tun-owner=1:1'], { NODE_NAME: 'n1' }), /--tun-owner needs --tun-device-plugin/)
  t.throws(() => parseFlags(['--tun-device-plugin', '--tun-owner=0:0'], { NODE_NAME: 'n1' }), /--tun-owner: "0:0" is not UID:GID \(non-root\)/)
  t.throws(() => parseFlags(['--tun-device-plugin', '--tun-devices=0'], { NODE_NAME: 'n1' }), /--tun-devices must be an integer in 1-10000/)
  t.throws(() => parseFlags(['--tun-device-plugin', '--tun-resource=tun'], { NODE_NAME: 'n1' }), /is not an extended resource name/)
})
