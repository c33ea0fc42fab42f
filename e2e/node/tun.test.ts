// tun mode on the real-runtime tier: admission (mode tun) -> containerd's CNI ADD creates the
// device in the pod netns, owned by the sidecar -> the kubelet asks the agent's device plugin
// (real gRPC) for tun.openziti.io/tun and gives the container /dev/net/tun as a CRI device ->
// upstream's ziti-edge-tunnel v1.18.2 (built from ../shared/third-party/ziti-edge-tunnel), started
// by upstream's docker-entrypoint.sh with the attach shim preloaded, attaches with no capability,
// logs in to the fake controller and connects to the edge-router stand-in -> the app resolves a
// Ziti service name through the tunneler's DNS inside the device and exchanges TCP and UDP with
// the service behind the router; non-Ziti names still resolve.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { request } from 'node:https'
import type { V1Pod } from '@kubernetes/client-node'
import { parseIntent } from '@ziti-cni/shared'
import { rootOnly } from '../../shared/testkit/root.ts'
import { app, appPod, injected } from './lib/pods.ts'
import { libcniFor } from './lib/cni-exec.ts'
import { startTunWorld, TUN_RESOURCE as RESOURCE } from './lib/tun-world.ts'
import { restrictedViolations } from '../../webhook/test/pss-restricted.ts'

