// A plain server on another "pod": proves that non-Ziti traffic flows untouched.
import { createServer } from 'node:net'
const [host, port] = process.argv.slice(2) as [string, string]
createServer((c) => { c.on('error', () => c.destroy()); c.end(`direct server=${host}:${port} peer=${c.remoteAddress}\n`) }).listen(Number(port), host, () => process.stdout.write('READY\n'))
