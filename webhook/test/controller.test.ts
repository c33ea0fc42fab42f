// The controller client against the fake controller (e2e/node/standins/ziti-controller.ts),
// which follows ../shared/ziti-controller-api.md: one login for many calls, re-login after the
// session expires, a credential without the permission, 429/503 back-off within a deadline,
// paging past 500, escaped filters, and the least-privilege service listing.
import t from 'tap'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { ControllerClient, ControllerError } from '../src/ziti/controller.ts'
import { parseCredential } from '../src/ziti/credential.ts'
import { createControllerMetrics } from '../src/ziti/metrics.ts'
import { quote } from '../src/ziti/zitiql.ts'
import { compileFilter, FakeZitiController } from '../../e2e/node/standins/ziti-controller.ts'

const PERMS = ['identity', 'service.read', 'config.read']

async function setup(t: { teardown: (fn: () => unknown) => void }, perms = PERMS) {
  const fake = new FakeZitiController()
  await fake.listen()
  t.teardown(() => fake.close())
  const { cert, key } = fake.addCertIdentity('ziti-cni-webhook', perms)
  const metrics = createControllerMetrics(new Registry())
  const credential = parseCredential(JSON.stringify({ ztAPI: `${fake.url}/edge/client/v1`, id: { cert: `pem:${cert}`, key: `pem:${key}`, ca: `pem:${fake.ca.certPem}` } }))
  const client = new ControllerClient({ url: fake.url, ca: fake.ca.certPem, credential, metrics, log: pino({ level: 'silent' }) })
  t.teardown(() => client.close())
  return { fake, client, metrics }
}

const soon = () => Date.now() + 5000
const logins = (fake: FakeZitiController) => fake.calls.filter((c) => c.path.includes('/authenticate')).length

t.test('one login serves many calls, also concurrent ones', async (t) => {
  const { fake, client } = await setup(t)
  const ids = await Promise.all([1, 2, 3, 4, 5].map((i) => client.createIdentity({ name: `k8s-apps-web-${i}`, roleAttributes: ['web'], tags: { a: 'b' } }, soon())))
  t.equal(new Set(ids).size, 5)
  for (const id of ids) t.ok(await client.getIdentity(id, soon()))
  t.equal(logins(fake), 1, 'a single cert login')
  const detail = await client.getIdentity(ids[0]!, soon())
  t.match(detail?.enrollment?.ott?.jwt, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'the one-time enrollment JWT')
  t.same(detail?.roleAttributes, ['web'])
})

t.test('an expired session is renewed by one fresh login', async (t) => {
  const { fake, client } = await setup(t)
  await client.listIdentities('', soon())
  fake.expireSessions()
  await client.listIdentities('', soon())
  t.equal(logins(fake), 2)
  t.ok(fake.calls.some((c) => c.status === 401), 'the controller did answer 401 in between')
})

t.test('a credential without the permission is reported as refused, after one re-login', async (t) => {
  const { fake, client } = await setup(t, ['service.read'])
  const e = await client.createIdentity({ name: 'x-y-z', roleAttributes: [], tags: {} }, soon()).catch((err: unknown) => err)
  t.ok(e instanceof ControllerError)
  t.equal((e as ControllerError).failure, 'credential-refused')
  t.equal(logins(fake), 2)
})

t.test('a wrong password is refused at login', async (t) => {
  const fake = new FakeZitiController()
  await fake.listen()
  t.teardown(() => fake.close())
  fake.addAdmin('admin', 'right-password')
  const client = new ControllerClient({ url: fake.url, ca: fake.ca.certPem, credential: parseCredential('{"username":"admin","password":"wrong-password"}'), metrics: createControllerMetrics(new Registry()), log: pino({ level: 'silent' }) })
  t.teardown(() => client.close())
  const e = await client.listIdentities('', soon()).catch((err: unknown) => err) as ControllerError
  t.equal(e.failure, 'credential-refused')
  t.match(e.message, /INVALID_AUTH/)
})

t.test('429 and 503 are retried with back-off; exhausted retries say so', async (t) => {
  const { fake, client, metrics } = await setup(t)
  await client.listIdentities('', soon())
  fake.failNext(2, 429)
  t.equal((await client.listIdentities('', soon())).length, 1, 'succeeds on the third attempt')
  t.equal((await metrics.requests.get()).values.filter((v) => v.labels.status === '429').reduce((a, v) => a + v.value, 0), 2, 'both 429s counted')
  fake.failNext(10, 503)
  const e = await client.listIdentities('', soon()).catch((err: unknown) => err) as ControllerError
  t.equal(e.failure, 'busy')
  t.match(e.message, /503 CLUSTER_HAS_NO_LEADER 4 time/)
})

