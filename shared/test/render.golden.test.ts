import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { ipCommands, parseIntent, renderPlan, serializeIntent } from '../src/index.ts'
import { FIXTURES } from './fixtures.ts'

const dir = new URL('./golden/', import.meta.url)
const update = process.env.UPDATE_GOLDEN === '1'

function golden(t: { equal: (a: string, b: string, m: string) => void }, file: string, actual: string): void {
  const url = new URL(file, dir)
  if (update) writeFileSync(url, actual)
  t.equal(actual, readFileSync(url, 'utf8'), `${file} matches its golden file (UPDATE_GOLDEN=1 rewrites)`)
}

for (const [name, intent] of Object.entries(FIXTURES)) {
  t.test(name, async (t) => {
    // Rendering goes through the wire format, as the agent does.
    const wire = serializeIntent(intent)
    const plan = renderPlan(parseIntent(wire))
    golden(t, `${name}.nft`, plan.nft)
    golden(t, `${name}.ip`, ipCommands(plan).map((a) => `ip ${a.join(' ')}\n`).join(''))
    t.equal(renderPlan(parseIntent(wire)).nft, plan.nft, 'deterministic: same intent, same bytes')
  })
}
