// Stand-in for the openziti/ziti-tunnel image (entrypoint + `ziti tunnel proxy`), reproducing
// its observable behaviour as read in openziti/ziti at tag v2.0.3 (the version the webhook
// pins). Each behaviour cites its source line; flaws are reproduced, not fixed. There is no
// Ziti network here: "dialing" a service answers with a line naming the service, so a test
// sees where traffic landed.
//
// Identity: the real tunneler logs in with the identity file and lists the services it may
// dial, with their configs. With an identity enrolled from a JWT (the fake controller of
// standins/ziti-controller.ts), the stand-in does exactly that over HTTPS: enrollment with a
// CSR, cert login, the client API's service list. With an identity JSON handed in by a test
// (no controller), it reads that answer from test-only fields: `standinDialable` (service
// names; absent = every service named on the command line) and `standinProxyV1` ({service:
// {port, protocols}}, a service's proxy.v1 config).
import { createPrivateKey, generateKeyPairSync, verify, X509Certificate } from 'node:crypto'
import { request as httpsRequest } from 'node:https'
import { createRequire } from 'node:module'
import { connect as tlsConnect } from 'node:tls'
import { createServer as createTcpServer } from 'node:net'
import { createSocket, type Socket } from 'node:dgram'
import { createServer as createUnixServer } from 'node:net'
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const env = process.env
const log = (level: string, msg: string) => process.stdout.write(`${level}: ${msg}\n`)
const fail = (msg: string, code = 1): never => { process.stderr.write(`ERROR: ${msg}\n`); process.exit(code) }

// ---- `ziti edge enroll` (sdk-golang ziti/enroll/enroll.go), against the controller in `iss` ----

interface HttpReply { status: number; body: string }
function https(url: string, opts: { method?: string; body?: string; headers?: Record<string, string>; ca?: string; cert?: string; key?: string; pin?: string }): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, {
      method: opts.method ?? 'GET', headers: opts.headers, timeout: 10_000,
      ...(opts.pin ? { rejectUnauthorized: false } : { ca: opts.ca }), ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
    }, (res) => {
      if (opts.pin) {
        // Trust on first use of the server whose key signed the JWT, as the SDK does.
        const raw = (res.socket as import('node:tls').TLSSocket).getPeerCertificate().raw
        if (!raw || new X509Certificate(raw).fingerprint256 !== opts.pin) { reject(new Error('the controller presented another certificate')); return }
      }
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }))
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end(opts.body)
  })
}

async function enroll(token: string): Promise<object> {
  const [h, c, sig] = token.split('.')
  if (!h || !c || !sig) throw new Error('the token is not a JWT')
  const claims = JSON.parse(Buffer.from(c, 'base64url').toString('utf8')) as { iss: string; sub: string; jti: string; em: string; exp: number }
  if (claims.em !== 'ott') throw new Error(`enrollment method ${claims.em} is not supported`)
  if (claims.exp * 1000 < Date.now()) throw new Error('the token has expired')
  // The JWT is verified with the key of the certificate the server at `iss` presents.
  const { hostname: host, port } = new URL(claims.iss)
  const serverCert = await new Promise<X509Certificate>((resolve, reject) => {
    const s = tlsConnect({ host, port: Number(port), rejectUnauthorized: false }, () => { resolve(new X509Certificate(s.getPeerCertificate().raw)); s.end() })
    s.on('error', reject)
  })
  if (!verify('sha256', Buffer.from(`${h}.${c}`), serverCert.publicKey, Buffer.from(sig, 'base64url'))) throw new Error('the token signature does not match the controller\'s certificate')
  const forge = createRequire(import.meta.url)('node-forge') as typeof import('node-forge')
  const cas = await https(`${claims.iss}/.well-known/est/cacerts`, { pin: serverCert.fingerprint256 })
  const p7 = forge.pkcs7.messageFromAsn1(forge.asn1.fromDer(forge.util.decode64(cas.body.replace(/\s+/g, '')))) as unknown as { certificates: import('node-forge').pki.Certificate[] }
  const ca = p7.certificates.map((x) => forge.pki.certificateToPem(x)).join('')
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
  const csr = forge.pki.createCertificationRequest()
  csr.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }) as string)
  csr.setSubject([{ name: 'commonName', value: claims.sub }])
  csr.sign(forge.pki.privateKeyFromPem(createPrivateKey(keyPem).export({ type: 'pkcs1', format: 'pem' }) as string), forge.md.sha256.create())
  const r = await https(`${claims.iss}/edge/client/v1/enroll?method=ott&token=${encodeURIComponent(claims.jti)}`, { method: 'POST', ca, body: forge.pki.certificationRequestToPem(csr), headers: { 'content-type': 'application/x-pem-file' } })
  if (r.status !== 200) throw new Error(`the controller answered ${r.status}: ${r.body}`)
  const body = r.body.trim().startsWith('{') ? (JSON.parse(r.body) as { data: { cert: string } }).data.cert : r.body
  return { ztAPI: `${claims.iss}/edge/client/v1`, ztAPIs: [`${claims.iss}/edge/client/v1`], configTypes: null, id: { cert: `pem:${body}`, key: `pem:${keyPem}`, ca: `pem:${ca}` } }
}

