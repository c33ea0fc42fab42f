// Services and Nodes for the API stand-in (kube-api.ts): the resources, and the cluster DNS Service every
// cluster has. Its shape is kubeadm's CoreDNS addon (kubernetes/kubernetes
// cmd/kubeadm/app/phases/addons/dns/manifests.go: kube-system/kube-dns, label
// k8s-app=kube-dns, ports dns/53 UDP, dns-tcp/53 TCP, metrics/9153), and its address kubeadm's
// default (the 10th address of 10.96.0.0/12); EKS picks 10.100.0.10 or 172.20.0.10, which is why
// the webhook reads it instead of assuming it.

export const SERVICE_RESOURCE = { plural: 'services', kind: 'Service', apiVersion: 'v1', namespaced: true, base: '/api/v1' }

/** Nodes too (cluster-scoped), for the agent's startup-taint removal. */
export const NODE_RESOURCE = { plural: 'nodes', kind: 'Node', apiVersion: 'v1', namespaced: false, base: '/api/v1' }

export const KUBEADM_CLUSTER_DNS = '10.96.0.10'

/** The Service as the API server stores it (it fills clusterIPs from clusterIP since 1.20). */
export function kubeDnsService(ips: string[] = [KUBEADM_CLUSTER_DNS], name = 'kube-dns') {
  return {
    apiVersion: 'v1', kind: 'Service',
    metadata: { name, namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns', 'kubernetes.io/name': 'CoreDNS' } },
    spec: {
      selector: { 'k8s-app': 'kube-dns' }, type: 'ClusterIP', clusterIP: ips[0], clusterIPs: ips,
      ipFamilies: ips.map((ip) => (ip.includes(':') ? 'IPv6' : 'IPv4')), ipFamilyPolicy: ips.length > 1 ? 'PreferDualStack' : 'SingleStack',
      ports: [{ name: 'dns', port: 53, protocol: 'UDP', targetPort: 53 }, { name: 'dns-tcp', port: 53, protocol: 'TCP', targetPort: 53 }, { name: 'metrics', port: 9153, protocol: 'TCP', targetPort: 9153 }],
    },
  }
}

/** Every cluster has one: the stand-in starts with it, as a kubeadm cluster would. */
export function seedServices(api: { put: (plural: string, obj: never) => unknown }): void {
  api.put('services', kubeDnsService() as never)
}
