// The pod's enrollment step (init container `ziti-enroll`, injected for identity: auto): present
// the pod's projected token to the identity controller over HTTPS (verified against
// ZITI_CNI_ENROLL_CA), enroll the one-time JWT it answers with a key made here (ott-enroll.ts),
// and write the identity where the tunneler's entrypoint loads it
// (`$ZITI_IDENTITY_DIR/$ZITI_IDENTITY_BASENAME.json`, openziti/ziti entrypoint.sh:110-127), whole
// or not at all. The tunneler never enrolls, so its restarts cannot strand a spent token.
// Already enrolled (the identity JSON is in the emptyDir): nothing to do. Killed half-way (the
// controller signed the CSR, the file was never written): the kubelet reruns this step, the
// token is spent, and the controller answers a fresh JWT for a re-issued identity.
// Retries while the controller catches up (the pod may be newer than its watch).
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs'
import { request } from 'node:https'
import { enrollOtt } from './ott-enroll.ts'

function env(name: string): string {
  const v = process.env[name]
  if (!v) { process.stderr.write(`ziti-enroll: ${name} is not set\n`); process.exit(2) }
  return v
}

function post(url: string, ca: string, token: string): Promise<{ status: number; body: { jwt?: string; message?: string } }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL('/enroll', url), { method: 'POST', ca, timeout: 15_000, headers: { authorization: `Bearer ${token}`, 'content-length': 0 } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        let body: { jwt?: string; message?: string } = {}
        try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')) } catch { body = { message: 'not JSON' } }
        resolve({ status: res.statusCode ?? 0, body })
      })
    })
    req.on('timeout', () => req.destroy(new Error('no answer within 15 s')))
    req.on('error', reject)
    req.end()
  })
}

async function main(): Promise<number> {
  const dir = env('ZITI_IDENTITY_DIR')
  const base = env('ZITI_IDENTITY_BASENAME')
  const identity = `${dir}/${base}.json`
  if (existsSync(identity) && statSync(identity).size > 0) { process.stderr.write(`ziti-enroll: ${identity} exists: enrolled already\n`); return 0 }
  const url = env('ZITI_CNI_ENROLL_URL')
  const ca = env('ZITI_CNI_ENROLL_CA')
  const tokenFile = env('ZITI_CNI_TOKEN_FILE')
  const deadline = Date.now() + Number(process.env.ZITI_CNI_ENROLL_TIMEOUT_SECONDS ?? '120') * 1000
  for (let attempt = 1; ; attempt++) {
    // Re-read each time: the kubelet rotates the projected token.
    const token = readFileSync(tokenFile, 'utf8').trim()
    let why: string
    try {
      const r = await post(url, ca, token)
      if (r.status === 200 && r.body.jwt) {
        // A failure here is retried like any other: a spent token (this step died after the
        // controller signed its CSR; EnrollmentRefused) makes the next ask re-issue it.
        const json = await enrollOtt(r.body.jwt)
        writeFileSync(`${identity}.tmp`, json, { mode: 0o600 })
        renameSync(`${identity}.tmp`, identity)
        process.stderr.write(`ziti-enroll: enrolled; wrote ${identity}\n`)
        return 0
      }
      why = `HTTP ${r.status}: ${r.body.message ?? ''}`
      // A token the API server refused will not change by waiting; 403 (a pod the controller's
      // API read has not caught up with) and 409 (its re-issue raced another) may.
      if (r.status === 401) { process.stderr.write(`ziti-enroll: refused: ${why}\n`); return 1 }
    } catch (e) {
      why = (e as Error).message
    }
    if (Date.now() > deadline) { process.stderr.write(`ziti-enroll: giving up: ${why}\n`); return 1 }
    process.stderr.write(`ziti-enroll: attempt ${attempt}: ${why}; retrying\n`)
    await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** (attempt - 1), 5000)))
  }
}

main().then((code) => { process.exitCode = code }, (e: unknown) => {
  process.stderr.write(`ziti-enroll: ${(e as Error).message}\n`)
  process.exitCode = 1
})