// ---- dist/docker-images/ziti-tunnel/entrypoint.sh ----

// :42-50 deprecated NF_REG_NAME / IOTEDGE_DEVICEID become ZITI_IDENTITY_BASENAME, with a warning.
let basename = env.ZITI_IDENTITY_BASENAME || undefined
if (!basename && env.NF_REG_NAME) { log('WARN', `replacing deprecated NF_REG_NAME with ZITI_IDENTITY_BASENAME=${env.NF_REG_NAME}`); basename = env.NF_REG_NAME }
// :61 default identity dir inside the image.
const dir = env.ZITI_IDENTITY_DIR || '/netfoundry'
// `echo ... > file` under `set -o errexit` (:19): an unwritable dir ends the script with 1.
const write = (file: string, text: string) => {
  try { writeFileSync(file, `${text}\n`) } catch (e) { process.stderr.write(`/entrypoint.sh: line 72: ${file}: ${(e as NodeJS.ErrnoException).code === 'EROFS' ? 'Read-only file system' : 'Permission denied'}\n`); process.exit(1) }
}
if (env.ZITI_IDENTITY_JSON) {
  // :64-72 the enrolled identity from the env is written to <dir>/<basename|ziti_id>.json.
  basename ??= 'ziti_id'
  write(join(dir, `${basename}.json`), env.ZITI_IDENTITY_JSON)
} else if (env.ZITI_ENROLL_TOKEN) {
  // :75-83 an enrollment token is written next to it, to be enrolled below.
  basename ??= 'ziti_id'
  write(join(dir, `${basename}.jwt`), env.ZITI_ENROLL_TOKEN)
} else if (!existsSync(dir)) {
  fail(`need directory ${dir} to find tokens and identities`) // :86-89
}

let identityFile: string
if (basename) {
  identityFile = join(dir, `${basename}.json`)
  // :110-140 wait ZITI_IDENTITY_WAIT (default 3) seconds for the file, else enroll a token found
  // in the well-known dirs; a failed enrollment exits 1. Enrollment here: the token (a JWT) is
  // single-use at the controller; the stand-in has none, so it records the enrolled identity.
  if (!(existsSync(identityFile) && statSync(identityFile).size > 0)) {
    const jwt = ['/var/run/secrets/netfoundry.io/enrollment-token', '/enrollment-token', dir].map((d) => join(d, `${basename}.jwt`)).find((f) => existsSync(f) && statSync(f).size > 0)
    if (!jwt) fail(`identity file ${identityFile} does not exist and no token was found`)
    log('INFO', `enrolling ${jwt}`)
    // :128-133 `ziti edge enroll`; a failure ends the container with 1.
    write(identityFile, JSON.stringify(await enroll(readFileSync(jwt!, 'utf8').trim()).catch((e: Error) => fail(`enrollment failed: ${e.message}`))))
  }
} else {
  identityFile = dir // :142-150 every *.json in the dir (--identity-dir)
}

// :153-159 the first positional picks the mode when it matches t?proxy|host (unanchored, so
// "tproxy-contract" matches too); anything else runs "tproxy" with all positionals.
const argv = process.argv.slice(2)
let mode = 'tproxy'
if (argv.length && /t?proxy|host/.test(argv[0]!)) mode = argv.shift()!
log('INFO', `running "ziti tunnel ${mode} --identity ${identityFile} ${argv.join(' ')}"`)

// ---- ziti/tunnel/root.go: `ziti tunnel` subcommands and persistent flags ----

if (mode !== 'proxy') {
  if (mode === 'tproxy' || mode === 'host' || mode === 'run') {
    // tproxy/run add the DNS range to lo and manage iptables (NET_ADMIN): unprivileged, they abort.
    fail(`ziti tunnel ${mode}: this stand-in reproduces proxy mode only; ${mode} needs NET_ADMIN (see README)`)
  }
  // cobra: `tunnel` has no Run of its own, so an unknown subcommand prints usage and exits 0.
  process.stdout.write('Ziti Tunnel\n\nUsage:\n  ziti tunnel [command]\n\nAvailable Commands:\n  host\n  proxy\n  run\n  tproxy\n')
  process.exit(0)
}

