// The agent's Kubernetes client: the few calls it makes (list+watch pods, GET a pod, a node and
// its DaemonSet, POST an Event, DELETE a pod, JSON-patch its node) over node:https. Not
// @kubernetes/client-node: loading that package alone costs the agent ~80 MiB of resident memory
// (its generated models and their dependencies; bench/rss.ts), on every node of the cluster.
// What it reads of a kubeconfig is what client-node 2.0.1 reads (config_types.js
// clusterIterator/userIterator, config.js:259-300 loadFromCluster, :435-444 relative paths);
// credentials it cannot use are refused by name instead of being ignored.
import { readFileSync } from 'node:fs'
import type { IncomingMessage } from 'node:http'
import { request, type RequestOptions } from 'node:https'
import { isIPv6 } from 'node:net'
import { dirname, isAbsolute, join } from 'node:path'
import { parse as parseYaml } from 'yaml'
import { resendWhileAsked, retryAfterMs } from '../../../shared/src/backoff.ts'
import { ApiError, checkResponse, type ApiGet } from './reflector.ts'

export const SERVICEACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount'
/** client-node file_auth.js and client-go's cached token source: re-read a token file after 60 s. */
const TOKEN_REREAD_MS = 60_000

/** Where the API is and how to authenticate to it: data inline, or the file to read it from. */
export interface KubeConnection {
  server: string
  ca?: { data: string } | { file: string }
  insecureSkipTlsVerify?: boolean
  tlsServerName?: string
  token?: string
  tokenFile?: string
  cert?: { data: string } | { file: string }
  key?: { data: string } | { file: string }
}

export class KubeconfigError extends Error {
  override readonly name = 'KubeconfigError'
}

type Doc = Record<string, unknown>
const obj = (v: unknown): Doc | undefined => (v && typeof v === 'object' && !Array.isArray(v) ? v as Doc : undefined)
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined)

/** Pure: the current context's connection from a parsed kubeconfig; relative paths from `baseDir`. */
export function kubeconfigConnection(doc: unknown, baseDir: string): KubeConnection {
  const d = obj(doc)
  if (!d) throw new KubeconfigError('kubeconfig: not a mapping')
  const contextName = str(d['current-context'])
  if (!contextName) throw new KubeconfigError('kubeconfig: current-context is not set')
  const named = (list: string, name: string, field: string): Doc => {
    const entries = Array.isArray(d[list]) ? d[list] as unknown[] : []
    const i = entries.findIndex((e) => obj(e)?.name === name)
    if (i < 0) throw new KubeconfigError(`kubeconfig: ${list} has no entry named ${JSON.stringify(name)}`)
    const inner = obj(obj(entries[i])![field])
    if (!inner) throw new KubeconfigError(`kubeconfig: ${list}[${i}].${field} is missing`)
    return inner
  }
  const context = named('contexts', contextName, 'context')
  const cluster = named('clusters', str(context.cluster) ?? '', 'cluster')
  const userName = str(context.user)
  const user = userName ? named('users', userName, 'user') : {}
  const server = str(cluster.server)
  if (!server) throw new KubeconfigError(`kubeconfig: cluster ${JSON.stringify(context.cluster)} has no server`)
  for (const k of ['exec', 'auth-provider', 'username', 'password', 'as']) {
    if (user[k] !== undefined) throw new KubeconfigError(`kubeconfig: users[${JSON.stringify(userName)}].user.${k} is not supported by the agent; use token, tokenFile or client-certificate/client-key`)
  }
  const path = (p: string) => (isAbsolute(p) ? p : join(baseDir, p))
  const source = (data: unknown, file: unknown) => (str(data) ? { data: Buffer.from(str(data)!, 'base64').toString('utf8') } : str(file) ? { file: path(str(file)!) } : undefined)
  const c: KubeConnection = { server: server.replace(/\/$/, '') }
  const ca = source(cluster['certificate-authority-data'], cluster['certificate-authority'])
  if (ca) c.ca = ca
  if (cluster['insecure-skip-tls-verify'] === true) c.insecureSkipTlsVerify = true
  if (str(cluster['tls-server-name'])) c.tlsServerName = str(cluster['tls-server-name'])!
  if (str(user.token)) c.token = str(user.token)!
  else if (str(user.tokenFile)) c.tokenFile = path(str(user.tokenFile)!)
  const cert = source(user['client-certificate-data'], user['client-certificate'])
  const key = source(user['client-key-data'], user['client-key'])
  if (!cert !== !key) throw new KubeconfigError(`kubeconfig: users[${JSON.stringify(userName)}].user needs both client-certificate and client-key, or neither`)
  if (cert && key) { c.cert = cert; c.key = key }
  return c
}

