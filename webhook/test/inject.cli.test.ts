import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse } from 'yaml'
import { parseIntent } from '@ziti-cni/shared'

const cli = new URL('../src/cli/inject.ts', import.meta.url).pathname
const example = new URL('../examples/pod-proxy.yaml', import.meta.url).pathname
const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' })

t.test('prints the mutated pod as YAML and as JSON', async (t) => {
  const y = run(['-f', example])
  t.equal(y.status, 0, y.stderr)
  const pod = parse(y.stdout)
  t.same(pod.spec.initContainers.map((c: { name: string }) => c.name), ['ziti-cni-validator', 'ziti-tunnel'])
  t.equal(parseIntent(pod.metadata.annotations['cni.openziti.io/interception']).mode, 'proxy')
  const j = run(['-f', example, '-o', 'json'])
  t.same(JSON.parse(j.stdout), pod, 'same pod either way')
})

t.test('same messages as the webhook, on stderr, non-zero exit', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-inj-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const bad = join(dir, 'bad.yaml')
  writeFileSync(bad, 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n  annotations:\n    cni.openziti.io/identity-secret: id\n    cni.openziti.io/services: "pg.ziti:5432=postgres, pg.ziti:99999=pg"\nspec:\n  containers: [{name: app, image: a/b:1, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}]\n')
  const r = run(['-f', bad])
  t.equal(r.status, 1)
  t.equal(r.stderr, 'ziti-cni: cni.openziti.io/services: entry 2 "pg.ziti:99999=pg": port 99999 is out of range 1-65535\n')
  t.equal(r.stdout, '')
  const cfg = join(dir, 'config.yaml')
  writeFileSync(cfg, 'sidecarUid: 0\n')
  const c = run(['-f', example, '--config', cfg])
  t.equal(c.status, 2)
  t.match(c.stderr, /sidecarUid: must be an integer in 1-2147483647/)
  t.equal(run(['-f', example, '-o', 'xml']).status, 2)
  const notPod = join(dir, 'dep.yaml')
  writeFileSync(notPod, 'kind: Deployment\n')
  t.match(run(['-f', notPod]).stderr, /expected a Pod manifest, got kind "Deployment"/)
})

t.test('--config changes the injection', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zcni-inj-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cfg = join(dir, 'config.yaml')
  writeFileSync(cfg, 'nativeSidecar: false\nproxy:\n  portBase: 20000\n')
  const pod = parse(run(['-f', example, '--config', cfg]).stdout)
  t.equal(pod.spec.containers[0].name, 'ziti-tunnel', 'regular container on older clusters')
  t.same(pod.spec.containers[0].args, ['proxy', '--svcPollRate=60', '--cli-agent=false', 'postgres:20000', 'billing-api:20001'])
})

t.test('relative paths are the caller\'s (pnpm runs us in the package dir and sets INIT_CWD)', async (t) => {
  const repo = new URL('../../', import.meta.url).pathname
  const r = spawnSync(process.execPath, [cli, '-f', 'webhook/examples/pod-proxy.yaml', '-o', 'json'], { encoding: 'utf8', cwd: new URL('../', import.meta.url).pathname, env: { ...process.env, INIT_CWD: repo } })
  t.equal(r.status, 0, r.stderr)
  t.equal(JSON.parse(r.stdout).kind, 'Pod', 'stdout is only the pod')
})
