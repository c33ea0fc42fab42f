import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { ipCommands, tunCommands, parseIntent, renderPlan, serializeIntent } from '../src/index.ts'
import { FIXTURE_FACTS, FIXTURES } from './fixtures.ts'

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
    const plan = renderPlan(parseIntent(wire), FIXTURE_FACTS[name])
    golden(t, `${name}.nft`, plan.nft)
    golden(t, `${name}.ip`, [...(plan.tun ? tunCommands(plan.tun) : []), ...ipCommands(plan)].map((a) => `ip ${a.join(' ')}\n`).join(''))
    t.equal(renderPlan(parseIntent(wire), FIXTURE_FACTS[name]).nft, plan.nft, 'deterministic: same intent, same bytes')
  })
}

t.test('ebpf routes take the pod\'s address of each family as their source', async (t) => {
  const intent = FIXTURES['tproxy-ebpf-dualstack']!
  const plan = renderPlan(intent, { podIps: ['10.1.2.3', 'fd00::3'] })
  t.same(plan.routes.map((r) => [r.dst, r.src]), [['100.64.0.0/10', '10.1.2.3'], ['fd00:ffff::/64', 'fd00::3']])
  t.same(ipCommands(plan)[0], ['-4', 'route', 'replace', 'local', '100.64.0.0/10', 'dev', 'lo', 'table', 'local', 'src', '10.1.2.3'])
  t.equal(plan.nft, renderPlan(intent).nft, 'the nft transaction does not depend on the addresses')
  t.same(renderPlan(intent, { podIps: ['10.1.2.3'] }).routes.map((r) => r.src), ['10.1.2.3', undefined], 'no v6 address: no v6 source')
  t.same(renderPlan(FIXTURES['tproxy-default']!, { podIps: ['10.1.2.3'] }).routes, renderPlan(FIXTURES['tproxy-default']!).routes, 'the nftables datapath\'s routes do not use it')
})
