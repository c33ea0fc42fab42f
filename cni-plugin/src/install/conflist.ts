// Pure conflist surgery: find the file the kubelet uses, append ziti-cni as the last plugin,
// take it out again. Input and output are file names and text; no file system here.

export const PLUGIN_TYPE = 'ziti-cni'

export interface ConfFile {
  name: string
  content: string
}

export interface PluginEntry {
  type: typeof PLUGIN_TYPE
  [key: string]: unknown
}

interface ConfList {
  cniVersion?: string
  name?: string
  plugins: Array<{ type?: string; [k: string]: unknown }>
  [k: string]: unknown
}

const EXTENSIONS = ['.conf', '.conflist', '.json']

/** libcni's order: lexical by file name; `.conf`/`.json` hold one plugin, `.conflist` a list. */
export function candidateFiles(names: string[]): string[] {
  return names.filter((n) => EXTENSIONS.some((e) => n.endsWith(e)) && !n.startsWith('.')).sort()
}

/** Parses a CNI config file as the kubelet would; undefined when it would be skipped. */
export function parseConf(file: ConfFile): ConfList | undefined {
  let v: unknown
  try { v = JSON.parse(file.content) } catch { return undefined }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined
  const o = v as Record<string, unknown>
  if (file.name.endsWith('.conflist')) {
    if (!Array.isArray(o.plugins) || o.plugins.length === 0) return undefined
    return o as ConfList
  }
  if (typeof o.type !== 'string') return undefined
  // A single-plugin .conf becomes a list of one; cniVersion and name move to the list.
  const { cniVersion, name, ...plugin } = o
  return { cniVersion: cniVersion as string | undefined, name: name as string | undefined, plugins: [plugin] }
}

/** The primary config: the lexically first file that parses. */
export function selectPrimary(files: ConfFile[]): ConfFile | undefined {
  const byName = new Map(files.map((f) => [f.name, f]))
  for (const name of candidateFiles(files.map((f) => f.name))) {
    const f = byName.get(name)!
    if (parseConf(f)) return f
  }
  return undefined
}

export function render(list: ConfList): string {
  return JSON.stringify(list, null, 2) + '\n'
}

export interface InsertResult {
  /** The file to write (a `.conf` is rewritten as `<base>.conflist`). */
  file: ConfFile
  /** The old file to remove when the name changed. */
  remove: string | undefined
  changed: boolean
}

/** Appends our entry as the last plugin; an existing entry is replaced, never duplicated. */
export function insertPlugin(primary: ConfFile, entry: PluginEntry): InsertResult {
  const list = parseConf(primary)
  if (!list) throw new Error(`${primary.name} is not a valid CNI configuration`)
  const others = list.plugins.filter((p) => p.type !== PLUGIN_TYPE)
  const plugins = [...others, entry]
  const converted = !primary.name.endsWith('.conflist')
  const name = converted ? convertedName(primary.name) : primary.name
  const content = render({ ...list, plugins })
  const changed = converted || normalise(primary.content) !== normalise(content)
  return { file: { name, content: changed ? content : primary.content }, remove: converted ? primary.name : undefined, changed }
}

/** Takes our entry out; unchanged input when it was not there. */
export function removePlugin(file: ConfFile): { file: ConfFile; changed: boolean } {
  const list = parseConf(file)
  if (!list || !list.plugins.some((p) => p.type === PLUGIN_TYPE)) return { file, changed: false }
  return { file: { name: file.name, content: render({ ...list, plugins: list.plugins.filter((p) => p.type !== PLUGIN_TYPE) }) }, changed: true }
}

/**
 * Uninstall of a primary `.conf` the installer turned into a `.conflist`: the original file
 * comes back byte for byte when what remains without our entry is still what the conversion
 * made of it. If the primary CNI changed the list meanwhile, its list stays (without us).
 */
export function restoreConverted(current: ConfFile, original: ConfFile): { file: ConfFile; remove: string | undefined } {
  const without = removePlugin(current).file
  const orig = parseConf(original)
  const now = parseConf(without)
  if (orig && now && normalise(render(orig)) === normalise(render(now))) return { file: original, remove: current.name }
  return { file: without, remove: undefined }
}

/** The `.conflist` name a converted `.conf` gets (for finding its backup). */
export function convertedName(name: string): string {
  return name.replace(/\.(conf|json)$/, '.conflist')
}

export function hasPlugin(file: ConfFile, entry: PluginEntry): boolean {
  const list = parseConf(file)
  const last = list?.plugins.at(-1)
  return !!list && file.name.endsWith('.conflist') && JSON.stringify(last) === JSON.stringify(entry) &&
    list.plugins.filter((p) => p.type === PLUGIN_TYPE).length === 1
}

/** Names the primary plugin, for the warning when someone rewrites the file. */
export function primaryType(file: ConfFile): string {
  return parseConf(file)?.plugins[0]?.type ?? 'unknown'
}

function normalise(text: string): string {
  try { return JSON.stringify(JSON.parse(text)) } catch { return text }
}
