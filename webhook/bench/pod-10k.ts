// A realistic ~10 KB pod as a Deployment creates it: two containers, probes, env, mounts.
import type { V1Pod } from '@kubernetes/client-node'

export function realisticPod(i: number): V1Pod {
  const env = Array.from({ length: 60 }, (_, k) => ({ name: `FEATURE_FLAG_${k}_ENABLED`, value: k % 2 ? 'true' : 'false' }))
  const container = (name: string) => ({
    name, image: `registry.example.com/team/${name}:2.14.3`,
    ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }],
    env: [...env, { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }],
    resources: { requests: { cpu: '250m', memory: '256Mi' }, limits: { memory: '512Mi' } },
    readinessProbe: { httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 5 },
    livenessProbe: { httpGet: { path: '/livez', port: 8080 }, periodSeconds: 10 },
    volumeMounts: [{ name: 'config', mountPath: '/etc/app' }, { name: 'cache', mountPath: '/var/cache/app' }, { name: 'kube-api-access', mountPath: '/var/run/secrets/kubernetes.io/serviceaccount', readOnly: true }],
    securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, readOnlyRootFilesystem: true },
  })
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: {
      generateName: 'billing-api-6d4b8c7f9-', namespace: 'apps',
      labels: { app: 'billing-api', 'pod-template-hash': '6d4b8c7f9', 'app.kubernetes.io/version': '2.14.3', 'app.kubernetes.io/part-of': 'billing', tier: 'backend' },
      annotations: {
        'cni.openziti.io/identity-secret': 'billing-identity',
        'cni.openziti.io/services': 'pg.ziti:5432=postgres, api.ziti:443=billing-api, cache.ziti:6379=redis, audit.ziti:514/udp=audit',
        'kubectl.kubernetes.io/restartedAt': '2026-11-28T03:00:00Z', 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9090',
        request: String(i),
      },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'billing-api-6d4b8c7f9', uid: '5f0c7a1e-3b1d-4c55-9d7e-0a8b3f2c1d4e', controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      serviceAccountName: 'billing-api',
      securityContext: { runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [container('billing-api'), container('billing-worker')],
      volumes: [
        { name: 'config', configMap: { name: 'billing-api-config' } },
        { name: 'cache', emptyDir: { sizeLimit: '1Gi' } },
        { name: 'kube-api-access', projected: { sources: [{ serviceAccountToken: { expirationSeconds: 3607, path: 'token' } }, { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } }] } },
      ],
      tolerations: [{ key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 }, { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 }],
      affinity: { podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { labelSelector: { matchLabels: { app: 'billing-api' } }, topologyKey: 'kubernetes.io/hostname' } }] } },
    } as V1Pod['spec'],
  }
}
