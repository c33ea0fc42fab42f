// Just enough of the DNS wire format for the stand-ins: read a query's name and type, answer with
// the records of the asked type.
import { isIPv4, isIPv6 } from 'node:net'

export const TYPE_A = 1
export const TYPE_AAAA = 28

export function questionName(msg: Buffer): { name: string; type: number; end: number } {
  const labels: string[] = []
  let i = 12
  while (i < msg.length && msg[i] !== 0) {
    const len = msg[i]!
    labels.push(msg.subarray(i + 1, i + 1 + len).toString('ascii'))
    i += len + 1
  }
  const type = i + 3 <= msg.length ? msg.readUInt16BE(i + 1) : 0
  return { name: labels.join('.'), type, end: i + 5 } // zero byte + QTYPE + QCLASS
}

function ipBytes(ip: string): Buffer {
  if (isIPv4(ip)) return Buffer.from(ip.split('.').map(Number))
  // Expand "::" and write eight 16-bit groups.
  const [head, tail] = ip.includes('::') ? ip.split('::') as [string, string] : [ip, undefined]
  const h = head ? head.split(':') : []
  const t = tail ? tail.split(':') : []
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
  const b = Buffer.alloc(16)
  groups.forEach((g, k) => b.writeUInt16BE(parseInt(g, 16), k * 2))
  return b
}

/**
 * The query back as a NOERROR response holding one record per address of the asked type (A
 * for IPv4 addresses, AAAA for IPv6 ones). None of that type, or another type asked: NOERROR
 * with no answer ("NODATA": the name exists, it has no record of that type), as CoreDNS and
 * every authoritative server answer it (RFC 2308 section 2.2). Never a record of another type:
 * musl 1.2.3 takes an A record in an AAAA answer as an address (its dns_parse_callback looks
 * at the record's type only; musl 41603c77 ignores such records from 1.2.4 on), the bug of
 * ziti-tunnel-sdk-c #237.
 */
export function answer(query: Buffer, ips: string[]): Buffer {
  const { type, end } = questionName(query)
  const records = ips.filter((ip) => (type === TYPE_A && isIPv4(ip)) || (type === TYPE_AAAA && isIPv6(ip))).map((ip) => {
    const data = ipBytes(ip)
    const rr = Buffer.alloc(12)
    rr.writeUInt16BE(0xc00c, 0) // pointer to the question name
    rr.writeUInt16BE(type, 2)
    rr.writeUInt16BE(1, 4) // IN
    rr.writeUInt32BE(5, 6) // TTL
    rr.writeUInt16BE(data.length, 10)
    return Buffer.concat([rr, data])
  })
  const header = Buffer.from(query.subarray(0, 12))
  header.writeUInt16BE(0x8180, 2) // response, recursion desired+available, NOERROR
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(records.length, 6)
  header.writeUInt16BE(0, 8)
  header.writeUInt16BE(0, 10)
  return Buffer.concat([header, query.subarray(12, end), ...records])
}

/** The query back as a response with rcode NXDOMAIN and no answer. */
export function nxdomain(query: Buffer): Buffer {
  const { end } = questionName(query)
  const header = Buffer.from(query.subarray(0, 12))
  header.writeUInt16BE(0x8183, 2) // response, RD+RA, NXDOMAIN
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(0, 6)
  header.writeUInt16BE(0, 8)
  header.writeUInt16BE(0, 10)
  return Buffer.concat([header, query.subarray(12, end)])
}

/**
 * A UDP answer that fits `limit` bytes: the question and as many whole answer records as fit,
 * with TC set when any had to go (RFC 1035 4.2.1, RFC 2181 9). Every record here is the same
 * size (a pointer name, A or AAAA data), so the cut is by record count.
 */
export function truncate(msg: Buffer, limit: number): Buffer {
  if (msg.length <= limit) return msg
  const { end } = questionName(msg)
  const count = msg.readUInt16BE(6)
  const size = (msg.length - end) / count
  const keep = Math.floor((limit - end) / size)
  const out = Buffer.from(msg.subarray(0, end + keep * size))
  out[2] = out[2]! | 0x02
  out.writeUInt16BE(keep, 6)
  return out
}
