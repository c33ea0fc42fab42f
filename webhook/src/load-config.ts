// Reads the config file (YAML or JSON) and validates it; the only file I/O for config.
import { existsSync, readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { ConfigError, validateConfig, type WebhookConfig } from './config.ts'

export const DEFAULT_CONFIG_PATH = '/etc/ziti-cni/config.yaml'

/** An explicitly named file must exist; the default path may be absent (defaults apply). */
export function loadConfig(path: string | undefined, env: NodeJS.ProcessEnv): WebhookConfig {
  const file = path ?? env.WEBHOOK_CONFIG ?? DEFAULT_CONFIG_PATH
  const explicit = path !== undefined || env.WEBHOOK_CONFIG !== undefined
  if (!existsSync(file)) {
    if (explicit) throw new ConfigError([`config file ${file} does not exist`])
    return validateConfig({}, env)
  }
  let raw: unknown
  try {
    raw = parseYaml(readFileSync(file, 'utf8'))
  } catch (e) {
    throw new ConfigError([`${file}: not valid YAML: ${(e as Error).message}`])
  }
  return validateConfig(raw ?? {}, env)
}
