// The admin CLI, run as a user would: `pnpm run ziti-cni render|inspect`.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { renderPlan, parseIntent } from '@ziti-cni/shared'
import { rootOnly, scratchNetns, nftIn } from '../../shared/testkit/root.ts'

const cli = new URL('../src/cli/main.ts', import.meta.url).pathname
const dir = mkdtempSync(join(tmpdir(), 'zcni-cli-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const intent = '{"v":1,"mode":"tproxy","uid":2171,"cidrs":["100.64.0.0/10"],"proto":["tcp","udp"],"to":15001,"dns":15053,"fence":[15001,15053]}'
const podYaml = join(dir, 'pod.yaml')
writeFileSync(podYaml, `apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n    cni.openziti.io/interception: '${intent}'\nspec:\n  containers: [{name: app, image: app}]\n`)
const run = (args: string[], input?: string) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', input })

t.test('render --format nft prints exactly the transaction ADD applies', async (t) => {
  const r = run(['render', '-f', podYaml, '--format', 'nft'])
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout, renderPlan(parseIntent(intent)).nft)
})

t.test('render --format json prints the whole plan', async (t) => {
  const r = run(['render', '-f', podYaml])
  const plan = JSON.parse(r.stdout)
  t.equal(plan.mode, 'tproxy')
  t.same(plan.ip[0], ['ip', '-4', 'route', 'replace', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '2171'])
})

t.test('invalid input exits non-zero with the validation error and no stack trace', async (t) => {
  const bad = join(dir, 'bad.json')
  writeFileSync(bad, JSON.stringify({ metadata: { annotations: { 'cni.openziti.io/interception': '{"v":9}' } } }))
  const r = run(['render', '-f', bad])
  t.equal(r.status, 1)
  t.equal(r.stderr, 'ziti-cni: cni.openziti.io/interception: field v: unsupported intent version 9 (this build understands 1)\n')
  const none = join(dir, 'none.yaml')
  writeFileSync(none, 'metadata: {name: x}\n')
  const r2 = run(['render', '-f', none])
  t.equal(r2.status, 2)
  t.match(r2.stderr, /has no cni\.openziti\.io\/interception annotation/)
  t.notMatch(r2.stderr, /at .*\.ts:\d+/, 'no stack trace')
  t.equal(run(['render', '-f', podYaml, '--format', 'xml']).status, 2)
})

t.test('render output is accepted by nft -c, and inspect reports MATCH then DRIFT', rootOnly(['nft', 'ip', 'nsenter']), async (t) => {
  const ns = scratchNetns()
  t.teardown(ns.remove)
  const nft = run(['render', '-f', podYaml, '--format', 'nft']).stdout
  const check = spawnSync('ip', ['netns', 'exec', ns.name, 'nft', '-c', '-f', '-'], { input: nft, encoding: 'utf8' })
  t.equal(check.status, 0, check.stderr)
  nftIn(ns.name, ['-f', '-'], nft)
  const ok = run(['inspect', '--netns', ns.path, '-f', podYaml])
  t.equal(ok.status, 0, ok.stderr)
  t.match(ok.stdout, /MATCH: live table equals the pod's intent/)
  nftIn(ns.name, ['delete', 'chain', 'inet', 'ziti_cni', 'dns_output'])
  const drift = run(['inspect', '--netns', ns.path, '-f', podYaml])
  t.equal(drift.status, 1)
  t.match(drift.stdout, /DRIFT/)
  const host = run(['inspect', '--netns', '/proc/self/ns/net'])
  t.match(host.stderr, /refusing to program .*host's network namespace/, 'the host netns is refused')
})
