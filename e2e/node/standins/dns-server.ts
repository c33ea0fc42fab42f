// A DNS server stand-in answering every A query with a fixed address: the sidecar's DNS
// port (captured queries) or the "cluster DNS" in another netns (queries that escaped capture).
import { createSocket } from 'node:dgram'
import { answerA, questionName } from './dns-wire.ts'

const [host, port, answer] = process.argv.slice(2) as [string, string, string]
const s = createSocket('udp4')
s.on('message', (msg, rinfo) => {
  process.stdout.write(`query ${questionName(msg).name} from ${rinfo.address}\n`)
  s.send(answerA(msg, answer), rinfo.port, rinfo.address)
})
s.bind(Number(port), host, () => process.stdout.write('READY\n'))
