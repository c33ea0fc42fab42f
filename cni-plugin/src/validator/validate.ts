// The validator's checks: the first init container of an injected pod, unprivileged and not the
// sidecar's uid (whose traffic is never captured). It proves the pod's redirect is in place
// before anything else starts; if the pod came up before the agent could program it (the
// plugin was not yet in the node's CNI config), it exits with EXIT_NOT_INTERCEPTED so the
// agent's repair loop can recognise and recreate the pod.
import { createServer, connect } from 'node:net'
import { createSocket } from 'node:dgram'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { networkInterfaces } from 'node:os'
import { TPROXY_FWMARK, TPROXY_ROUTE_TABLE, cidrContains, formatAddress, nthAddress, parseAddress, parseCidr, parseInterfaceAddress, type Cidr, type Egress, type Intent } from '@ziti-cni/shared'

export { EXIT_NOT_INTERCEPTED } from '@ziti-cni/shared'
const TIMEOUT_MS = Number(process.env.ZITI_CNI_VALIDATOR_TIMEOUT_MS ?? 2000)

/** Listens on the local port the rules point at, dials the address the app would: it must arrive. */
function checkTcp(dst: string, port: number, to: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = createServer((c) => { c.destroy(); server.close(); clearTimeout(timer); resolve() })
    const timer = setTimeout(() => { server.close(); reject(new Error(`${dst}:${port} did not reach 127.0.0.1:${to} within ${TIMEOUT_MS} ms`)) }, TIMEOUT_MS)
    server.on('error', (e) => { clearTimeout(timer); reject(new Error(`cannot listen on 127.0.0.1:${to}: ${e.message}`)) })
    server.listen(to, '127.0.0.1', () => {
      connect(port, dst).on('error', () => { /* the timer reports it */ })
    })
  })
}

function checkUdp(dst: string, port: number, to: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const rx = createSocket('udp4')
    const tx = createSocket('udp4')
    const done = (err?: Error) => { clearTimeout(timer); rx.close(); tx.close(); if (err) reject(err); else resolve() }
    const timer = setTimeout(() => done(new Error(`udp ${dst}:${port} did not reach 127.0.0.1:${to} within ${TIMEOUT_MS} ms`)), TIMEOUT_MS)
    rx.on('message', () => done())
    rx.on('error', (e) => done(new Error(`cannot listen on udp 127.0.0.1:${to}: ${e.message}`)))
    rx.bind(to, '127.0.0.1', () => tx.send('ziti-cni-validator', port, dst))
  })
}

/** Routing can be read without privileges: the policy rule (nftables) or the local routes (ebpf). */
function checkRouting(intent: Extract<Intent, { mode: 'tproxy' }>): void {
  if (intent.datapath === 'ebpf') {
    const cidr = intent.cidrs.find((c) => c.includes('.'))!
    const local = execFileSync('ip', ['-4', 'route', 'show', 'table', 'local', 'type', 'local'], { encoding: 'utf8' })
    if (!local.split('\n').some((l) => l.split(' ')[1] === cidr.replace(/\/32$/, ''))) throw new Error(`the local route for ${cidr} is missing`)
    return
  }
  const rules = execFileSync('ip', ['-4', 'rule', 'show'], { encoding: 'utf8' })
  if (!rules.includes(`fwmark 0x${TPROXY_FWMARK.toString(16)} lookup ${TPROXY_ROUTE_TABLE}`)) throw new Error('the tproxy policy rule is missing')
}

/**
 * tun: the device is there, owned by the sidecar, up, and the tunneler's DNS address routes
 * into it. Read from sysfs and `ip route get`, which need no privilege. (Attaching is the
 * sidecar's to do; this container is another uid and could not.)
 */
function checkTun(intent: Extract<Intent, { mode: 'tun' }>): string {
  const sys = (f: string) => readFileSync(`/sys/class/net/${intent.dev}/${f}`, 'utf8').trim()
  let owner: string
  try { owner = `${sys('owner')}:${sys('group')}` } catch { throw new Error(`the tun device ${intent.dev} is missing`) }
  // No group (-1): a gid is whatever the pod spec gives, so only the uid may attach.
  if (owner !== `${intent.uid}:-1`) throw new Error(`${intent.dev} is owned by ${owner}, not by uid ${intent.uid} alone`)
  if ((Number.parseInt(sys('flags'), 16) & 1) === 0) throw new Error(`${intent.dev} is down`)
  // The tunneler's DNS address: the one after the device's own.
  const { address } = parseInterfaceAddress(intent.addr) as { address: { family: 4; value: bigint } }
  const dns = formatAddress({ family: 4, value: address.value + 1n })
  const route = execFileSync('ip', ['-4', 'route', 'get', dns], { encoding: 'utf8' })
  if (!new RegExp(`\\bdev ${intent.dev}\\b`).test(route)) throw new Error(`${dns} is not routed into ${intent.dev}: ${route.trim()}`)
  return `${intent.dev} is a tun owned by ${owner}, up, and ${dns} is routed into it`
}

/**
 * The fence, from inside the pod: a datagram sent to a multicast group on the pod's interface
 * with loopback on and TTL 0 comes back in through that interface (iif eth0, as if from
 * another pod; measured) and never leaves the pod, to a port nobody declared. Without the fence it arrives; with it, it must not.
 * The send itself must work, or the check proves nothing and fails.
 */
