// Just enough of the DNS wire format for the stand-ins: read a query's name, answer with one A record.

export function questionName(msg: Buffer): { name: string; end: number } {
  const labels: string[] = []
  let i = 12
  while (i < msg.length && msg[i] !== 0) {
    const len = msg[i]!
    labels.push(msg.subarray(i + 1, i + 1 + len).toString('ascii'))
    i += len + 1
  }
  return { name: labels.join('.'), end: i + 5 } // zero byte + QTYPE + QCLASS
}

export function answerA(query: Buffer, ip: string): Buffer {
  const { end } = questionName(query)
  const header = Buffer.from(query.subarray(0, 12))
  header.writeUInt16BE(0x8180, 2) // response, recursion desired+available, NOERROR
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(1, 6)
  header.writeUInt16BE(0, 8)
  header.writeUInt16BE(0, 10)
  const answer = Buffer.alloc(16)
  answer.writeUInt16BE(0xc00c, 0) // pointer to the question name
  answer.writeUInt16BE(1, 2) // A
  answer.writeUInt16BE(1, 4) // IN
  answer.writeUInt32BE(5, 6) // TTL
  answer.writeUInt16BE(4, 10)
  ip.split('.').forEach((o, k) => answer.writeUInt8(Number(o), 12 + k))
  return Buffer.concat([header, query.subarray(12, end), answer])
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
