// The cluster DNS stand-in (another pod, not Ziti), behaving like CoreDNS's defaults: names in
// the cluster domain that are not Services get NXDOMAIN (so a resolver walking its search path
// moves on), every other name is "forwarded upstream" and answered with fixed addresses: an A
// query with the IPv4 ones, an AAAA query with the IPv6 ones, NOERROR and no answer when there
// are none of that family. Names under an NXDOMAIN suffix are ones the upstream does not know
// (e.g. `ziti`: no such top-level domain on the Internet, so a real upstream says NXDOMAIN).
//   dns-server.ts HOST PORT ANSWER[,ANSWER...] [CLUSTER_DOMAIN [NXDOMAIN_SUFFIX...]]
import { createSocket } from 'node:dgram'
import { answer, nxdomain, questionName } from './dns-wire.ts'

const [host, port, answers, domain = 'cluster.local', ...unknown] = process.argv.slice(2) as [string, string, string, string?, ...string[]]
const ips = answers.split(',')
const under = (name: string, suffix: string) => name === suffix || name.endsWith(`.${suffix}`)
const s = createSocket('udp4')
s.on('message', (msg, rinfo) => {
  const { name, type } = questionName(msg)
  const nx = under(name, domain) || unknown.some((u) => under(name, u))
  process.stdout.write(`query ${name} type ${type} from ${rinfo.address}: ${nx ? 'NXDOMAIN' : answers}\n`)
  s.send(nx ? nxdomain(msg) : answer(msg, ips), rinfo.port, rinfo.address)
})
s.bind(Number(port), host, () => process.stdout.write('READY\n'))