t.test('the deadline bounds every call, retries included', async (t) => {
  const { fake, client } = await setup(t)
  await client.listIdentities('', soon())
  fake.latencyMs = 2000
  const started = Date.now()
  const e = await client.listIdentities('', Date.now() + 300).catch((err: unknown) => err) as ControllerError
  t.ok(Date.now() - started < 1000, `gave up after ${Date.now() - started} ms`)
  t.equal(e.failure, 'unreachable')
  t.match(e.message, /no answer within/)
})

t.test('a controller that is down is unreachable, quickly', async (t) => {
  const { fake, client } = await setup(t)
  fake.setDown(true)
  const started = Date.now()
  const e = await client.listIdentities('', Date.now() + 3000).catch((err: unknown) => err) as ControllerError
  t.equal(e.failure, 'unreachable')
  t.match(e.message, /cannot reach the OpenZiti controller/)
  t.ok(Date.now() - started < 3000)
})

t.test('lists page past the 500 clamp; filters are escaped', async (t) => {
  const { fake, client } = await setup(t)
  for (let i = 0; i < 620; i++) fake.addAdmin(`bulk-${String(i).padStart(4, '0')}`, 'password', [], false)
  const all = await client.listIdentities(`name contains ${quote('bulk-')}`, soon())
  t.equal(all.length, 620)
  t.ok(fake.calls.some((c) => /limit=500&offset=500/.test(c.path)))
  // A name that would end the string and add a clause if pasted in unescaped.
  const evil = 'x" or name contains "bulk'
  fake.addAdmin(evil, 'password', [], false)
  const hit = await client.listIdentities(`name = ${quote(evil)}`, soon())
  t.same(hit.map((i) => i.name), [evil])
})

t.test('dialable services come with their intercept.v1 and proxy.v1 configs', async (t) => {
  const { fake, client } = await setup(t)
  const icpt = fake.addConfig('pg-intercept', 'intercept.v1', { protocols: ['tcp'], addresses: ['pg.ziti'], portRanges: [{ low: 5432, high: 5432 }] })
  const prx = fake.addConfig('pg-proxy', 'proxy.v1', { port: 15432, protocols: ['tcp'] })
  const pg = fake.addService('postgres', ['db'], [icpt, prx])
  fake.addService('secret', ['vault'], [fake.addConfig('s', 'intercept.v1', { protocols: ['tcp'], addresses: ['s.ziti'], portRanges: [{ low: 1, high: 1 }] })])
  fake.addPolicy('billing-dials-db', 'Dial', ['#billing'], ['#db'])
  const id = await client.createIdentity({ name: 'k8s-apps-api-1', roleAttributes: ['billing'], tags: {} }, soon())
  const services = await client.dialableServices(id, soon())
  t.same(services.map((s) => s.name), ['postgres'], 'only what the policies allow')
  t.same(services[0]!.config, { 'intercept.v1': icpt.data, 'proxy.v1': prx.data })
  t.equal(services[0]!.id, pg.id)
  t.notOk(fake.calls.some((c) => c.path.includes('asIdentity')), 'no admin-only masquerade')
})

t.test('fake controller: the facts the client must not be spared', async (t) => {
  const { fake } = await setup(t)
  t.throws(() => fake.addConfig('bad', 'intercept.v1', { protocols: ['tcp'], addresses: [], portRanges: [] }), /addresses/)
  t.throws(() => fake.addConfig('bad', 'proxy.v1', { port: 80, protocols: ['tcp'], extra: 1 }), /Additional property extra/)
  t.throws(() => compileFilter(`name = 'single'`), /double-quoted/)
  t.throws(() => compileFilter('name = "unterminated'), /unterminated/)
  t.throws(() => compileFilter('nope = "x"'), /unknown symbol/)
  t.ok(compileFilter(`name = ${quote('a"b\\c')}`)({ name: 'a"b\\c' }))
})

t.test('credential files: identity JSON or updb, and clear refusals', async (t) => {
  t.throws(() => parseCredential('not json'), /not JSON/)
  t.throws(() => parseCredential('{"id":{"cert":"file:///x","key":"file:///y"}}'), /without a PEM/)
  t.throws(() => parseCredential('{"username":"ab","password":"12345"}'), /4-100/)
  t.throws(() => parseCredential('{}'), /neither/)
  t.equal(parseCredential('{"username":"admin","password":"secret"}').kind, 'updb')
})
