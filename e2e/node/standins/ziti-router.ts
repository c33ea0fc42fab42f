// Stand-in for an OpenZiti edge router's SDK-facing listener (tls://), speaking the channel
// protocol as ziti-sdk-c 1.18.1 (the one ziti-edge-tunnel v1.18.2 pins) speaks it, and acting
// as the service behind every dial (it terminates the circuit itself: there is no hosting
// side). Cited as [SDK file:line] from ziti-sdk-c's library/ and inc_internal/.
//   framing   20-byte header: magic 03 06 09 0C, then content type, sequence, headers length,
//             body length as uint32 little-endian [inc_internal/message.h:27-40, message.c:31-42];
//             each header is id int32, length int32, value bytes, little-endian [message.c:76-86]
//   hello     ContentType Hello(0) with SessionTokenHeader(1002) = the API session token
//             [channel.c:882-913]; answered by Result(2) with ReplyFor(1) = its seq and
//             ResultSuccess(2) = 1 [channel.c:826-845], or ResultSuccess 0 and a reason, and the
//             channel is closed (channel.c:870-878) for a token the controller does not know
//   connect   Connect(60783) with ConnId(1000), Seq, CallerId(1008) and the dial session's token
//             as the body [connect.c:1166-1243]; answered by StateConnected(60784) (ReplyFor the
//             request) [connect.c:1106-1128], or StateClosed(60785) with the reason
//             [connect.c:1090-1104] for a token that is no live Dial session of that service
//   data      Data(60786) with ConnId, Seq, optional Flags(1010) (FIN = 1) [connect.c:280-305];
//             an unencrypted body is the payload as is (e2ee none, connect.c:453-457)
//   close     StateClosed from either side ends the connection [connect.c:1507, 654]
//   latency   Latency(3) probes are answered by Result with LatencyProbeTime(128) echoed
//             [channel.c:773-790, 809-821]
// What the service answers: every Data it receives with `ziti-service=<name> got=<the bytes>`;
// a dialer that sends nothing for 300 ms gets `ziti-service=<name> caller=<identity>` and FIN. Services with encryptionRequired: true are
// refused at connect (this stand-in has no libsodium key exchange).
import { createServer, type Server, type TLSSocket } from 'node:tls'
import type { AddressInfo } from 'node:net'
import { createServingCert, type KeyPair } from '../../../webhook/src/tls/certs.ts'

const MAGIC = Buffer.from([0x03, 0x06, 0x09, 0x0c])
export const CT = { Hello: 0, Ping: 1, Result: 2, Latency: 3, Connect: 60783, StateConnected: 60784, StateClosed: 60785, Data: 60786 } as const
export const H = { ConnectionId: 0, ReplyFor: 1, ResultSuccess: 2, HelloVersion: 4, LatencyProbeTime: 128, ConnId: 1000, Seq: 1001, SessionToken: 1002, PublicKey: 1003, CallerId: 1008, Flags: 1010 } as const
const FIN = 1

export interface ChannelMessage { content: number; seq: number; headers: Map<number, Buffer>; body: Buffer }

export function encodeMessage(m: { content: number; seq: number; headers?: Array<[number, Buffer]>; body?: Buffer }): Buffer {
  const hs = (m.headers ?? []).map(([id, v]) => { const h = Buffer.alloc(8); h.writeInt32LE(id, 0); h.writeInt32LE(v.length, 4); return Buffer.concat([h, v]) })
  const headers = Buffer.concat(hs)
  const body = m.body ?? Buffer.alloc(0)
  const head = Buffer.alloc(20)
  MAGIC.copy(head, 0)
  head.writeUInt32LE(m.content, 4)
  head.writeUInt32LE(m.seq, 8)
  head.writeUInt32LE(headers.length, 12)
  head.writeUInt32LE(body.length, 16)
  return Buffer.concat([head, headers, body])
}

