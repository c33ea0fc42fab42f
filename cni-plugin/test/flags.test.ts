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
