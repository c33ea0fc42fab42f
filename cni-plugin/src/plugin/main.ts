// ziti-cni: the chained CNI executable. Thin: parse, ask the node agent, print the result.
// stdout carries only the CNI result or error JSON; logs go to the log file or stderr.
import { readFileSync } from 'node:fs'
import { agentStatus, callAgent } from './agent-client.ts'
import { pluginLogger } from './log.ts'
import { renderStdout, runPlugin } from './run.ts'

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    process.stdin.on('data', (c: Buffer) => chunks.push(c))
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

async function main(): Promise<void> {
  const stdin = process.env.CNI_COMMAND === 'VERSION' ? '' : await readStdin()
  const out = await runPlugin(process.env, stdin, {
    callAgent, agentStatus,
    readSnapshot: (p) => {
      try { return readFileSync(p, 'utf8') } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
        throw e
      }
    },
    logger: (req) => pluginLogger(process.env, req),
  })
  const text = renderStdout(out)
  if (text) process.stdout.write(text)
  process.exitCode = out.exitCode
}

main().catch((e: unknown) => {
  process.stdout.write(JSON.stringify({ cniVersion: '1.1.0', code: 999, msg: `ziti-cni crashed: ${(e as Error).message}` }) + '\n')
  process.exitCode = 1
})
