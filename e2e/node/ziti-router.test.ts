// The edge-router stand-in (standins/ziti-router.ts) against what a client that is not the
// pod's tunneler would try: framing as ziti-sdk-c lays it out, no certificate, a hello with a
// token that is no live API session, a Connect before hello, another identity's dial token, a
// service that requires end-to-end encryption.
import t from 'tap'
import { connect, type TLSSocket } from 'node:tls'
import { request } from 'node:https'
import { FakeZitiController } from './standins/ziti-controller.ts'
import { CT, encodeMessage, FakeEdgeRouter, H, MessageReader, type ChannelMessage } from './standins/ziti-router.ts'

const i32 = (n: number) => { const b = Buffer.alloc(4); b.writeInt32LE(n); return b }

t.test('framing: ziti-sdk-c message.c layout', async (t) => {
  const bytes = encodeMessage({ content: CT.Hello, seq: 7, headers: [[H.SessionToken, Buffer.from('tok')]], body: Buffer.from('tok') })
  t.same([...bytes.subarray(0, 4)], [3, 6, 9, 12], 'magic 03 06 09 0C (message.h:29)')
  t.same([bytes.readUInt32LE(4), bytes.readUInt32LE(8), bytes.readUInt32LE(12), bytes.readUInt32LE(16)], [0, 7, 11, 3], 'content, seq, headers length, body length, little-endian')
  t.same([bytes.readInt32LE(20), bytes.readInt32LE(24), bytes.subarray(28, 31).toString()], [1002, 3, 'tok'], 'header: id, length, value')
  const r = new MessageReader()
  t.same(r.push(bytes.subarray(0, 25)), [], 'a partial message waits for the rest')
  const [m] = r.push(bytes.subarray(25)) as [ChannelMessage]
  t.same([m.content, m.seq, m.headers.get(H.SessionToken)?.toString(), m.body.toString()], [CT.Hello, 7, 'tok', 'tok'])
  t.throws(() => new MessageReader().push(Buffer.alloc(20)), /bad channel magic/)
})

