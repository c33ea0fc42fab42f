// Measures upstream's ziti-edge-tunnel (v1.18.2, built from ../shared/third-party/ziti-edge-tunnel)
// as the tun-mode sidecar runs it: uid 2171, no capability, the attach shim, a device made as the
// CNI makes it, against the fake controller and the edge-router stand-in (in this process, over a
// veth). Prints:
//   - time from the tunneler's start to its first DNS answer (pg.ziti on 100.64.0.2) and to the
//     first intercepted TCP reply (through the device, the tunneler and the router);
//   - its RSS and CPU while a client opens RATE TCP connections per second for SECONDS seconds
//     through the tun (each sends 16 bytes and waits for the service's reply).
// Root only (netns, veth, mknod). Usage:
//   node e2e/bench-tunnel.ts [RATE=200] [SECONDS=60]
import { spawn, spawnSync } from 'node:child_process'
import { connect } from 'node:net'
import { Resolver } from 'node:dns/promises'
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

if (process.argv[2] === 'client') await client(process.argv.slice(3))
else await bench(Number(process.argv[2] ?? 200), Number(process.argv[3] ?? 60))

/** Runs inside the netns: first DNS answer, first reply, then the load; one JSON line. */
async function client([start, rate, seconds]: string[]): Promise<void> {
  const t0 = Number(start)
  const r = new Resolver({ timeout: 200, tries: 1 })
  r.setServers(['100.64.0.2'])
  let ip = ''
  for (;;) {
    try { ip = (await r.resolve4('pg.ziti'))[0]!; break } catch { await new Promise((x) => setTimeout(x, 20)) }
  }
  const dnsMs = Date.now() - t0
  const once = () => new Promise<boolean>((resolve) => {
    const c = connect(5432, ip)
    let got = ''
    const timer = setTimeout(() => { c.destroy(); resolve(false) }, 5000)
    c.on('connect', () => c.write('0123456789abcdef'))
    c.on('data', (d) => { got += d; if (got.includes('got=0123456789abcdef')) { clearTimeout(timer); c.destroy(); resolve(true) } })
    c.on('error', () => { clearTimeout(timer); resolve(false) })
  })
  while (!await once()) await new Promise((x) => setTimeout(x, 20))
  const replyMs = Date.now() - t0
  process.stdout.write(JSON.stringify({ phase: 'ready', dnsMs, replyMs }) + '\n')
  const n = Number(rate) * Number(seconds)
  const results: Array<Promise<boolean>> = []
  const loadStart = Date.now()
  for (let i = 0; i < n; i++) {
    const due = loadStart + (i * 1000) / Number(rate)
    const wait = due - Date.now()
    if (wait > 0) await new Promise((x) => setTimeout(x, wait))
    results.push(once())
  }
  const ok = (await Promise.all(results)).filter(Boolean).length
  process.stdout.write(JSON.stringify({ phase: 'done', attempted: n, ok, seconds: (Date.now() - loadStart) / 1000 }) + '\n')
}