t.test('tun mode on containerd + runc', rootOnly(['nft', 'ip', 'nsenter', 'containerd', 'runc', 'ctr', 'gcc']), async (t) => {
  const { node, infra, ctrl, router } = await startTunWorld(t, { id: 5, identity: 'tunapp-pod', attribute: 'tunapp', secret: 'tun-identity' })
  const pod = await node.createPod(appPod('tunapp', 'apps', {
    'cni.openziti.io/identity-secret': 'tun-identity',
    'cni.openziti.io/mode': 'tun',
    'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, 10.99.0.0/16',
  }))
  const rp = await node.runPod(pod)

  await t.test('admission: restricted, the device from a resource limit, the sidecar pinned to the tun owner', async (t) => {
    t.same(restrictedViolations(pod as V1Pod), [], 'Pod Security "restricted" admits it')
    const sidecar = injected(pod, 'ziti-tunnel')
    t.equal(sidecar.resources?.limits?.[RESOURCE], '1')
    t.same([sidecar.securityContext?.runAsUser, sidecar.securityContext?.runAsGroup], [2171, 2171])
    t.same(sidecar.securityContext?.capabilities, { drop: ['ALL'] })
    const intent = parseIntent(pod.metadata.annotations['cni.openziti.io/interception']!)
    t.same(intent, { v: 1, mode: 'tun', uid: 2171, dev: 'ziti0', addr: '100.64.0.1/10', routes: ['10.99.0.0/16'] })
    t.same(pod.spec?.dnsConfig?.nameservers, ['100.64.0.2'], 'the tunneler\'s resolver alone (tun.dns: forward): musl has no second server to race')
    t.same(sidecar.args?.slice(-2), ['--dns-upstream', infra.ip], 'the tunneler forwards other names to the cluster DNS')
  })

  await t.test('the CNI made the device in the pod netns, and the sidecar attached with no capability', async (t) => {
    const link = node.inNetns(rp, ['ip', '-d', 'link', 'show', 'dev', 'ziti0']).stdout
    t.match(link, /tun type tun pi off .*user 2171 /, 'a tun owned by the sidecar')
    t.notMatch(link, /tun type tun .*\bgroup [0-9]/, '...and by no group (the app could be given its gid)')
    t.notMatch(link, /NO-CARRIER/, 'carrier: the tunneler holds it')
    const log = node.kubelet.logs(rp, 'ziti-tunnel')
    t.match(log, /INFO: running: ziti-edge-tunnel run --identity \/netfoundry\/ziti-cni\.json --dns-ip-range 100\.64\.0\.1\/10/, 'upstream\'s entrypoint wrote the identity and started the tunneler')
    t.match(log, /TUNSETIFF "ziti%d": attaching to the pre-provisioned ziti0/, 'the shim attached upstream\'s template call to the CNI\'s device')
    t.match(log, /route add 100\.64\.0\.0\/10 dev ziti0: already routed into ziti0 by the CNI/, 'its route for the DNS range: already the CNI\'s')
    t.notMatch(log, /failed to open tun device|failed to set interface address|failed to set tun up|on_crash/)
    // PID 1 is upstream's entrypoint (bash); the tunneler is its child.
    const pid = (await node.exec(rp, 'ziti-tunnel', ['sh', '-c', 'for p in /proc/[0-9]*; do [ "$(cat $p/comm)" = ziti-edge-tunne ] && echo ${p#/proc/}; done'])).stdout.trim()
    t.match(pid, /^\d+$/, `the tunneler runs (pid ${pid})`)
    const status = (await node.exec(rp, 'ziti-tunnel', ['cat', `/proc/${pid}/status`])).stdout
    t.match(status, /^CapPrm:\s+0+$/m, 'sidecar CapPrm 0')
    t.match(status, /^CapEff:\s+0+$/m, 'sidecar CapEff 0')
    t.match(status, /^CapAmb:\s+0+$/m, 'sidecar CapAmb 0')
    t.match(status, /^NoNewPrivs:\s+1$/m)
    t.match(status, /^Uid:\s+2171\s/m)
    const dev = await node.exec(rp, 'ziti-tunnel', ['ls', '-ln', '/dev/net/tun'])
    t.match(dev.stdout, /^crw------- +1 2171 +2171 +10, +200 /, 'the device plugin\'s node: c 10:200, 0600, the sidecar\'s')
    const appDev = await node.exec(rp, 'app', ['ls', '/dev/net/tun'])
    t.not(appDev.code, 0, 'the app container has no /dev/net/tun')
  })

  await t.test('the app resolves a Ziti service name through the tunneler and exchanges TCP and UDP with it', async (t) => {
    const name = await app(node, rp, ['resolve', 'pg.ziti'])
    t.ok(name.answers?.length === 1 && /^100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\./.test(name.answers[0]!) && name.answers[0] !== '100.64.0.1' && name.answers[0] !== '100.64.0.2',
      `pg.ziti resolved by the tunneler inside the device, to an address of its range (${JSON.stringify(name)})`)
    const pg = await app(node, rp, ['tcp', 'pg.ziti', '5432'])
    t.equal(pg.resolved, name.answers?.[0])
    t.equal(pg.reply, 'ziti-service=postgres caller=tunapp-pod', `TCP through the device and the tunneler to the router (${pg.error ?? 'ok'})`)
    const logs = await app(node, rp, ['udp', 'logs.ziti', '514'])
    t.equal(logs.reply, 'ziti-service=logs got=ping', `UDP, reply to a connected socket (${logs.error ?? 'ok'})`)
    const api = await app(node, rp, ['tcp', '10.99.0.7', '443'])
    t.equal(api.reply, 'ziti-service=billing-api caller=tunapp-pod', `an intercept address outside the DNS range, routed by the CNI (${api.error ?? 'ok'})`)
    const vault = await app(node, rp, ['resolve', 'vault.ziti'])
    t.same(vault.answers, ['192.0.2.53'], `vault.ziti (no Dial policy): not the tunneler's, forwarded to the cluster DNS (${vault.error ?? 'ok'})`)
    t.same(router.events.filter((e) => e.kind === 'connect').map((e) => [e.identity, e.service]), [['tunapp-pod', 'postgres'], ['tunapp-pod', 'logs'], ['tunapp-pod', 'billing-api']], 'the router saw one Connect per flow, each with a Dial session of the pod\'s identity')
    t.same(router.events.filter((e) => e.kind === 'data').map((e) => e.bytes), ['ping'], 'the bytes the app sent reached the router')
    const other = await app(node, rp, ['resolve', 'www.example.org'])
    t.same(other.answers, ['192.0.2.53'], 'a non-Ziti name: the tunneler forwards it to the cluster DNS and relays the answer')
    const notAService = await app(node, rp, ['tcp', '100.64.0.9', '80'])
    t.notOk(notAService.ok, `an address that is no service is refused inside the device (${notAService.error})`)
    const direct = await app(node, rp, ['tcp', infra.ip, '8080'])
    t.equal(direct.reply, `direct server=${infra.ip}:8080 peer=${rp.ip}`, 'other traffic is untouched')
  })

  await t.test('enrollment by the real client: a one-time JWT from the controller, then the enrolled identity', async (t) => {
    // The operator's way to a JWT: the management API (ziti edge create identity --jwt-output-file).
    const api = (method: string, path: string, body?: object, session?: string) => new Promise<{ status: number; json: { data?: Record<string, unknown> } }>((resolve, reject) => {
      const req = request(`${ctrl.url}${path}`, { method, ca: ctrl.ca.certPem, headers: { 'content-type': 'application/json', ...(session ? { 'zt-session': session } : {}) } }, (res) => {
        let text = ''
        res.on('data', (d) => { text += d })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text || '{}') }))
      })
      req.on('error', reject)
      req.end(body ? JSON.stringify(body) : undefined)
    })
    ctrl.addAdmin('operator', 'operator-password')
    const login = await api('POST', '/edge/management/v1/authenticate?method=password', { username: 'operator', password: 'operator-password' })
    const token = login.json.data!.token as string
    const created = await api('POST', '/edge/management/v1/identities', { name: 'tunenroll-pod', type: 'Device', isAdmin: false, roleAttributes: ['tunapp'], enrollment: { ott: true } }, token)
    t.equal(created.status, 201)
    const id = created.json.data!.id as string
    const jwt = ((await api('GET', `/edge/management/v1/identities/${id}`, undefined, token)).json.data!.enrollment as { ott: { jwt: string } }).ott.jwt
    await node.createSecret('apps', 'tun-enroll', { 'token.jwt': jwt })
    const epod = await node.createPod(appPod('tunenroll', 'apps', {
      'cni.openziti.io/enrollment-secret': 'tun-enroll',
      'cni.openziti.io/mode': 'tun',
      'cni.openziti.io/intercept-cidrs': '100.64.0.0/10, 10.99.0.0/16',
    }))
    t.same(injected(epod, 'ziti-tunnel').env?.find((e) => e.name === 'ZITI_ENROLL_TOKEN')?.valueFrom?.secretKeyRef, { name: 'tun-enroll', key: 'token.jwt' }, 'the sidecar gets the JWT from the Secret, not the pod spec')
    const erp = await node.runPod(epod)
    const log = node.kubelet.logs(erp, 'ziti-tunnel')
    t.match(log, /INFO: attempting enrollment with ZITI_ENROLL_TOKEN|INFO: enrolling \/netfoundry\/ziti-cni\.jwt/, 'upstream\'s entrypoint enrolls the token (docker-entrypoint.sh, ziti-edge-tunnel enroll)')
    t.ok(ctrl.identities.get(id)?.certFingerprint, 'the controller issued a certificate for the CSR (an EC P-256 key, tlsuv keys.c:717-719)')
    t.notOk(ctrl.identities.get(id)?.enrollment, 'the JWT is spent')
    const enrolled = await node.exec(erp, 'ziti-tunnel', ['cat', '/netfoundry/ziti-cni.json'])
    t.match(enrolled.stdout, /"ztAPI":\s*"https:\/\//, 'the enrolled identity file is in the emptyDir')
    const calls = ctrl.calls.map((c) => `${c.method} ${c.path.split('?')[0]} ${c.status}`)
    t.ok(calls.includes('GET /edge/client/v1/.well-known/est/cacerts 200') && calls.some((c) => /^POST \/edge\/client\/v1\/enroll 200$/.test(c)), 'EST CA bundle, then POST /enroll?method=ott with the CSR (ziti_enroll.c, ziti_ctrl.c:923)')
    const pg = await app(node, erp, ['tcp', 'pg.ziti', '5432'])
    t.equal(pg.reply, 'ziti-service=postgres caller=tunenroll-pod', `the enrolled identity logs in and dials (${pg.error ?? 'ok'})`)
    const again = await api('POST', '/edge/client/v1/enroll?method=ott&token=' + encodeURIComponent(JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()).jti), undefined)
    t.equal(again.status, 400, 'the JWT cannot be enrolled a second time')
    await node.removePod(erp)
  })

  await t.test('the app cannot change the pod\'s network', async (t) => {
    for (const argv of [['ip', 'route', 'del', '10.99.0.0/16'], ['ip', 'link', 'set', 'ziti0', 'down'], ['ip', 'addr', 'add', '100.64.0.9/10', 'dev', 'ziti0']]) {
      const r = await node.exec(rp, 'app', argv)
      t.match(r.stderr, /Operation not permitted/, `${argv.join(' ')}: EPERM`)
    }
  })

  await t.test('CHECK passes, and detects a device that lost its owner or routes', async (t) => {
    // containerd 1.6 never sends CHECK: the executable is called the way libcni would.
    const cni = libcniFor(node, rp, { namespace: 'apps', name: 'tunapp', uid: pod.metadata.uid })
    await cni.check()
    t.pass('CHECK passes on the live pod')
    node.inNetns(rp, ['ip', 'route', 'del', '10.99.0.0/16', 'dev', 'ziti0'])
    const drift = await cni.drift()
    t.equal(drift?.error.code, 104, 'code 104 (drift)')
    t.match(drift?.error.msg, /route 10\.99\.0\.0\/16 dev ziti0 is missing/)
    node.inNetns(rp, ['ip', 'route', 'add', '10.99.0.0/16', 'dev', 'ziti0'])
  })

  await t.test('no tunneler attached: nothing for the Ziti ranges leaves the pod', async (t) => {
    // The kubelet would restart the sidecar at once; hold it as a crash-looping one in back-off.
    node.kubelet.holdRestarts(rp, 'ziti-tunnel')
    // The kubelet's stop: SIGTERM to PID 1 (upstream's entrypoint, which forwards it to the
    // tunneler and waits, docker-entrypoint.sh:21-31), SIGKILL after the grace period.
    const t0 = Date.now()
    await node.containerd.cri.stopContainer(rp.containers.get('ziti-tunnel')!, 5)
    const stopped = await node.containerd.cri.containerStatus(rp.containers.get('ziti-tunnel')!)
    t.ok(Date.now() - t0 < 5000 && ![134, 137].includes(Number(stopped.exit_code)), `one SIGTERM: it ended by itself, before the grace period, without an abort (exit ${stopped.exit_code} in ${Date.now() - t0} ms)`)
    t.equal((node.kubelet.logs(rp, 'ziti-tunnel').match(/received signal: Terminated/g) ?? []).length, 1, 'the tunneler got one SIGTERM')
    const link = node.inNetns(rp, ['ip', 'link', 'show', 'dev', 'ziti0']).stdout
    t.match(link, /NO-CARRIER/, 'the device has no carrier once the tunneler is gone')
    // An independent witness in the pod netns: a counter at postrouting (after the CNI's guard)
    // for Ziti destinations leaving by any interface but ziti0. eth0's own packet counter is
    // not one: it moved by 20 in one CI run with nothing Ziti-bound leaving (other traffic of
    // the dual-stack pod, not captured).
    const witness = 'table inet zcni_leak_witness {\n\tchain post {\n\t\ttype filter hook postrouting priority 100; policy accept;\n\t\toifname != "ziti0" ip daddr { 100.64.0.0/10, 10.99.0.0/16 } counter\n\t}\n}\n'
    const r = spawnSync('nsenter', [`--net=${rp.netns}`, 'nft', '-f', '-'], { input: witness, encoding: 'utf8' })
    t.equal(r.status, 0, `witness loaded ${r.stderr}`)
    const results = []
    for (let i = 0; i < 3; i++) {
      results.push(await app(node, rp, ['udp', '100.64.0.3', '514']), await app(node, rp, ['udp', '10.99.0.7', '443']))
    }
    t.same(results.map((x) => x.error), Array(6).fill('timeout'), 'the app sent 6 datagrams and got no answer')
    const counted = node.inNetns(rp, ['nft', 'list', 'table', 'inet', 'zcni_leak_witness']).stdout
    t.match(counted, /counter packets 0 bytes 0/, 'not one of them left the pod by another interface')
    // The witness does see a leak: without the route into the device and the guard, the same
    // datagram takes the default route out of eth0.
    node.inNetns(rp, ['ip', 'route', 'del', '10.99.0.0/16', 'dev', 'ziti0'])
    node.inNetns(rp, ['nft', 'delete', 'table', 'inet', 'ziti_cni'])
    await app(node, rp, ['udp', '10.99.0.7', '443'])
    t.match(node.inNetns(rp, ['nft', 'list', 'table', 'inet', 'zcni_leak_witness']).stdout, /counter packets [1-9]/, 'control: with route and guard removed, the witness counts it')
  })

  await t.test('DEL removes the device; StopPodSandbox takes the pod down', async (t) => {
    await libcniFor(node, rp, { namespace: 'apps', name: 'tunapp', uid: pod.metadata.uid }).del()
    t.not(node.inNetns(rp, ['ip', 'link', 'show', 'dev', 'ziti0']).status, 0, 'no ziti0 after DEL')
    t.not(node.inNetns(rp, ['nft', 'list', 'table', 'inet', 'ziti_cni']).status, 0, 'no table after DEL')
    await node.removePod(rp)
  })
})
