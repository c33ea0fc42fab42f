// Why NET_RAW is a refused capability (preconditions.ts REFUSED_CAPABILITIES), on the real
// kernel: behind an nftables output hook with policy drop (the shape of an egress lockdown),
// an ordinary socket's datagram is refused with EPERM, while the same datagram sent as an
// Ethernet frame through an AF_PACKET socket (CAP_NET_RAW, which the runtime gives every root
// container by default) reaches the peer: packet sockets never pass the IP output hooks.
// Root only; skipped outside CI, failing in CI.
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { rootOnly } from '../../shared/testkit/root.ts'

t.test('an AF_PACKET frame passes an nftables output drop; a UDP socket does not', rootOnly(['ip', 'nft', 'gcc']), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-caps-'))
  const tag = `${process.pid % 100000}`
  const [a, b] = [`zcpa${tag}`, `zcpb${tag}`]
  t.teardown(() => { spawnSync('ip', ['netns', 'del', a]); spawnSync('ip', ['netns', 'del', b]); rmSync(dir, { recursive: true, force: true }) })
  const run = (argv: string[], input?: string) => {
    const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', input })
    if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`)
    return r.stdout
  }
  const sender = join(dir, 'packet-send')
  run(['gcc', '-O2', '-Wall', '-Werror', '-o', sender, new URL('./packet-send.c', import.meta.url).pathname])
  run(['ip', 'netns', 'add', a])
  run(['ip', 'netns', 'add', b])
  run(['ip', 'link', 'add', `va${tag}`, 'netns', a, 'type', 'veth', 'peer', 'name', `vb${tag}`, 'netns', b])
  run(['ip', '-n', a, 'addr', 'add', '10.251.7.1/24', 'dev', `va${tag}`])
  run(['ip', '-n', b, 'addr', 'add', '10.251.7.2/24', 'dev', `vb${tag}`])
  run(['ip', '-n', a, 'link', 'set', `va${tag}`, 'up'])
  run(['ip', '-n', b, 'link', 'set', `vb${tag}`, 'up'])
  run(['ip', 'netns', 'exec', a, 'nft', '-f', '-'], 'table inet lockdown {\n  chain out {\n    type filter hook output priority 0; policy drop;\n    oif "lo" accept\n  }\n}\n')
  const peerMac = (JSON.parse(run(['ip', '-n', b, '-j', 'link', 'show', `vb${tag}`])) as Array<{ address: string }>)[0]!.address

  /** Listens on 10.251.7.2:9999 in the peer; `got` is the first datagram within 2 s, if any. */
  const listen = () => {
    const code = "const s=require('dgram').createSocket('udp4');s.bind(9999,'10.251.7.2',()=>console.log('ready'));s.on('message',(m)=>{console.log('got '+m);process.exit(0)});setTimeout(()=>process.exit(0),2000)"
    const p = spawn('ip', ['netns', 'exec', b, process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    p.stdout.on('data', (d: Buffer) => { out += d.toString() })
    const ready = new Promise<void>((r) => p.stdout.once('data', () => r()))
    const got = new Promise<string | undefined>((r) => p.on('exit', () => r(/got (.*)/.exec(out)?.[1])))
    return { ready, got }
  }

  let peer = listen()
  await peer.ready
  const plain = spawnSync('ip', ['netns', 'exec', a, process.execPath, '-e', "const s=require('dgram').createSocket('udp4');s.send('plain',9999,'10.251.7.2',(e)=>{console.log(e?e.code:'sent');process.exit(0)})"], { encoding: 'utf8' })
  t.equal(plain.stdout.trim(), 'EPERM', 'a UDP socket is refused by the output hook')
  t.equal(await peer.got, undefined, 'and nothing arrives')

  peer = listen()
  await peer.ready
  const raw = spawnSync('ip', ['netns', 'exec', a, sender, `va${tag}`, peerMac, '10.251.7.1', '10.251.7.2', '9999'], { encoding: 'utf8' })
  t.equal(raw.status, 0, raw.stderr)
  t.equal(await peer.got, 'packet-socket', 'the AF_PACKET frame arrives: the output hook never saw it')
})
