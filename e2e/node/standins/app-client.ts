// The app: an unprivileged process that uses names and ports the way real code does.
//   tcp HOST PORT      resolve through /etc/hosts (the pod's hostAliases), connect, print the reply
//   udp HOST PORT      same over UDP, from a *connected* socket: like every resolver and most UDP
//                      apps, it only accepts a reply from the address it sent to
//   resolve NAME       resolve an A record the way most apps do: getaddrinfo() of the C library
//                      (glibc here), which reads /etc/resolv.conf, walks the search path and
//                      moves to the next nameserver on REFUSED
// Prints one JSON line: {ok, resolved, reply | error}.
import { connect, isIP } from 'node:net'
import { createSocket } from 'node:dgram'
import { lookup } from 'node:dns/promises'

const [cmd, host, port] = process.argv.slice(2) as [string, string, string | undefined]
const out = (o: object) => process.stdout.write(JSON.stringify(o) + '\n')
const timeout = <T>(p: Promise<T>, ms: number) => Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error('timeout')), ms))])

async function main() {
  if (cmd === 'resolve') {
    const found = await timeout(lookup(host, { family: 4, all: true }), 8000)
    out({ ok: true, answers: found.map((a) => a.address) })
    return
  }
  // An IP literal is used as is (either family); a name resolves to IPv4 (the hostAliases).
  const { address, family } = isIP(host) ? { address: host, family: isIP(host) } : await lookup(host, { family: 4 })
  if (cmd === 'tcp') {
    const reply = await timeout(new Promise<string>((resolve, reject) => {
      const c = connect(Number(port), address)
      let data = ''
      c.on('data', (d) => { data += d })
      c.on('end', () => resolve(data.trim()))
      c.on('error', reject)
    }), 3000)
    out({ ok: true, resolved: address, reply })
  } else if (cmd === 'udp') {
    const s = createSocket(family === 6 ? 'udp6' : 'udp4')
    const reply = await timeout(new Promise<string>((resolve, reject) => {
      s.on('message', (m) => resolve(m.toString().trim()))
      s.on('error', reject)
      s.connect(Number(port), address, () => s.send('ping'))
    }), 3000)
    s.close()
    out({ ok: true, resolved: address, reply })
  } else throw new Error(`unknown command ${cmd}`)
}

// Exit at once: a dropped SYN would otherwise keep the process alive for minutes.
main().then(() => process.exit(0), (e: NodeJS.ErrnoException) => { out({ ok: false, error: e.code ?? e.message }); process.exit(1) })
