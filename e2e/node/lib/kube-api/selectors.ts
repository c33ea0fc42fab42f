// Field and label selectors as the API server parses and applies them.
import type { Obj } from './objects.ts'

export class SelectorError extends Error {}

/**
 * The fields a selector may name, per kind, as the real conversion functions allow them;
 * anything else is refused with "field label not supported: <label>" (400, the Transform
 * error turned into BadRequest at apiserver pkg/endpoints/handlers/get.go:224-231).
 * Pods: kubernetes pkg/apis/core/v1/conversion.go (PodFieldLabelConversion), values from
 * pkg/registry/core/pod/strategy.go ToSelectableFields (hostNetwork as "true"/"false").
 * Everything else: metadata.name and metadata.namespace (apiserver
 * pkg/registry/generic/matcher.go ObjectMetaFieldsSet); Secrets add `type`.
 */
const FIELDS: Record<string, Record<string, (o: Obj) => string>> = {
  Pod: {
    'spec.nodeName': (o) => str(o, ['spec', 'nodeName']),
    'spec.restartPolicy': (o) => str(o, ['spec', 'restartPolicy']),
    'spec.schedulerName': (o) => str(o, ['spec', 'schedulerName']),
    'spec.serviceAccountName': (o) => str(o, ['spec', 'serviceAccountName']),
    'spec.hostNetwork': (o) => String(get(o, ['spec', 'hostNetwork']) === true),
    'status.phase': (o) => str(o, ['status', 'phase']),
    'status.podIP': (o) => str(o, ['status', 'podIP']),
    'status.podIPs': (o) => ((get(o, ['status', 'podIPs']) as Array<{ ip: string }> | undefined) ?? []).map((p) => p.ip).join(','),
    'status.nominatedNodeName': (o) => str(o, ['status', 'nominatedNodeName']),
  },
  Secret: { type: (o) => String((o as { type?: string }).type ?? '') },
}
/** v1 clients' old name for spec.nodeName (conversion.go: `case "spec.host"`). */
const ALIASES: Record<string, string> = { 'spec.host': 'spec.nodeName' }

function get(o: unknown, path: string[]): unknown {
  return path.reduce<unknown>((acc, p) => (acc as Record<string, unknown> | undefined)?.[p], o)
}
function str(o: unknown, path: string[]): string {
  const v = get(o, path)
  return v === undefined || v === null ? '' : String(v)
}

export type Matcher = (o: Obj) => boolean

/**
 * A field selector: comma-separated `k=v`, `k==v`, `k!=v` terms (apimachinery
 * pkg/fields/selector.go parseSelector), each label checked against the kind's supported set.
 */
export function parseFieldSelector(kind: string, text: string): Matcher {
  const fields: Record<string, (o: Obj) => string> = {
    'metadata.name': (o) => o.metadata.name ?? '',
    'metadata.namespace': (o) => o.metadata.namespace ?? '',
    ...(FIELDS[kind] ?? {}),
  }
  const checks: Matcher[] = []
  for (const term of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([^=!]+)(==|=|!=)(.*)$/.exec(term)
    if (!m) throw new SelectorError(`invalid selector: '${text}'; can't understand '${term}'`)
    const label = ALIASES[m[1]!.trim()] ?? m[1]!.trim()
    const value = m[3]!.trim()
    const read = fields[label]
    if (!read) throw new SelectorError(`field label not supported: ${m[1]!.trim()}`)
    checks.push(m[2] === '!=' ? (o) => read(o) !== value : (o) => read(o) === value)
  }
  return (o) => checks.every((c) => c(o))
}

export interface LabelRequirement { key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values: string[] }

/**
 * A label selector string (apimachinery pkg/labels/selector.go Parse): `k=v`, `k==v`, `k!=v`,
 * `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
 */
export function parseLabelSelector(text: string): LabelRequirement[] {
  const out: LabelRequirement[] = []
  // Split on commas outside parentheses.
  const terms: string[] = []
  let depth = 0
  let cur = ''
  for (const ch of text) {
    if (ch === '(') depth++
    if (ch === ')') depth--
    if (ch === ',' && depth === 0) { terms.push(cur); cur = '' } else cur += ch
  }
  if (cur.trim()) terms.push(cur)
  for (const raw of terms.map((t) => t.trim()).filter(Boolean)) {
    let m: RegExpExecArray | null
    if ((m = /^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(raw))) out.push({ key: m[1]!, operator: m[2] === 'in' ? 'In' : 'NotIn', values: m[3]!.split(',').map((v) => v.trim()).filter(Boolean) })
    else if ((m = /^([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)$/.exec(raw))) out.push({ key: m[1]!, operator: m[2] === '!=' ? 'NotIn' : 'In', values: [m[3]!] })
    else if ((m = /^!\s*([\w./-]+)$/.exec(raw))) out.push({ key: m[1]!, operator: 'DoesNotExist', values: [] })
    else if ((m = /^([\w./-]+)$/.exec(raw))) out.push({ key: m[1]!, operator: 'Exists', values: [] })
    else throw new SelectorError(`unable to parse requirement: found '${raw}', expected: identifier, '=', '!=', 'in', 'notin'`)
  }
  return out
}

/** A metav1.LabelSelector object (matchLabels + matchExpressions), as webhooks' selectors are. */
export function labelSelectorRequirements(sel: { matchLabels?: Record<string, string>; matchExpressions?: LabelRequirement[] } | undefined): LabelRequirement[] {
  return [
    ...Object.entries(sel?.matchLabels ?? {}).map(([key, v]) => ({ key, operator: 'In' as const, values: [v] })),
    ...(sel?.matchExpressions ?? []),
  ]
}

/** apimachinery pkg/labels/selector.go Requirement.Matches: NotIn and DoesNotExist match an absent key. */
export function labelsMatch(reqs: LabelRequirement[], labels: Record<string, string> | undefined): boolean {
  const l = labels ?? {}
  return reqs.every((r) => {
    const has = Object.hasOwn(l, r.key)
    switch (r.operator) {
      case 'In': return has && r.values.includes(l[r.key]!)
      case 'NotIn': return !has || !r.values.includes(l[r.key]!)
      case 'Exists': return has
      case 'DoesNotExist': return !has
    }
  })
}