async function bench(rate: number, seconds: number): Promise<void> {
  const { zitiEdgeTunnel } = await import('./node/lib/test-images.ts')
  const { tunCommands } = await import('@ziti-cni/shared')
  const { FakeZitiController } = await import('./node/standins/ziti-controller.ts')
  const { FakeEdgeRouter } = await import('./node/standins/ziti-router.ts')
  const zet = zitiEdgeTunnel()
  const dir = mkdtempSync(join(tmpdir(), 'zcni-bench-'))
  const { createVethNetns, must, removeVethNetns } = await import('./node/lib/veth-netns.ts')
  const n = process.pid % 10000
  const net = { ns: `zcnibench${process.pid}`, hostIf: `zbh${n}a`, nsIf: `zbh${n}b`, hostIp: `198.19.${n % 250}.1`, nsIp: `198.19.${n % 250}.2` }
  const { ns, hostIp } = net
  const procs: Array<ReturnType<typeof spawn>> = []
  const cleanup = () => { for (const p of procs) p.kill('SIGKILL'); removeVethNetns(net); rmSync(dir, { recursive: true, force: true }) }
  try {
    const shim = join(dir, 'ziti-tun-attach.so')
    must('gcc', ['-shared', '-fPIC', '-O2', '-o', shim, new URL('../deploy/shim/ziti-tun-attach.c', import.meta.url).pathname, '-ldl'])
    createVethNetns(net)
    for (const c of tunCommands({ dev: 'ziti0', uid: 2171, addr: '100.64.0.1/10', routes: [] })) must('ip', ['-n', ns, ...c])

    const ctrl = new FakeZitiController({ host: hostIp })
    await ctrl.listen()
    const router = new FakeEdgeRouter(ctrl.ca, { apiSessionIdentity: (tok) => ctrl.apiSessionIdentity(tok), dialService: (d, i) => ctrl.clientApi.dialService(d, i) }, hostIp)
    ctrl.clientApi.addRouter('er-bench', await router.listen())
    const svc = ctrl.addService('postgres', ['db'], [ctrl.addConfig('pg', 'intercept.v1', { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })])
    svc.encryptionRequired = false
    const me = ctrl.addCertIdentity('bench-pod', [])
    me.identity.roleAttributes.push('bench')
    ctrl.addPolicy('bench', 'Dial', ['#bench'], ['#db'])
    const home = join(dir, 'identity')
    mkdirSync(home)
    chownSync(home, 2171, 2171)
    const idFile = join(home, 'ziti-cni.json')
    writeFileSync(idFile, JSON.stringify({ ztAPI: `${ctrl.url}/edge/client/v1`, id: { cert: `pem:${me.cert}`, key: `pem:${me.key}`, ca: `pem:${ctrl.ca.certPem}` } }))
    chownSync(idFile, 2171, 2171)
    const node = join(dir, 'net-tun')
    must('mknod', ['-m', '0600', node, 'c', '10', '200'])
    chownSync(node, 2171, 2171)
    spawnSync('chmod', ['755', dir])

    const t0 = Date.now()
    const zetProc = spawn('ip', ['netns', 'exec', ns, 'unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$0" /dev/net/tun && exec "$@"', node,
      'setpriv', '--reuid', '2171', '--regid', '2171', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs',
      'env', `LD_PRELOAD=${shim}`, 'ZITI_TUN_DEV=ziti0', zet.binary, 'run', '--identity', idFile, '--dns-ip-range', '100.64.0.1/10', '--verbose', '2'], { stdio: ['ignore', 'ignore', 'ignore'] })
    procs.push(zetProc)
    const cli = spawn('ip', ['netns', 'exec', ns, 'env', '-i', 'PATH=/usr/bin:/bin', process.execPath, new URL(import.meta.url).pathname, 'client', String(t0), String(rate), String(seconds)], { stdio: ['ignore', 'pipe', 'inherit'] })
    procs.push(cli)
    // the tunneler's own pid (the chain exec's down to it)
    let pid = 0
    for (let i = 0; i < 100 && !pid; i++) {
      await new Promise((x) => setTimeout(x, 20))
      const r = spawnSync('pgrep', ['-n', '-f', `${zet.binary} run --identity ${idFile}`], { encoding: 'utf8' })
      pid = Number(r.stdout.trim()) || 0
    }
    if (!pid) throw new Error('the tunneler did not start')
    const tick = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100
    const sample = () => {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
      const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024
      return { cpuS: (Number(stat[11]) + Number(stat[12])) / tick, rssMiB: rss, at: Date.now() }
    }
    let lines = ''
    const samples: Array<ReturnType<typeof sample>> = []
    let loadFrom: ReturnType<typeof sample> | undefined
    let ready: { dnsMs: number; replyMs: number } | undefined
    let done: { attempted: number; ok: number; seconds: number } | undefined
    const timer = setInterval(() => { try { samples.push(sample()) } catch { /* exited */ } }, 1000)
    await new Promise<void>((resolve) => {
      cli.stdout!.on('data', (d) => {
        lines += d
        for (const l of lines.split('\n').slice(0, -1)) {
          const o = JSON.parse(l) as { phase: string }
          if (o.phase === 'ready' && !ready) { ready = o as unknown as typeof ready; loadFrom = sample(); samples.length = 0 }
          if (o.phase === 'done') done = o as unknown as typeof done
        }
        lines = lines.slice(lines.lastIndexOf('\n') + 1)
      })
      cli.on('exit', () => resolve())
    })
    clearInterval(timer)
    const end = sample()
    const rss = samples.map((s) => s.rssMiB)
    const cpuPct = loadFrom ? (100 * (end.cpuS - loadFrom.cpuS)) / ((end.at - loadFrom.at) / 1000) : NaN
    process.stdout.write([
      `ziti-edge-tunnel ${zet.sources.match(/^ziti-tunnel-sdk-c \S+ (\S+)/m)?.[1] ?? ''} (uid 2171, no capability, attach shim), fake controller + router stand-in over a veth`,
      `start -> first DNS answer (pg.ziti on 100.64.0.2): ${ready?.dnsMs} ms`,
      `start -> first intercepted TCP reply:            ${ready?.replyMs} ms`,
      `load: ${done?.attempted} TCP connections at ${rate}/s over ${done?.seconds.toFixed(1)} s through the tun, ${done?.ok} answered`,
      `tunneler RSS: at load start ${loadFrom?.rssMiB.toFixed(1)} MiB, max ${Math.max(...rss).toFixed(1)} MiB, at end ${end.rssMiB.toFixed(1)} MiB`,
      `tunneler CPU: ${cpuPct.toFixed(1)} % of one core on average during the load (${(end.cpuS - (loadFrom?.cpuS ?? 0)).toFixed(2)} s CPU)`,
      `machine: ${spawnSync('nproc', { encoding: 'utf8' }).stdout.trim()} cores, load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`,
    ].join('\n') + '\n')
    await router.close()
    await ctrl.close()
  } finally {
    cleanup()
  }
}
