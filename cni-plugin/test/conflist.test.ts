import t from 'tap'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { insertPlugin, removePlugin, restoreConverted, selectPrimary, hasPlugin, parseConf, PLUGIN_TYPE } from '../src/install/conflist.ts'

const dir = new URL('./golden/conflist/', import.meta.url)
const update = process.env.UPDATE_GOLDEN === '1'
const entry = { type: PLUGIN_TYPE, agentSocket: '/var/run/ziti-cni/agent.sock', snapshot: '/var/run/ziti-cni/intents.json', timeoutSeconds: 10 } as const

for (const input of readdirSync(dir).filter((n) => n.includes('.input.'))) {
  t.test(input, async (t) => {
    const content = readFileSync(new URL(input, dir), 'utf8')
    const name = input.endsWith('.conf') ? '10-primary.conf' : '10-primary.conflist'
    const res = insertPlugin({ name, content }, entry)
    const goldenUrl = new URL(input.replace(/\.input\.conf(list)?$/, '.golden.conflist'), dir)
    if (update) writeFileSync(goldenUrl, res.file.content)
    t.equal(res.file.content, readFileSync(goldenUrl, 'utf8'), 'matches golden (UPDATE_GOLDEN=1 rewrites)')
    t.equal(res.file.name, '10-primary.conflist')
    t.equal(res.remove, input.endsWith('.conf') ? '10-primary.conf' : undefined, 'a single .conf is replaced by a .conflist')
    t.ok(res.changed)
    const list = parseConf(res.file)!
    t.equal(list.plugins.at(-1)?.type, PLUGIN_TYPE, 'ziti-cni is last')
    t.ok(hasPlugin(res.file, entry))

    const again = insertPlugin(res.file, entry)
    t.notOk(again.changed, 'inserting twice changes nothing')
    t.equal(again.file.content, res.file.content)
    const changedEntry = insertPlugin(res.file, { ...entry, timeoutSeconds: 5 })
    t.equal(parseConf(changedEntry.file)!.plugins.filter((p) => p.type === PLUGIN_TYPE).length, 1, 'an upgrade replaces our entry, never duplicates')

    const removed = removePlugin(res.file)
    t.ok(removed.changed)
    t.same(parseConf(removed.file)!.plugins, parseConf({ name, content })!.plugins, 'removal restores the original plugin list')
    t.notOk(removePlugin(removed.file).changed, 'removing twice changes nothing')
    if (res.remove) {
      const back = restoreConverted(res.file, { name, content })
      t.same(back, { file: { name, content }, remove: '10-primary.conflist' }, 'uninstall puts the converted .conf back byte for byte')
      const edited = { name: res.file.name, content: res.file.content.replace(`"type": "${PLUGIN_TYPE}"`, `"type": "${PLUGIN_TYPE}"}, {"type": "tuning"`) }
      t.same(restoreConverted(edited, { name, content }).remove, undefined, 'a list the primary changed since is kept as a list')
    }
  })
}

t.test('the primary file is the lexically first valid config', async (t) => {
  const valid = (name: string) => ({ name, content: JSON.stringify({ cniVersion: '1.0.0', name, plugins: [{ type: 'bridge' }] }) })
  t.equal(selectPrimary([valid('10-b.conflist'), valid('05-cilium.conflist')])?.name, '05-cilium.conflist')
  t.equal(selectPrimary([{ name: '00-broken.conflist', content: '{' }, valid('10-b.conflist')])?.name, '10-b.conflist', 'unparsable files are skipped')
  t.equal(selectPrimary([{ name: '01-empty.conflist', content: '{"plugins":[]}' }, valid('10-b.conflist')])?.name, '10-b.conflist', 'a list without plugins is skipped')
  t.equal(selectPrimary([{ name: '00-notes.txt', content: '{}' }, valid('99-last.conflist')])?.name, '99-last.conflist', 'other extensions are ignored')
  t.equal(selectPrimary([{ name: '.hidden.conflist', content: valid('x').content }, valid('50-x.conflist')])?.name, '50-x.conflist', 'dotfiles are ignored')
  t.equal(selectPrimary([]), undefined)
  t.equal(selectPrimary([{ name: '10-x.conf', content: '{"cniVersion":"0.4.0","name":"x","type":"bridge"}' }])?.name, '10-x.conf')
})
