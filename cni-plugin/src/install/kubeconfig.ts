// The kubeconfig the CNI executable uses on its fallback path. JSON (a valid kubeconfig)
// so the executable parses it without a YAML library.

export interface KubeconfigInput {
  server: string
  caData: Buffer
  token: string
}

export function renderKubeconfig(input: KubeconfigInput): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'local', cluster: { server: input.server, 'certificate-authority-data': input.caData.toString('base64') } }],
    users: [{ name: 'ziti-cni', user: { token: input.token } }],
    contexts: [{ name: 'ziti-cni', context: { cluster: 'local', user: 'ziti-cni' } }],
    'current-context': 'ziti-cni',
  }, null, 2) + '\n'
}

/** In-cluster API address from the environment the kubelet gives every pod. */
export function inClusterServer(env: NodeJS.ProcessEnv): string | undefined {
  const host = env.KUBERNETES_SERVICE_HOST
  const port = env.KUBERNETES_SERVICE_PORT
  if (!host || !port) return undefined
  return `https://${host.includes(':') ? `[${host}]` : host}:${port}`
}