/** Splits a byte stream into messages; throws on a bad magic (the SDK closes on that too). */
export class MessageReader {
  private buf = Buffer.alloc(0)
  push(chunk: Buffer): ChannelMessage[] {
    this.buf = Buffer.concat([this.buf, chunk])
    const out: ChannelMessage[] = []
    while (this.buf.length >= 20) {
      if (!this.buf.subarray(0, 4).equals(MAGIC)) throw new Error('bad channel magic')
      const hlen = this.buf.readUInt32LE(12)
      const blen = this.buf.readUInt32LE(16)
      if (this.buf.length < 20 + hlen + blen) break
      const headers = new Map<number, Buffer>()
      for (let o = 20; o < 20 + hlen;) {
        const id = this.buf.readInt32LE(o)
        const len = this.buf.readInt32LE(o + 4)
        headers.set(id, Buffer.from(this.buf.subarray(o + 8, o + 8 + len)))
        o += 8 + len
      }
      out.push({ content: this.buf.readUInt32LE(4), seq: this.buf.readUInt32LE(8), headers, body: Buffer.from(this.buf.subarray(20 + hlen, 20 + hlen + blen)) })
      this.buf = this.buf.subarray(20 + hlen + blen)
    }
    return out
  }
}

const i32 = (n: number) => { const b = Buffer.alloc(4); b.writeInt32LE(n); return b }

/** What the router asks of the controller: who holds an API session token, and a dial session's service. */
export interface RouterAuthority {
  apiSessionIdentity(token: string): { id: string; name: string } | undefined
  dialService(dialToken: string, identityId: string): { name: string; encryptionRequired: boolean } | undefined
}

export interface RouterEvent { kind: 'hello' | 'hello-refused' | 'connect' | 'connect-refused' | 'data' | 'closed'; identity?: string; service?: string; bytes?: string }

export class FakeEdgeRouter {
  readonly events: RouterEvent[] = []
  private readonly server: Server
  private readonly sockets = new Set<TLSSocket>()
  private readonly host: string
  url = ''

  constructor(ca: KeyPair, authority: RouterAuthority, host = '127.0.0.1') {
    this.host = host
    const serving = createServingCert(ca, { commonName: 'fake-edge-router', ipAddresses: [host], dnsNames: ['localhost'], validDays: 2 })
    // The SDK presents its identity's certificate [channel.c:1100-1117: tlsuv with the ztx TLS
    // context]; an edge router requires one signed by the network's CA.
    this.server = createServer({ cert: serving.certPem, key: serving.keyPem, ca: [ca.certPem], requestCert: true, rejectUnauthorized: true }, (sock) => this.serve(sock, authority))
  }

  async listen(port = 0): Promise<string> {
    await new Promise<void>((r) => this.server.listen(port, this.host, r))
    this.url = `tls://${this.host}:${(this.server.address() as AddressInfo).port}`
    return this.url
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((r) => this.server.close(() => r()))
  }