const flags: Record<string, string> = { svcPollRate: '', 'cli-agent': 'true', identity: identityFile, verbose: 'false' }
const known = new Set(['verbose', 'v', 'identity', 'i', 'identity-dir', 'svcPollRate', 'resolver', 'r', 'log-formatter', 'dnsSvcIpRange', 'd', 'cli-agent', 'cli-agent-addr', 'cli-agent-alias', 'sdk-flow-control', 'default-connections', 'control-connections'])
const bools = new Set(['verbose', 'v', 'cli-agent', 'sdk-flow-control'])
const positionals: string[] = []
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]!
  const m = /^--?([^=]+)(?:=(.*))?$/.exec(a)
  if (!m) { positionals.push(a); continue }
  const [, name, value] = m as unknown as [string, string, string | undefined]
  if (!known.has(name)) fail(`unknown flag: ${a}`)
  flags[name] = value ?? (bools.has(name) ? 'true' : argv[++i] ?? fail(`flag needs an argument: ${a}`))
}
// ziti/tunnel/proxy.go:34 cobra.MinimumNArgs(1)
if (positionals.length === 0) fail('requires at least 1 arg(s), only received 0')

// ---- tunnel/intercept/proxy/proxy.go New() (:98-141): parse svc:port[:tcp|udp] ----
/** `binding`: a proxy.v1 config's bind address (:170); absent, the interceptor's 0.0.0.0. */
interface Service { name: string; port: number; udp: boolean; binding?: string }
const services = new Map<string, Service>()
for (const arg of positionals) {
  const parts = arg.split(':') // :102
  if (parts.length < 2 || parts.length > 3) fail(`failed to initialize proxy interceptor: invalid argument '${arg}'`) // :103-105
  const port = Number.parseInt(parts[1]!, 10)
  if (!/^[+-]?\d+$/.test(parts[1]!)) fail(`failed to initialize proxy interceptor: invalid port specified in '${arg}'`) // :107-110
  let udp = false
  if (parts.length === 3) {
    if (parts[2] === 'udp') udp = true
    else if (parts[2] !== 'tcp') fail(`failed to initialize proxy interceptor: invalid protocol specified in '${arg}', must be tcp or udp`) // :118-127
  }
  // :132 keyed by service name: a second entry for the same service replaces the first.
  services.set(parts[0]!, { name: parts[0]!, port, udp })
}

// ziti/tunnel/root.go:134-151 the CLI agent listens on a unix socket in os.TempDir() unless
// --cli-agent=false; failing to (read-only root) is logged, not fatal.
if (flags['cli-agent'] !== 'false') {
  const sock = join(env.TMPDIR || tmpdir(), `gops-agent.${process.pid}.sock`)
  createUnixServer().on('error', (e) => log('ERROR', `failed to start CLI agent: listen unix ${sock}: bind: ${(e as NodeJS.ErrnoException).code === 'EROFS' ? 'read-only file system' : e.message}`)).listen(sock)
}

// The controller's answer for this identity: dialable services and their proxy.v1 configs.
let dialable: Set<string> | undefined
let proxyV1: Record<string, { port: number; protocols: string[]; binding?: string }> = {}
interface IdentityFile { ztAPI?: string; id?: { cert?: string; key?: string; ca?: string }; standinDialable?: string[]; standinProxyV1?: typeof proxyV1 }
let identity: IdentityFile = {}
try {
  const file = flags.identity!
  identity = JSON.parse(readFileSync(existsSync(file) && statSync(file).isFile() ? file : join(file, 'ziti_id.json'), 'utf8')) as IdentityFile
  if (identity.standinDialable) dialable = new Set(identity.standinDialable)
  proxyV1 = identity.standinProxyV1 ?? {}
} catch (e) { fail(`cannot load identity: ${(e as Error).message}`) }
const viaController = typeof identity.ztAPI === 'string' && identity.ztAPI.startsWith('https://') && !!identity.id?.cert?.includes('BEGIN CERTIFICATE')

/**
 * root.go:220-227 the session asks for these config types; the SDK logs in with the
 * identity's certificate and lists the services it may use (client API, paged).
 */