export function checkFence(exceptDev?: string): Promise<string> {
  const nic = Object.entries(networkInterfaces()).find(([name, addrs]) => name !== 'lo' && name !== exceptDev && addrs?.some((a) => a.family === 'IPv4' && !a.internal))
  if (!nic) return Promise.reject(new Error('the fence cannot be probed: the pod has no IPv4 interface but lo'))
  const [dev, addrs] = nic
  const src = addrs!.find((a) => a.family === 'IPv4')!.address
  const group = '239.255.42.71'
  return new Promise((resolve, reject) => {
    const rx = createSocket({ type: 'udp4', reuseAddr: true })
    const tx = createSocket('udp4')
    let timer: NodeJS.Timeout | undefined
    const done = (err?: Error, ok?: string) => { clearTimeout(timer); rx.close(); tx.close(); if (err) reject(err); else resolve(ok!) }
    rx.on('message', () => done(new Error(`the fence is missing: a datagram from ${dev} reached an undeclared port`)))
    rx.on('error', (e) => done(new Error(`the fence cannot be probed: ${e.message}`)))
    rx.bind(0, '0.0.0.0', () => {
      const port = rx.address().port
      try {
        rx.addMembership(group, src)
        tx.bind(0, src, () => {
          tx.setMulticastInterface(src)
          tx.setMulticastLoopback(true)
          // TTL 0: the datagram is only looped back, never sent (and egress: ziti-only lets it by).
          tx.setMulticastTTL(0)
          tx.send('ziti-cni-validator fence probe', port, group, (e) => {
            if (e) return done(new Error(`the fence cannot be probed: sending to ${group} on ${dev}: ${e.message}`))
            timer = setTimeout(() => done(undefined, `the fence drops what comes in on ${dev} to undeclared ports`), Math.min(TIMEOUT_MS, 500))
          })
        })
      } catch (e) {
        done(new Error(`the fence cannot be probed: joining ${group} on ${dev}: ${(e as Error).message}`))
      }
    })
  })
}

/** The first host address of an IPv4 CIDR (the network address itself for a /31 or /32). */
function firstHost(cidr: string): string {
  const c = parseCidr(cidr) as Cidr
  return formatAddress(nthAddress(c, c.prefix < 31 ? 1 : 0)!)
}

/** The redirect first (an unprogrammed pod says so), then the fence, then the egress lockdown. */
export async function validate(intent: Intent): Promise<string> {
  const redirect = await checkRedirect(intent)
  const fence = await checkFence(intent.mode === 'tun' ? intent.dev : undefined)
  const egress = intent.egress ? `; ${await checkEgress(intent.egress)}` : ''
  return `${redirect}; ${fence}${egress}`
}

/**
 * egress: ziti-only, from inside the pod: a datagram to a documentation address (nobody's,
 * and no exception) must fail at once with EPERM, which only the lockdown's drop gives an
 * unprivileged sender; without it the send succeeds.
 */
export function checkEgress(e: Egress): Promise<string> {
  const allowed = (ip: string) => e.cidrs.some((c) => cidrContains(parseCidr(c) as Cidr, parseAddress(ip) as Exclude<ReturnType<typeof parseAddress>, string>))
  const port = [9, 7, 13].find((p) => !e.ports.some((r) => { const [a, b = a] = r.split('-').map(Number); return p >= a! && p <= b! }))
  const dst = ['192.0.2.1', '198.51.100.1', '203.0.113.1'].find((a) => !allowed(a))
  if (port === undefined || dst === undefined) return Promise.resolve('egress lockdown not probed (every probe address or port is an exception)')
  return new Promise((resolve, reject) => {
    const tx = createSocket('udp4')
    tx.send('ziti-cni-validator egress probe', port, dst, (err) => {
      tx.close()
      if ((err as NodeJS.ErrnoException | null)?.code === 'EPERM') resolve(`egress is locked down (udp ${dst}:${port}: EPERM)`)
      else reject(new Error(`egress is not locked down: udp ${dst}:${port} ${err ? `failed with ${(err as NodeJS.ErrnoException).code}` : 'was sent'}, not EPERM`))
    })
  })
}

async function checkRedirect(intent: Intent): Promise<string> {
  if (intent.mode === 'tun') return checkTun(intent)
  if (intent.mode === 'proxy') {
    // An IPv4 entry; a range (a service's CIDR) is dialled at its first host address.
    const d = intent.dnat.find((x) => !x.dst.includes(':') && !x.dst.includes('/')) ?? intent.dnat.find((x) => !x.dst.includes(':')) ?? intent.dnat[0]!
    const dst = d.dst.includes('/') ? firstHost(d.dst) : d.dst
    await (d.proto === 'tcp' ? checkTcp(dst, d.port, d.to) : checkUdp(dst, d.port, d.to))
    return `${dst}:${d.port}/${d.proto} is redirected to 127.0.0.1:${d.to}`
  }
  if (intent.cidrs.some((c) => c.includes('.'))) checkRouting(intent)
  // Capture itself needs a transparent socket (CAP_NET_RAW), which this container does not
  // have; DNS capture is a plain DNAT and proves the table is there.
  if (intent.dns !== undefined) {
    await checkUdp('192.0.2.53', 53, intent.dns)
    return `routing present (${intent.datapath}) and DNS is captured to 127.0.0.1:${intent.dns}`
  }
  return `routing present (${intent.datapath})`
}