  private serve(sock: TLSSocket, authority: RouterAuthority): void {
    this.sockets.add(sock)
    sock.on('close', () => this.sockets.delete(sock))
    sock.on('error', () => {})
    const reader = new MessageReader()
    let seq = 0
    let who: { id: string; name: string } | undefined
    const conns = new Map<number, { service: string; edgeSeq: number; finSent: boolean }>()
    const send = (content: number, headers: Array<[number, Buffer]>, body?: Buffer) => sock.write(encodeMessage({ content, seq: seq++, headers, body }))
    const edge = (connId: number, content: number, body?: Buffer, flags = 0) => {
      const c = conns.get(connId)
      const headers: Array<[number, Buffer]> = [[H.ConnId, i32(connId)], [H.Seq, i32(c ? c.edgeSeq++ : 0)]]
      if (flags) headers.push([H.Flags, i32(flags)])
      send(content, headers, body)
    }
    sock.on('data', (chunk: Buffer) => {
      let msgs: ChannelMessage[]
      try { msgs = reader.push(chunk) } catch { sock.destroy(); return }
      for (const m of msgs) {
        const replyFor: Array<[number, Buffer]> = [[H.ReplyFor, i32(m.seq)]]
        if (m.content === CT.Hello) {
          const token = (m.headers.get(H.SessionToken) ?? m.body).toString('utf8')
          who = authority.apiSessionIdentity(token)
          if (!who) {
            this.events.push({ kind: 'hello-refused' })
            send(CT.Result, [...replyFor, [H.ResultSuccess, Buffer.from([0])]], Buffer.from('invalid api session'))
            sock.end()
            return
          }
          this.events.push({ kind: 'hello', identity: who.name })
          send(CT.Result, [...replyFor, [H.ResultSuccess, Buffer.from([1])], [H.HelloVersion, Buffer.from('v2.1.0-fake-router')]])
        } else if (m.content === CT.Latency) {
          send(CT.Result, [...replyFor, [H.ResultSuccess, Buffer.from([1])], [H.LatencyProbeTime, m.headers.get(H.LatencyProbeTime) ?? Buffer.alloc(8)]])
        } else if (!who) {
          sock.destroy() // nothing before a successful hello
          return
        } else if (m.content === CT.Connect) {
          const connId = m.headers.get(H.ConnId)?.readInt32LE() ?? -1
          const svc = authority.dialService(m.body.toString('utf8'), who.id)
          const header: Array<[number, Buffer]> = [...replyFor, [H.ConnId, i32(connId)], [H.Seq, i32(0)]]
          if (!svc || svc.encryptionRequired || m.headers.has(H.PublicKey)) {
            this.events.push({ kind: 'connect-refused', identity: who.name, ...(svc ? { service: svc.name } : {}) })
            send(CT.StateClosed, header, Buffer.from(svc ? 'end-to-end encryption is not supported by this router stand-in' : 'invalid session'))
            continue
          }
          conns.set(connId, { service: svc.name, edgeSeq: 0, finSent: false })
          this.events.push({ kind: 'connect', identity: who.name, service: svc.name })
          send(CT.StateConnected, header)
          // A dialer that says nothing within 300 ms (a TCP client waiting for a banner) gets
          // the service's name and the caller's, then FIN.
          const caller = who.name
          setTimeout(() => { const c = conns.get(connId); if (c && c.edgeSeq === 0 && !c.finSent) { c.finSent = true; edge(connId, CT.Data, Buffer.from(`ziti-service=${svc.name} caller=${caller}\n`)); edge(connId, CT.Data, undefined, FIN) } }, 300)
        } else if (m.content === CT.Data) {
          const connId = m.headers.get(H.ConnId)?.readInt32LE() ?? -1
          const c = conns.get(connId)
          if (!c) { send(CT.StateClosed, [[H.ConnId, i32(connId)]]); continue }
          const flags = m.headers.get(H.Flags)?.readInt32LE() ?? 0
          if (m.body.length) {
            this.events.push({ kind: 'data', identity: who.name, service: c.service, bytes: m.body.toString('utf8') })
            edge(connId, CT.Data, Buffer.from(`ziti-service=${c.service} got=${m.body.toString('utf8')}\n`))
          }
          if (flags & FIN) {
            if (!c.finSent) { c.finSent = true; edge(connId, CT.Data, undefined, FIN) }
            edge(connId, CT.StateClosed)
            conns.delete(connId)
            this.events.push({ kind: 'closed', identity: who.name, service: c.service })
          }
        } else if (m.content === CT.StateClosed) {
          const connId = m.headers.get(H.ConnId)?.readInt32LE() ?? -1
          const c = conns.get(connId)
          if (c) { conns.delete(connId); this.events.push({ kind: 'closed', identity: who.name, service: c.service }) }
        }
      }
    })
  }
}