t.test('the router admits only the holder of a live API session, and only to its own dials', async (t) => {
  const ctrl = new FakeZitiController({ host: '127.0.0.1' })
  await ctrl.listen()
  const router = new FakeEdgeRouter(ctrl.ca, { apiSessionIdentity: (tok) => ctrl.apiSessionIdentity(tok), dialService: (d, i) => ctrl.clientApi.dialService(d, i) })
  ctrl.clientApi.addRouter('er', await router.listen())
  t.teardown(async () => { await router.close(); await ctrl.close() })
  const plain = ctrl.addService('plain', ['s'], [ctrl.addConfig('plain-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['plain.ziti'], portRanges: [{ low: 1, high: 1 }] })])
  plain.encryptionRequired = false
  const sealed = ctrl.addService('sealed', ['s'], [ctrl.addConfig('sealed-i', 'intercept.v1', { protocols: ['tcp'], addresses: ['sealed.ziti'], portRanges: [{ low: 2, high: 2 }] })])
  const alice = ctrl.addCertIdentity('alice', [])
  alice.identity.roleAttributes.push('a')
  const mallory = ctrl.addCertIdentity('mallory', [])
  ctrl.addPolicy('a-dials', 'Dial', ['#a'], ['#s'])
  const port = Number(new URL(router.url.replace('tls:', 'https:')).port)

  const http = (who: { cert: string; key: string }, method: string, path: string, body?: object, session?: string) => new Promise<{ status: number; data: Record<string, string> }>((resolve, reject) => {
    const req = request(`${ctrl.url}${path}`, { method, ca: ctrl.ca.certPem, cert: who.cert, key: who.key, headers: { 'content-type': 'application/json', ...(session ? { 'zt-session': session } : {}) } }, (res) => {
      let text = ''
      res.on('data', (d) => { text += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, data: (JSON.parse(text || '{}') as { data: Record<string, string> }).data }))
    })
    req.on('error', reject)
    req.end(body ? JSON.stringify(body) : undefined)
  })
  const login = async (who: { cert: string; key: string }) => (await http(who, 'POST', '/edge/client/v1/authenticate?method=cert')).data.token!
  const channel = (who?: { cert: string; key: string }) => new Promise<{ sock: TLSSocket; next: () => Promise<ChannelMessage | 'closed'> }>((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port, ca: ctrl.ca.certPem, ...(who ? { cert: who.cert, key: who.key } : {}) })
    const reader = new MessageReader()
    const queue: Array<ChannelMessage | 'closed'> = []
    const waiters: Array<(m: ChannelMessage | 'closed') => void> = []
    const put = (m: ChannelMessage | 'closed') => { const w = waiters.shift(); if (w) w(m); else queue.push(m) }
    sock.on('data', (d: Buffer) => { for (const m of reader.push(d)) put(m) })
    sock.on('close', () => put('closed'))
    sock.on('error', () => {})
    sock.on('secureConnect', () => resolve({ sock, next: () => new Promise((r) => { const m = queue.shift(); if (m) r(m); else waiters.push(r) }) }))
    sock.on('error', reject)
  })
  const hello = (token: string) => encodeMessage({ content: CT.Hello, seq: 1, headers: [[H.SessionToken, Buffer.from(token)]], body: Buffer.from(token) })
  const connectMsg = (connId: number, dialToken: string) => encodeMessage({ content: CT.Connect, seq: 2, headers: [[H.ConnId, i32(connId)], [H.Seq, i32(0)]], body: Buffer.from(dialToken) })

  await t.test('no client certificate: the TLS handshake fails', async (t) => {
    const outcome = await channel().then(async (c) => (await c.next()) === 'closed' ? 'closed' : 'open', () => 'refused')
    t.not(outcome, 'open')
  })

  await t.test('a hello with a token that is no live API session is refused and the channel closed', async (t) => {
    const c = await channel(mallory)
    c.sock.write(hello('00000000-0000-0000-0000-000000000000'))
    const r = await c.next() as ChannelMessage
    t.equal(r.content, CT.Result)
    t.same([...(r.headers.get(H.ResultSuccess) ?? [])], [0], 'ResultSuccess false (channel.c:870-878 closes)')
    t.equal(await c.next(), 'closed')
  })

  await t.test('a Connect before hello: the channel is dropped', async (t) => {
    const c = await channel(alice)
    c.sock.write(connectMsg(1, 'x'))
    t.equal(await c.next(), 'closed')
  })

  const aliceToken = await login(alice)
  const dial = (await http(alice, 'POST', '/edge/client/v1/sessions', { serviceId: plain.id, type: 'Dial' }, aliceToken)).data
  await t.test('alice: hello, connect with her dial token, data both ways', async (t) => {
    const c = await channel(alice)
    c.sock.write(hello(aliceToken))
    t.same([...((await c.next()) as ChannelMessage).headers.get(H.ResultSuccess)!], [1])
    c.sock.write(connectMsg(5, dial.token!))
    const connected = await c.next() as ChannelMessage
    t.equal(connected.content, CT.StateConnected)
    t.equal(connected.headers.get(H.ReplyFor)?.readInt32LE(), 2, 'ReplyFor the Connect')
    c.sock.write(encodeMessage({ content: CT.Data, seq: 3, headers: [[H.ConnId, i32(5)], [H.Seq, i32(0)]], body: Buffer.from('hello') }))
    const data = await c.next() as ChannelMessage
    t.same([data.content, data.headers.get(H.ConnId)?.readInt32LE(), data.body.toString()], [CT.Data, 5, 'ziti-service=plain got=hello\n'])
    c.sock.destroy()
  })

  await t.test('mallory, with her own session, cannot use alice\'s dial token', async (t) => {
    const c = await channel(mallory)
    c.sock.write(hello(await login(mallory)))
    t.same([...((await c.next()) as ChannelMessage).headers.get(H.ResultSuccess)!], [1], 'her hello is fine')
    c.sock.write(connectMsg(9, dial.token!))
    const r = await c.next() as ChannelMessage
    t.equal(r.content, CT.StateClosed, 'StateClosed (connect.c:1090-1104)')
    t.equal(r.body.toString(), 'invalid session')
    t.same(router.events.filter((e) => e.kind === 'connect').map((e) => e.identity), ['alice'], 'only alice ever connected')
    c.sock.destroy()
  })

  await t.test('a service that requires end-to-end encryption is refused (this stand-in has none)', async (t) => {
    const sdial = (await http(alice, 'POST', '/edge/client/v1/sessions', { serviceId: sealed.id, type: 'Dial' }, aliceToken)).data
    const c = await channel(alice)
    c.sock.write(hello(aliceToken))
    await c.next()
    c.sock.write(connectMsg(11, sdial.token!))
    const r = await c.next() as ChannelMessage
    t.equal(r.content, CT.StateClosed)
    t.match(r.body.toString(), /end-to-end encryption is not supported/)
    c.sock.destroy()
  })

  await t.test('the controller gives no dial session for a service without a Dial policy', async (t) => {
    const r = await http(mallory, 'POST', '/edge/client/v1/sessions', { serviceId: plain.id, type: 'Dial' }, await login(mallory))
    t.equal(r.status, 404)
  })
})
