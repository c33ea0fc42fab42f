// The `controller` section lives in its own file (deploy/components/controller-identities:
// identity.yaml, one ConfigMap per namespace from the same file), so the webhook and the
// identity controller apply the same attribute policy and point at the same endpoints. It
// replaces the main config's `controller` section; every key is validated as usual.
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { ConfigError, validateConfig, type WebhookConfig } from '../config.ts'

export function withIdentityConfig(mainPath: string | undefined, identityPath: string, env: NodeJS.ProcessEnv): WebhookConfig {
  const read = (p: string): Record<string, unknown> => {
    let text: string
    try { text = readFileSync(p, 'utf8') } catch (e) { throw new ConfigError([`config file ${p}: ${(e as Error).message}`]) }
    try { return (parseYaml(text) ?? {}) as Record<string, unknown> } catch (e) { throw new ConfigError([`${p}: not valid YAML: ${(e as Error).message}`]) }
  }
  const main = mainPath ? read(mainPath) : {}
  const identity = read(identityPath)
  const unknown = Object.keys(identity).filter((k) => k !== 'controller')
  if (unknown.length) throw new ConfigError(unknown.map((k) => `${identityPath}: ${k}: only the controller section belongs here`))
  return validateConfig({ ...main, controller: identity.controller }, env)
}
