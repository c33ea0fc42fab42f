// Stand-in for `ziti tunnel proxy svc:port[:udp] ...`: one plain listener per service on
// 0.0.0.0 (like the real one), no capabilities. Each connection or datagram is answered with
// the service it reached, so a test sees where the app's traffic landed.
import { createServer } from 'node:net'
import { createSocket } from 'node:dgram'

const [mode, ...specs] = process.argv.slice(2)
if (mode !== 'proxy') throw new Error(`stand-in only implements "proxy", got ${mode}`)
let pending = specs.length
const ready = () => { if (--pending === 0) process.stdout.write('READY\n') }
for (const spec of specs) {
  const [service, port, proto] = spec.split(':') as [string, string, string | undefined]
  if (proto === 'udp') {
    const s = createSocket('udp4')
    s.on('message', (msg, rinfo) => s.send(`ziti-service=${service} listener=${port} via=udp got=${msg.toString().trim()}\n`, rinfo.port, rinfo.address))
    s.bind(Number(port), '0.0.0.0', ready)
  } else {
    createServer((c) => {
      c.end(`ziti-service=${service} listener=${port} peer=${c.remoteAddress}\n`)
    }).listen(Number(port), '0.0.0.0', ready)
  }
}