/** Pure: the in-cluster connection (the pod's service account), as client-node's loadFromCluster. */
export function inClusterConnection(env: NodeJS.ProcessEnv, dir = SERVICEACCOUNT_DIR): KubeConnection {
  const host = env.KUBERNETES_SERVICE_HOST
  const port = env.KUBERNETES_SERVICE_PORT
  if (!host || !port) throw new KubeconfigError('not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (pass --kubeconfig)')
  return { server: `https://${isIPv6(host) ? `[${host}]` : host}:${port}`, ca: { file: join(dir, 'ca.crt') }, tokenFile: join(dir, 'token') }
}

export function loadConnection(kubeconfig: string | undefined, env: NodeJS.ProcessEnv): KubeConnection {
  if (!kubeconfig) return inClusterConnection(env)
  let doc: unknown
  try {
    doc = parseYaml(readFileSync(kubeconfig, 'utf8'))
  } catch (e) {
    throw new KubeconfigError(`kubeconfig ${kubeconfig}: ${(e as Error).message}`)
  }
  return kubeconfigConnection(doc, dirname(kubeconfig))
}

export interface RequestBody { body: unknown; contentType?: string }

export interface KubeClient {
  readonly server: string
  /** The JSON body of a 2xx answer; an ApiError (status, reason, message) otherwise. */
  json<T>(method: string, pathAndQuery: string, body?: RequestBody): Promise<T>
  /** GET, for the reflector's list+watch. */
  get: ApiGet
}

export function createKubeClient(c: KubeConnection): KubeClient {
  const url0 = new URL(c.server)
  // The API is HTTPS: a token never goes over plain http.
  if (url0.protocol !== 'https:') throw new KubeconfigError(`the API server must be https, not ${url0.protocol} (${c.server})`)
  const read = (s: { data: string } | { file: string }) => ('data' in s ? s.data : readFileSync(s.file, 'utf8'))
  let token = c.token
  let tokenReadAt = -Infinity
  const bearer = () => {
    if (c.tokenFile && Date.now() - tokenReadAt > TOKEN_REREAD_MS) { token = readFileSync(c.tokenFile, 'utf8').trim(); tokenReadAt = Date.now() }
    return token
  }
  // The CA and client pair are read per request too (a rotated file is picked up), and are small.
  const options = (): RequestOptions => {
    const t = bearer()
    return {
      headers: { accept: 'application/json', ...(t ? { authorization: `Bearer ${t}` } : {}) },
      ...(c.ca ? { ca: read(c.ca) } : {}),
      ...(c.cert && c.key ? { cert: read(c.cert), key: read(c.key) } : {}),
      ...(c.insecureSkipTlsVerify ? { rejectUnauthorized: false } : {}),
      ...(c.tlsServerName ? { servername: c.tlsServerName } : {}),
    }
  }
  const send = (method: string, pathAndQuery: string, body?: RequestBody, signal?: AbortSignal) => new Promise<IncomingMessage>((resolve, reject) => {
    const o = options()
    const payload = body ? Buffer.from(JSON.stringify(body.body)) : undefined
    if (payload) o.headers = { ...o.headers, 'content-type': body!.contentType ?? 'application/json', 'content-length': payload.length }
    const req = request(new URL(c.server + pathAndQuery), { ...o, method, ...(signal ? { signal } : {}) }, resolve)
    req.on('error', reject)
    req.end(payload)
  })
  return {
    server: c.server,
    async json<T>(method: string, pathAndQuery: string, body?: RequestBody): Promise<T> {
      // A 429 (APF) or a 5xx with Retry-After is sent again after that long, as client-go does.
      const raw = await resendWhileAsked(() => send(method, pathAndQuery, body), (r) => retryAfterMs(r.statusCode ?? 0, r.headers['retry-after']), (r) => r.resume())
      const res = await checkResponse(raw)
      const chunks: Buffer[] = []
      for await (const chunk of res) chunks.push(chunk as Buffer)
      const text = Buffer.concat(chunks).toString('utf8')
      try {
        return JSON.parse(text) as T
      } catch {
        throw new ApiError(res.statusCode ?? 0, 'BadResponse', `${method} ${pathAndQuery}: the answer is not JSON: ${text.slice(0, 200)}`)
      }
    },
    get: (pathAndQuery, signal) => send('GET', pathAndQuery, undefined, signal),
  }
}

/** A path segment (namespace, name) as the API expects it. */
export const seg = (s: string): string => encodeURIComponent(s)
