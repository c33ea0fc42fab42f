// The cluster DNS Service's ClusterIP(s): where tproxy and tun pods resolve names that are not
// Ziti's (after the tunneler). Found, not assumed: kubeadm and kind put it at 10.96.0.10, EKS at
// 10.100.0.10 or 172.20.0.10 (by VPC range), GKE elsewhere. ziti-k8s-agent reads the same
// Service. `tproxy.clusterDns` in the config overrides it; empty (the default) means "follow
// `tproxy.clusterDnsService`". This file is pure; cluster-dns-watch.ts follows the Service.
import type { V1Service } from '@kubernetes/client-node'
import { isDnsName, parseAddress } from '@ziti-cni/shared'

export interface ServiceRef { namespace: string; name: string }

/** `namespace/name` -> the Service; a string is the problem. */
export function parseServiceRef(text: string): ServiceRef | string {
  const parts = text.split('/')
  if (parts.length !== 2 || !isDnsName(parts[0]!) || !isDnsName(parts[1]!) || parts[0]!.includes('.') || parts[1]!.includes('.')) return 'must be namespace/name of a Service (e.g. kube-system/kube-dns)'
  return { namespace: parts[0]!, name: parts[1]! }
}

/**
 * The Service's cluster IPs, primary family first (spec.clusterIPs, else spec.clusterIP, as the
 * API server fills both since 1.20). A headless Service ("None") has no address pods could use.
 */
export function clusterDnsAddresses(svc: V1Service): string[] | string {
  const ips = svc.spec?.clusterIPs?.length ? svc.spec.clusterIPs : svc.spec?.clusterIP ? [svc.spec.clusterIP] : []
  if (ips.includes('None')) return 'is headless (clusterIP: None); pods need a Service address for their resolver'
  const bad = ips.find((ip) => typeof parseAddress(ip) === 'string')
  if (bad !== undefined) return `has a cluster IP that is not an address: ${JSON.stringify(bad)}`
  if (ips.length === 0) return 'has no cluster IP yet'
  return ips
}

/** The admission-time refusal for a pod whose resolver needs the cluster DNS while it is unknown. */
export function clusterDnsUnknown(service: string, why: string): string {
  return `the cluster DNS is unknown (Service ${service} ${why}); the pod's resolver would have no server for names that are not Ziti services. Set tproxy.clusterDns in the webhook config, or tproxy.clusterDnsService to the Service your cluster uses`
}
