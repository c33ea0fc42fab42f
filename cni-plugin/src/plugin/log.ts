// The CNI executable's logger: JSON lines to a file or stderr, never stdout (stdout is the result).
import { appendFileSync } from 'node:fs'
import type { CniRequest } from '../cni/request.ts'

export type Level = 'debug' | 'info' | 'warn' | 'error'
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 }

export interface Logger {
  log(level: Level, msg: string, fields?: Record<string, unknown>): void
}

export function createLogger(base: Record<string, unknown>, file: string | undefined, min: Level = 'info'): Logger {
  return {
    log(level, msg, fields) {
      if (ORDER[level] < ORDER[min]) return
      const line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...base, ...fields }) + '\n'
      try {
        if (file) appendFileSync(file, line, { mode: 0o600 })
        else process.stderr.write(line)
      } catch {
        // Logging must never change the CNI result.
      }
    },
  }
}

/** The plugin's logger for one invocation: the same fields whether the executable or the agent (EXEC) runs it. */
export function pluginLogger(env: NodeJS.ProcessEnv, req: CniRequest | undefined): Logger {
  return createLogger(
    { plugin: 'ziti-cni', command: env.CNI_COMMAND, containerId: req?.containerId, pod: req?.pod ? `${req.pod.namespace}/${req.pod.name}` : undefined },
    req?.conf.logFile,
  )
}
