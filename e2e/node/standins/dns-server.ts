// The cluster DNS stand-in (another pod, not Ziti), behaving like CoreDNS's defaults: names in
// the cluster domain that are not Services get NXDOMAIN (so a resolver walking its search path
// moves on), every other name is "forwarded upstream" and answered with a fixed address.
//   dns-server.ts HOST PORT ANSWER [CLUSTER_DOMAIN]
import { createSocket } from 'node:dgram'
import { answerA, nxdomain, questionName } from './dns-wire.ts'

const [host, port, answer, domain = 'cluster.local'] = process.argv.slice(2) as [string, string, string, string?]
const s = createSocket('udp4')
s.on('message', (msg, rinfo) => {
  const { name } = questionName(msg)
  const inCluster = name === domain || name.endsWith(`.${domain}`)
  process.stdout.write(`query ${name} from ${rinfo.address}: ${inCluster ? 'NXDOMAIN' : answer}\n`)
  s.send(inCluster ? nxdomain(msg) : answerA(msg, answer), rinfo.port, rinfo.address)
})
s.bind(Number(port), host, () => process.stdout.write('READY\n'))
