// Why the admission rules exist, shown on containerd + runc: what the kernel lets a root app
// container with the runtime's default capabilities (all Pod Security "baseline" asks) do to
// the sidecar, in pods stored *past* the webhook (as if it had admitted them); then the real
// webhook refusing the same pods. The product is not weakened for the demonstration: these
// pods never go through admission.
import t from 'tap'
import type { V1Pod } from '@kubernetes/client-node'
import { rootOnly } from '../../shared/testkit/root.ts'
import { TestNode, sweepLeftovers } from './lib/node.ts'
import { IMAGES } from './lib/test-images.ts'
import { appPod } from './lib/pods.ts'
import { startWebhook } from './lib/webhook.ts'

const SECRET = 'identity-key-material-e2e'
const SIDECAR_UID = 2171
// The runtime default of containerd 1.6 (oci/spec.go defaultUnixCaps), as CapEff bits:
// CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8,
// NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18, MKNOD 27, AUDIT_WRITE 29, SETFCAP 31.
const DEFAULT_CAPEFF = '00000000a80425fb'

/** Finds the sidecar's process (by uid) and reads its environment, as whoever runs it. */
const STEAL = `
const fs = require('fs')
const want = Number(process.argv[1])
const pid = fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p)).find((p) => {
  try { return fs.readFileSync('/proc/' + p + '/status', 'utf8').match(/^Uid:\\s+(\\d+)/m)[1] === String(${SIDECAR_UID}) } catch { return false }
})
const read = () => { try { return fs.readFileSync('/proc/' + pid + '/environ', 'utf8').split('\\0').find((e) => e.startsWith('ZITI_IDENTITY_JSON=')) ?? 'no such variable' } catch (e) { return e.code } }
const asRoot = pid ? read() : 'no sidecar process visible'
let become
try { process.setgid(want); process.setuid(want); become = 'uid ' + process.getuid() + ' gid ' + process.getgid() } catch (e) { become = e.code }
console.log(JSON.stringify({ pid: pid ?? null, asRoot, become, asSidecar: pid ? read() : 'no sidecar process visible' }))
`

