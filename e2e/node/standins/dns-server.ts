// The cluster DNS stand-in (another pod, not Ziti), behaving like CoreDNS's defaults: names in
// the cluster domain that are not Services get NXDOMAIN (so a resolver walking its search path
// moves on), every other name is "forwarded upstream" and answered with fixed addresses: an A
// query with the IPv4 ones, an AAAA query with the IPv6 ones, NOERROR and no answer when there
// are none of that family. Names under an NXDOMAIN suffix are ones the upstream does not know
// (e.g. `ziti`: no such top-level domain on the Internet, so a real upstream says NXDOMAIN).
// `big.<anything>` has BIG_RECORDS A records (673 bytes), `huge.<anything>` HUGE_RECORDS (1155
// bytes): over UDP a client gets at most the size its EDNS OPT record advertises, 512 bytes
// without one (RFC 1035 4.2.1, RFC 6891), so the answer is cut to the records that fit and TC
// is set, as CoreDNS does; over TCP (same port) it gets them all.
//   dns-server.ts HOST PORT ANSWER[,ANSWER...] [CLUSTER_DOMAIN [NXDOMAIN_SUFFIX...]]
import { createSocket } from 'node:dgram'
import { createServer } from 'node:net'
import { answer, nxdomain, questionName, truncate } from './dns-wire.ts'

export const BIG_RECORDS = 40
const BIG = Array.from({ length: BIG_RECORDS }, (_, i) => `198.51.100.${i + 1}`)
export const HUGE_RECORDS = 70
const HUGE = Array.from({ length: HUGE_RECORDS }, (_, i) => `198.51.100.${i + 1}`)

const [host, port, answers, domain = 'cluster.local', ...unknown] = process.argv.slice(2) as [string, string, string, string?, ...string[]]
const ips = answers.split(',')
const under = (name: string, suffix: string) => name === suffix || name.endsWith(`.${suffix}`)
const s = createSocket('udp4')
function respond(msg: Buffer, via: string): Buffer {
  const { name, type } = questionName(msg)
  const nx = under(name, domain) || unknown.some((u) => under(name, u))
  const big = name.startsWith('big.') ? BIG : name.startsWith('huge.') ? HUGE : undefined
  process.stdout.write(`query ${name} type ${type} ${via}: ${nx ? 'NXDOMAIN' : big ? `${big.length} records` : answers}\n`)
  return nx ? nxdomain(msg) : answer(msg, big ?? ips)
}
/** The UDP size a query advertises: its OPT record's CLASS (RFC 6891 6.2.3), else 512. */
function udpLimit(q: Buffer): number {
  const { end } = questionName(q)
  return q.readUInt16BE(10) > 0 && q[end] === 0 && q.length >= end + 5 && q.readUInt16BE(end + 1) === 41 ? Math.max(512, q.readUInt16BE(end + 3)) : 512
}
s.on('message', (msg, rinfo) => s.send(truncate(respond(msg, `udp from ${rinfo.address} (limit ${udpLimit(msg)})`), udpLimit(msg)), rinfo.port, rinfo.address))
// DNS over TCP: each message behind a two-byte length (RFC 1035 4.2.2).
const tcp = createServer((c) => {
  let buf = Buffer.alloc(0)
  c.on('data', (d) => {
    buf = Buffer.concat([buf, d])
    while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
      const q = buf.subarray(2, 2 + buf.readUInt16BE(0))
      buf = buf.subarray(2 + q.length)
      const a = respond(q, `tcp from ${c.remoteAddress}`)
      c.write(Buffer.concat([Buffer.from([a.length >> 8, a.length & 255]), a]))
    }
  })
  c.on('error', () => {})
})
tcp.listen(Number(port), host, () => s.bind(Number(port), host, () => process.stdout.write('READY\n')))
