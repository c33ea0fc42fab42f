import t from 'tap'
import { podIngress, ValidationError } from '../src/index.ts'

t.test('the ports the pod declares, and only the app\'s', async (t) => {
  t.same(podIngress(undefined), [], 'no spec: nothing gets in')
  t.same(podIngress({
    initContainers: [
      { name: 'ziti-tunnel', ports: [{ containerPort: 15100 }], startupProbe: { tcpSocket: { port: 15100 } } },
      { name: 'ziti-cni-validator', ports: [{ containerPort: 1 }] },
      { name: 'native-helper', ports: [{ containerPort: 9443, protocol: 'TCP' }] },
    ],
    containers: [{
      name: 'app',
      ports: [{ containerPort: 8080 }, { containerPort: 5353, protocol: 'UDP' }, { containerPort: 9999, protocol: 'SCTP' }, { containerPort: 8080, protocol: 'TCP' }],
      livenessProbe: { httpGet: { port: 'http' } },
      readinessProbe: { tcpSocket: { port: 8081 } },
      startupProbe: { grpc: { port: 9090 } },
    }],
  }), [{ proto: 'tcp', port: 8080 }, { proto: 'tcp', port: 8081 }, { proto: 'tcp', port: 9090 }, { proto: 'tcp', port: 9443 }, { proto: 'udp', port: 5353 }],
  'containerPorts (TCP default, UDP), numeric probe ports as TCP; the sidecar, the validator and SCTP never; sorted, once each')
  t.same(podIngress({ containers: [{ name: 'a', ports: [{ containerPort: 0 }, { containerPort: 70000 }, { containerPort: 1.5 }] }] }), [], 'what is not a port is ignored (the API server refuses it anyway)')
  const many = { containers: [{ name: 'a', ports: Array.from({ length: 1100 }, (_, i) => ({ containerPort: i + 1 })) }] }
  t.throws(() => podIngress(many), new ValidationError('spec.containers[*].ports', 'the pod declares 1100 inbound ports, more than the limit of 1024'))
})
