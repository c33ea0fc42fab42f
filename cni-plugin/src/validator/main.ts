// ziti-cni-validator entry point: parse the intent from the environment, run the checks,
// exit 0 (intercepted), EXIT_NOT_INTERCEPTED (126) or 2 (bad input).
import { parseIntent, type Intent } from '@ziti-cni/shared'
import { EXIT_NOT_INTERCEPTED, validate } from './validate.ts'

async function main(): Promise<void> {
  const text = process.env.ZITI_CNI_INTERCEPTION
  if (!text) { process.stderr.write('ziti-cni-validator: ZITI_CNI_INTERCEPTION is not set\n'); process.exit(2) }
  let intent: Intent
  try {
    intent = parseIntent(text)
  } catch (e) {
    process.stderr.write(`ziti-cni-validator: ${(e as Error).message}\n`)
    process.exit(2)
  }
  try {
    process.stdout.write(`ziti-cni-validator: ok, ${await validate(intent)}\n`)
  } catch (e) {
    process.stderr.write(`ziti-cni-validator: traffic is NOT intercepted: ${(e as Error).message}\n`)
    process.exit(EXIT_NOT_INTERCEPTED)
  }
}

void main()