function pod(name: string, namespace: string, spec: Record<string, unknown>, appSc?: object): { metadata: { name: string; namespace: string; annotations: Record<string, string> }; spec: object } {
  return {
    metadata: { name, namespace, annotations: { 'cni.openziti.io/identity-secret': 'app-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } },
    spec: {
      ...spec,
      containers: [
        // The sidecar's shape: its uid, no capability, the identity in its environment (as the
        // image's entrypoint takes ZITI_IDENTITY_JSON, entrypoint.sh:64-72).
        { name: 'tunnel', image: IMAGES.tools, command: ['sleep', '3600'], env: [{ name: 'ZITI_IDENTITY_JSON', value: SECRET }], securityContext: { runAsUser: SIDECAR_UID, runAsGroup: SIDECAR_UID, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } },
        // The app as a baseline namespace admits it: root, the runtime's default capabilities.
        { name: 'app', image: IMAGES.tools, command: ['sleep', '3600'], ...(appSc ? { securityContext: appSc } : {}) },
      ],
    },
  }
}

t.test('admission red team on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr']), async (t) => {
  sweepLeftovers()
  const node = new TestNode({ id: 17 })
  let webhook: Awaited<ReturnType<typeof startWebhook>> | undefined
  t.teardown(async () => {
    await node.teardown()
    await webhook?.close()
  })
  await node.start()
  webhook = await startWebhook({ validator: { enabled: false } })
  node.api.admission = webhook.admission
  const steal = async (name: string, spec: Record<string, unknown>, appSc?: object) => {
    // Stored as if admitted: the API stand-in's put skips admission, as a webhook that let it through would.
    const stored = node.api.put('pods', { ...pod(name, 'plain', spec, appSc), spec: { ...pod(name, 'plain', spec, appSc).spec, nodeName: 'e2e-node' } }) as V1Pod
    const running = await node.runPod(stored)
    const caps = await node.exec(running, 'app', ['grep', '-E', '^CapEff:', '/proc/self/status'])
    const r = await node.exec(running, 'app', ['node', '-e', STEAL, String(SIDECAR_UID)])
    await node.removePod(running)
    return { capEff: caps.stdout.trim().split(/\s+/)[1], ...JSON.parse(r.stdout) as { pid: string | null; asRoot: string; become: string; asSidecar: string } }
  }

  await t.test('shareProcessNamespace, were it admitted: root with default caps becomes the sidecar and reads its identity', async (t) => {
    const r = await steal('shared-pid', { shareProcessNamespace: true })
    t.equal(r.capEff, DEFAULT_CAPEFF, 'a root app holds the runtime default set (measured)')
    t.ok(r.pid, 'the sidecar\'s process is visible across the shared PID namespace')
    t.equal(r.asRoot, 'EACCES', 'as root without SYS_PTRACE, /proc/<pid>/environ of another uid is refused (ptrace_may_access)')
    t.equal(r.become, `uid ${SIDECAR_UID} gid ${SIDECAR_UID}`, 'but CAP_SETUID/CAP_SETGID make it the sidecar\'s uid and gid')
    t.equal(r.asSidecar, `ZITI_IDENTITY_JSON=${SECRET}`, 'and then the identity is its to read')
  })

  await t.test('without a shared PID namespace: the identity is out of sight, but the sidecar\'s uid is still one setuid away', async (t) => {
    const r = await steal('own-pid', {})
    t.equal(r.pid, null, 'no sidecar process visible')
    t.equal(r.become, `uid ${SIDECAR_UID} gid ${SIDECAR_UID}`, 'setuid(2171) works: traffic from it is never intercepted (why SETUID/SETGID must be dropped)')
  })

  await t.test('dropping the refused capabilities (what the webhook asks) takes that away', async (t) => {
    const r = await steal('dropped', { shareProcessNamespace: true }, { allowPrivilegeEscalation: false, capabilities: { drop: ['SETUID', 'SETGID', 'NET_RAW', 'MKNOD'] } })
    t.equal(r.become, 'EPERM', 'setuid/setgid: EPERM')
    t.equal(r.asSidecar, 'EACCES', 'and the environment stays unreadable')
  })

  await t.test('an injected pod: the identity file the sidecar writes is 0600, its listeners its own', async (t) => {
    await node.createSecret('apps', 'web-identity', { 'identity.json': JSON.stringify({ ztAPI: 'https://controller.ziti.invalid:1280', id: { cert: 'pem:x', key: 'pem:x', ca: 'pem:x' }, standinDialable: ['postgres'] }) })
    const running = await node.runPod(await node.createPod(appPod('web', 'apps', { 'cni.openziti.io/identity-secret': 'web-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' })))
    const ls = await node.exec(running, 'ziti-tunnel', ['ls', '-ln', '/netfoundry/ziti-cni.json'])
    t.match(ls.stdout, new RegExp(`^-rw------- +1 ${SIDECAR_UID} +${SIDECAR_UID} `), 'written under umask 077 by the entrypoint, owned by the sidecar')
    const probe = running.pod.spec!.initContainers!.find((c) => c.name === 'ziti-tunnel')!.livenessProbe!.exec!.command!
    t.equal((await node.exec(running, 'ziti-tunnel', probe)).code, 0, 'the liveness probe passes on the sidecar\'s own listener')
    await node.removePod(running)
  })

  await t.test('the webhook refuses these pods, naming the field and the rule', async (t) => {
    const shared = await node.createPod(pod('shared-pid', 'apps', { shareProcessNamespace: true }) as never).then(() => undefined, (e: Error) => e)
    t.match(shared?.message, /ziti-cni: spec\.shareProcessNamespace: must not be true in an injected pod: another container could read the sidecar's identity through \/proc/)
    const baseline = await node.createPod(pod('baseline', 'apps', {}) as never).then(() => undefined, (e: Error) => e)
    t.match(baseline?.message, /ziti-cni: spec\.containers\[0\]\.securityContext\.runAsUser: container "tunnel" runs as 2171/, 'a container as the sidecar\'s uid')
    const rootApp = await node.createPod({ metadata: { name: 'root-app', namespace: 'apps', annotations: { 'cni.openziti.io/identity-secret': 'app-identity', 'cni.openziti.io/services': 'pg.ziti:5432=postgres' } }, spec: { containers: [{ name: 'app', image: IMAGES.tools, command: ['sleep', '3600'] }] } } as never).then(() => undefined, (e: Error) => e)
    t.match(rootApp?.message, /ziti-cni: spec\.containers\[0\]\.securityContext\.capabilities: container "app" can hold SETUID, SETGID, NET_RAW, MKNOD/, 'a root app with the runtime defaults')
  })
})
