// Property tests: well over 100,000 generated inputs, valid and hostile. Nothing may escape
// but ValidationError, and whatever is accepted must render to a ruleset the kernel loads.
import t from 'tap'
import fc from 'fast-check'
import {
  ValidationError,
  parseExcludeCidrs,
  parseExcludePorts,
  parseIntent,
  parseMode,
  parseSecretRef,
  parseServices,
  renderPlan,
  serializeIntent,
  type Intent,
} from '../src/index.ts'
import { nftIn, rootOnly, scratchNetns } from '../testkit/root.ts'

const hostile = fc.constantFrom('"', "'", '\n', ';', '{', '}', '$(', '`', '\\', '/', ':', '=', ',', '-', '.', '\u0000', '\u202e', '９', 'é', '💥', '99999999999999999999', '1e309', '::', '/33', ' ')
const text = fc.oneof(
  fc.string({ maxLength: 80, unit: 'grapheme' }),
  fc.array(fc.oneof(hostile, fc.string({ maxLength: 6 })), { maxLength: 20 }).map((a) => a.join('')),
)

function onlyValidationErrors(fn: () => unknown): boolean {
  try { fn() } catch (e) {
    if (!(e instanceof ValidationError)) throw e
  }
  return true
}

const accepted: Intent[] = []
function keep(i: Intent) {
  if (accepted.length < 400 && Math.random() < 0.05) accepted.push(i)
}

t.test('user annotation parsers throw only ValidationError', async (t) => {
  const parsers = [parseServices, parseExcludeCidrs, parseExcludePorts, parseMode,
    (v: string) => parseSecretRef('cni.openziti.io/identity-secret', v)]
  fc.assert(fc.property(text, fc.nat(parsers.length - 1), (v, i) => onlyValidationErrors(() => parsers[i]!(v))), { numRuns: 40_000 })
  t.pass('40,000 hostile annotation values')
})

const port = fc.integer({ min: 1, max: 65535 })
const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((a) => a.join('.'))
// Distinct /16 networks: valid intents never overlap.
const v4cidrs = fc.uniqueArray(fc.tuple(fc.integer({ min: 1, max: 223 }), fc.nat(255)), { minLength: 1, maxLength: 40, selector: ([a, b]) => a * 256 + b })
  .map((list) => list.map(([a, b]) => `${a}.${b}.0.0/16`))
const validIntent: fc.Arbitrary<unknown> = fc.oneof(
  fc.record({
    v: fc.constant(1), mode: fc.constant('proxy'), uid: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
    dnat: fc.uniqueArray(fc.record({ dst: v4, proto: fc.constantFrom('tcp', 'udp'), port, to: port }), { minLength: 1, maxLength: 30, selector: (d) => `${d.dst} ${d.proto} ${d.port}` }),
  }).map((o) => ({ ...o, fence: [...new Set(o.dnat.map((d) => d.to))] })),
  fc.record({
    v: fc.constant(1), mode: fc.constant('tproxy'), uid: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
    cidrs: v4cidrs,
    proto: fc.subarray(['tcp', 'udp'], { minLength: 1 }), to: port, dns: fc.option(port, { nil: undefined }),
    excludePorts: fc.uniqueArray(port, { maxLength: 5 }).map((a) => a.map(String)),
  }).filter((o) => o.dns !== o.to).map((o) => ({ ...o, fence: [...new Set([o.to, ...(o.dns === undefined ? [] : [o.dns])])] })),
)

/** Replaces one field anywhere in a valid intent with a hostile value. */
function mutate(o: unknown, path: number, value: unknown): unknown {
  const json = JSON.parse(JSON.stringify(o)) as Record<string, unknown>
  const keys = Object.keys(json)
  const k = keys[path % keys.length]!
  const target = json[k]
  if (Array.isArray(target) && target.length > 0 && typeof target[0] === 'object') {
    const inner = target[path % target.length] as Record<string, unknown>
    const ik = Object.keys(inner)
    inner[ik[path % ik.length]!] = value
  } else json[k] = value
  return json
}

t.test('the intent parser accepts exactly the schema and renders what it accepts', async (t) => {
  const check = (wire: string) => onlyValidationErrors(() => {
    const intent = parseIntent(wire)
    const again = serializeIntent(intent)
    if (serializeIntent(parseIntent(again)) !== again) throw new Error('serialization is not a fixed point')
    renderPlan(intent)
    keep(intent)
  })
  fc.assert(fc.property(validIntent, (o) => {
    const intent = parseIntent(JSON.stringify(o))
    renderPlan(intent)
    keep(intent)
    return true
  }), { numRuns: 20_000 })
  fc.assert(fc.property(validIntent, fc.nat(), fc.oneof(text, fc.integer(), fc.double(), fc.constant(null), fc.jsonValue()),
    (o, path, value) => check(JSON.stringify(mutate(o, path, value)))), { numRuns: 30_000 })
  fc.assert(fc.property(fc.oneof(fc.json(), text), (s) => check(s)), { numRuns: 20_000 })
  t.pass('70,000 generated intents: 20,000 valid, 30,000 mutated, 20,000 arbitrary')
  t.ok(accepted.length > 50, `sampled ${accepted.length} accepted intents for the kernel`)
})

t.test('sampled accepted intents load into the kernel', rootOnly(), async (t) => {
  const ns = scratchNetns()
  t.teardown(ns.remove)
  let loaded = 0
  for (const intent of accepted) {
    nftIn(ns.name, ['-f', '-'], renderPlan(intent).nft)
    loaded++
  }
  t.equal(loaded, accepted.length, `${loaded} sampled rulesets accepted by nft`)
})
