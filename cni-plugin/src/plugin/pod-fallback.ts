// When the agent is down: read the pod straight from the API server with the kubeconfig
// the installer wrote. Plain HTTPS, no Kubernetes client: the executable must start fast.
import { readFileSync } from 'node:fs'
import { request } from 'node:https'
import type { PodRef } from '../cni/spec.ts'

interface Kubeconfig {
  clusters?: Array<{ name: string; cluster: { server: string; 'certificate-authority-data'?: string; 'certificate-authority'?: string } }>
  users?: Array<{ name: string; user: { token?: string; tokenFile?: string } }>
  contexts?: Array<{ name: string; context: { cluster: string; user: string } }>
  'current-context'?: string
}

export interface PodAnnotations {
  uid: string | undefined
  annotations: Record<string, string>
}

/** Reads the installer's kubeconfig (JSON is valid kubeconfig YAML, so we write JSON). */
export function loadKubeconfig(path: string): { server: string; ca: Buffer | undefined; token: string } {
  const kc = JSON.parse(readFileSync(path, 'utf8')) as Kubeconfig
  const ctx = kc.contexts?.find((c) => c.name === kc['current-context']) ?? kc.contexts?.[0]
  const cluster = kc.clusters?.find((c) => c.name === ctx?.context.cluster)?.cluster
  const user = kc.users?.find((u) => u.name === ctx?.context.user)?.user
  if (!cluster?.server || !user) throw new Error(`kubeconfig ${path} has no usable cluster/user`)
  const ca = cluster['certificate-authority-data']
    ? Buffer.from(cluster['certificate-authority-data'], 'base64')
    : cluster['certificate-authority'] ? readFileSync(cluster['certificate-authority']) : undefined
  const token = user.token ?? (user.tokenFile ? readFileSync(user.tokenFile, 'utf8').trim() : '')
  if (!token) throw new Error(`kubeconfig ${path} has no bearer token`)
  return { server: cluster.server, ca, token }
}

/**
 * The API server refused the plugin's own credential (401/403): its ServiceAccount or RBAC is
 * gone, which is what an uninstall that deletes in rendered order looks like.
 */
export class CredentialRefused extends Error {
  override readonly name = 'CredentialRefused'
}

/** GET the pod; undefined when the API says 404. */
export function readPod(kubeconfigPath: string, pod: PodRef, timeoutMs: number): Promise<PodAnnotations | undefined> {
  const kc = loadKubeconfig(kubeconfigPath)
  const url = new URL(`/api/v1/namespaces/${encodeURIComponent(pod.namespace)}/pods/${encodeURIComponent(pod.name)}`, kc.server)
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'GET', ca: kc.ca, headers: { authorization: `Bearer ${kc.token}`, accept: 'application/json' }, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        if (res.statusCode === 404) return resolve(undefined)
        if (res.statusCode === 401 || res.statusCode === 403) return reject(new CredentialRefused(`API server answered ${res.statusCode} for pod ${pod.namespace}/${pod.name}`))
        if (res.statusCode !== 200) return reject(new Error(`API server answered ${res.statusCode} for pod ${pod.namespace}/${pod.name}: ${text.slice(0, 200)}`))
        try {
          const obj = JSON.parse(text) as { metadata?: { uid?: string; annotations?: Record<string, string> } }
          resolve({ uid: obj.metadata?.uid, annotations: obj.metadata?.annotations ?? {} })
        } catch (e) {
          reject(new Error(`API server sent a pod that is not JSON: ${(e as Error).message}`))
        }
      })
    })
    req.on('timeout', () => req.destroy(new Error(`API server did not answer within ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end()
  })
}