async function fetchServices(): Promise<void> {
  const pem = (v: string | undefined) => (v ?? '').replace(/^pem:/, '')
  const tls = { ca: pem(identity.id!.ca), cert: pem(identity.id!.cert), key: pem(identity.id!.key) }
  const api = identity.ztAPI!.replace(/\/$/, '')
  const auth = await https(`${api}/authenticate?method=cert`, { ...tls, method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ configTypes: ['ziti-tunneler-client.v1', 'ziti-tunneler-server.v1', 'intercept.v1', 'host.v1', 'host.v2', 'proxy.v1'] }) })
  if (auth.status !== 200) throw new Error(`login failed: ${auth.status} ${auth.body}`)
  const token = (JSON.parse(auth.body) as { data: { token: string } }).data.token
  const names = new Set<string>()
  const configs: typeof proxyV1 = {}
  for (let offset = 0; ; offset += 500) {
    const r = await https(`${api}/services?limit=500&offset=${offset}`, { ...tls, headers: { 'zt-session': token } })
    if (r.status !== 200) throw new Error(`service list failed: ${r.status} ${r.body}`)
    const page = JSON.parse(r.body) as { data: Array<{ name: string; permissions: string[]; config: Record<string, { port: number; protocols: string[]; binding?: string }> }>; meta: { pagination: { totalCount: number } } }
    for (const svc of page.data) {
      if (!svc.permissions.includes('Dial')) continue // intercept/svcpoll.go: only dialable services are intercepted
      names.add(svc.name)
      if (svc.config['proxy.v1']) configs[svc.name] = svc.config['proxy.v1']
    }
    if (offset + 500 >= page.meta.pagination.totalCount) break
  }
  dialable = names
  proxyV1 = configs
}

// proxy.go:41-44 without --svcPollRate proxy mode polls once (rate MaxUint32): services granted
// later get no listener until restart.
const pollSeconds = flags.svcPollRate ? Number(flags.svcPollRate) : undefined

const listening = new Set<string>()
function intercept(s: Service): void {
  const key = `${s.name}/${s.udp ? 'udp' : 'tcp'}`
  if (listening.has(key)) return
  listening.add(key)
  // proxy.go:225-244 / :279-296 the bind address: the interceptor's IP, net.IPv4zero
  // (ziti/tunnel/proxy.go:48), unless proxy.v1 names a binding. (Upstream also resolves an
  // interface name through transport.ResolveLocalBinding; the stand-in takes IPv4 literals.)
  const host = s.binding ?? '0.0.0.0'
  if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(host)) { log('ERROR', `unable to resolve binding '${host}' on service '${s.name}' for ${s.udp ? 'udp' : 'tcp'} proxy`); return }
  if (!s.udp) {
    // proxy.go:246-247 net.Listen("tcp4", <binding>:port)
    // Per-connection errors (a probe's reset) end that connection only, as in Go.
    createTcpServer((c) => { c.on('error', () => c.destroy()); c.end(`ziti-service=${s.name} listener=${s.port} peer=${c.remoteAddress}\n`) })
      .on('error', (e) => log('ERROR', `failed to intercept service: ${e.message}`))
      .listen(s.port, host, () => log('INFO', `service ${s.name} is listening addr=${host}:${s.port}`))
    return
  }
  // proxy.go:299-300 net.ListenUDP("udp4", <binding>:port)
  const sock: Socket = createSocket('udp4')
  sock.on('message', (msg, rinfo) => {
    // udp_vconn/conn.go Write(): replies go out with WriteTo on the unconnected listener. (Since
    // v2.0.0, fcf04d902, an expiring flow no longer closes the listener; 1.6.x closed it.)
    sock.send(`ziti-service=${s.name} listener=${s.port} via=udp got=${msg.toString().trim()}\n`, rinfo.port, rinfo.address)
  })
  sock.on('error', (e) => log('ERROR', `failed to intercept service: ${e.message}`))
  sock.bind(s.port, host, () => log('INFO', `service ${s.name} is listening addr=${host}:${s.port}`))
}

// intercept/svcpoll.go addService: a listener only for services the identity may Dial, after
// login and the first service list (a short delay here stands for the controller round trips).
// proxy.go:143-197 Intercept() runs for every dialable service: one with a proxy.v1 config
// gets a listener whether or not the command line names it (:157-184, the config replaces the
// command line's port and protocols); one with neither is skipped (:186-189). So the ports
// that are open are not the ports admission knew of: the fence must not depend on them.
function poll(): void {
  const names = new Set([...services.keys(), ...Object.keys(proxyV1)])
  for (const name of names) {
    if (dialable && !dialable.has(name)) continue
    const v1 = proxyV1[name]
    if (v1) for (const p of v1.protocols) intercept({ name, port: v1.port, udp: p === 'udp', ...(v1.binding ? { binding: v1.binding } : {}) })
    else intercept(services.get(name)!)
  }
}
const refresh = viaController
  ? () => { fetchServices().then(poll, (e: Error) => log('ERROR', `failed to refresh services: ${e.message}`)) }
  : poll
setTimeout(refresh, viaController ? 0 : Number(env.ZITI_STANDIN_LOGIN_MS ?? 300))
if (pollSeconds !== undefined && pollSeconds > 0) setInterval(refresh, pollSeconds * 1000)
process.on('SIGTERM', () => process.exit(0))
