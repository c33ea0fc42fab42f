// The CNI spec's types, codes and result conversion (spec 1.1, chained plugin view).
// Pure: no environment, no stdin, no files.

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number]
export const CURRENT_VERSION: CniVersion = '1.1.0'

export type Command = 'ADD' | 'DEL' | 'CHECK' | 'VERSION' | 'STATUS' | 'GC'

/** Well-known error codes (spec section "Error"); 100+ are this plugin's own. */
export const ErrorCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnv: 4,
  IoFailure: 5,
  DecodeFailure: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  PluginNotAvailable: 50,
  /** The pod's interception annotation was refused by the shared schema. */
  InvalidIntent: 101,
  /** The pod could not be read from the Kubernetes API. */
  PodLookupFailed: 102,
  /** nft/ip inside the pod's netns failed; nothing was left half-applied. */
  ProgrammingFailed: 103,
  /** CHECK: the live table differs from what ADD programmed. */
  Drift: 104,
} as const

export class CniError extends Error {
  override readonly name = 'CniError'
  readonly code: number
  readonly details: string
  constructor(code: number, msg: string, details = '') {
    super(msg)
    this.code = code
    this.details = details
  }
  toJSON(cniVersion: string): { cniVersion: string; code: number; msg: string; details?: string } {
    return { cniVersion, code: this.code, msg: this.message, ...(this.details ? { details: this.details } : {}) }
  }
}

export interface NetConf {
  cniVersion: string
  name: string
  type: string
  prevResult?: CniResult
  runtimeConfig?: Record<string, unknown>
  [key: string]: unknown
}

export interface IpConfig {
  address: string
  gateway?: string
  interface?: number
  version?: '4' | '6'
}

export interface CniResult {
  cniVersion: string
  interfaces?: Array<{ name: string; mac?: string; sandbox?: string; [k: string]: unknown }>
  ips?: IpConfig[]
  routes?: Array<{ dst: string; gw?: string; [k: string]: unknown }>
  dns?: Record<string, unknown>
  [key: string]: unknown
}

export function isSupportedVersion(v: unknown): v is CniVersion {
  return typeof v === 'string' && (SUPPORTED_VERSIONS as readonly string[]).includes(v)
}

function major(v: string): number {
  return Number(v.split('.')[0])
}

/** The commands each version knows (STATUS and GC arrived in 1.1.0, CHECK in 0.4.0). */
export function commandAllowed(cmd: Command, version: CniVersion): boolean {
  if (cmd === 'STATUS' || cmd === 'GC') return version === '1.1.0'
  if (cmd === 'CHECK') return version !== '0.3.0' && version !== '0.3.1'
  return true
}

/**
 * Converts a prevResult to the target version. 0.3.x/0.4.0 results carry `ips[].version`,
 * 1.x results do not; everything else is the same shape.
 */
export function convertResult(result: CniResult, to: CniVersion): CniResult {
  const out: CniResult = { ...result, cniVersion: to }
  if (result.ips) {
    out.ips = result.ips.map((ip) => {
      const copy: IpConfig = { ...ip }
      if (major(to) >= 1) delete copy.version
      else copy.version = ip.address.includes(':') ? '6' : '4'
      return copy
    })
  }
  return out
}

export function versionResult(): { cniVersion: CniVersion; supportedVersions: readonly CniVersion[] } {
  return { cniVersion: CURRENT_VERSION, supportedVersions: SUPPORTED_VERSIONS }
}

/** Parses `CNI_ARGS` (`K=V;K=V`); malformed pairs are an error, not silently skipped. */
export function parseCniArgs(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  if (!text) return out
  for (const pair of text.split(';')) {
    if (pair === '') continue
    const eq = pair.indexOf('=')
    if (eq <= 0) throw new CniError(ErrorCode.InvalidEnv, `CNI_ARGS: malformed pair ${JSON.stringify(pair)} (expected KEY=VALUE)`)
    out[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  return out
}

export interface PodRef {
  namespace: string
  name: string
  uid: string | undefined
}

/** A call without K8S_POD_NAMESPACE/NAME is not for a Kubernetes pod: the plugin passes through. */
export function podRefFromArgs(args: Record<string, string>): PodRef | undefined {
  const namespace = args.K8S_POD_NAMESPACE
  const name = args.K8S_POD_NAME
  if (!namespace || !name) return undefined
  return { namespace, name, uid: args.K8S_POD_UID || undefined }
}
