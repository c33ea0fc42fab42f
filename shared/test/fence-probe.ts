// A child process for the fence's kernel test, run as a given uid inside a netns:
//   listen <port>            TCP and UDP on 0.0.0.0 and [::] (v6only), like ziti tunnel proxy's
//                            0.0.0.0 listeners; answers "hi" / echoes; prints "ready"
//   dial <tcp|udp> <host> <port>   prints "ok" or "fail <why>" (exit 0 either way)
import { createServer, connect } from 'node:net'
import { createSocket } from 'node:dgram'

const [cmd, a, b, c] = process.argv.slice(2)
const TIMEOUT_MS = 700

if (cmd === 'listen') {
  const port = Number(a)
  let pending = 4
  const up = () => { if (--pending === 0) process.stdout.write('ready\n') }
  for (const host of ['0.0.0.0', '::']) {
    createServer((s) => { s.end('hi') }).listen({ port, host, ipv6Only: host === '::' }, up)
    const u = createSocket({ type: host === '::' ? 'udp6' : 'udp4', ipv6Only: host === '::' })
    u.on('message', (m, r) => u.send(m, r.port, r.address))
    u.bind(port, host, up)
  }
} else if (cmd === 'dial') {
  const [proto, host, port] = [a!, b!, Number(c)]
  const done = (r: string) => { process.stdout.write(`${r}\n`); process.exit(0) }
  setTimeout(() => done('fail timeout'), TIMEOUT_MS)
  if (proto === 'tcp') {
    const s = connect({ host, port })
    s.on('data', () => done('ok'))
    s.on('error', (e) => done(`fail ${(e as NodeJS.ErrnoException).code}`))
  } else {
    const u = createSocket(host.includes(':') ? 'udp6' : 'udp4')
    u.on('message', () => done('ok'))
    u.on('error', (e) => done(`fail ${(e as NodeJS.ErrnoException).code}`))
    u.send('x', port, host, (e) => { if (e) done(`fail ${(e as NodeJS.ErrnoException).code}`) })
  }
} else {
  process.stderr.write(`usage: fence-probe listen <port> | dial <tcp|udp> <host> <port>\n`)
  process.exit(2)
}
