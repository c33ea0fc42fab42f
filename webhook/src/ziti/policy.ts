// The platform's attribute policy: which role attributes pods of a namespace and ServiceAccount
// may request for their `identity: auto`. Deny by default: a pod may request an attribute only
// when a rule for its namespace (and ServiceAccount, when the rule names one) lists it, or one
// of its prefixes. It lives in the webhook config (ConfigMap ziti-cni-webhook-config in the
// platform's namespace, which tenants cannot edit: README "Controller-driven identities"), and
// both the webhook (at admission) and the identity controller (before it creates anything)
// apply it. Pure.
import { ANNOTATION_ROLE_ATTRIBUTES, ValidationError, isDnsName } from '@ziti-cni/shared'
import { PLATFORM_PREFIX } from './identity.ts'

export interface AttributeRule {
  /** A namespace name, or "*" for every namespace. */
  namespace: string
  /** A ServiceAccount name; absent or "*": every ServiceAccount of the namespace. */
  serviceAccount?: string
  /** Attributes the pods may request, exactly. */
  attributes?: string[]
  /** Prefixes: an attribute starting with one of them may be requested. */
  prefixes?: string[]
}

/** Where refusals say the policy is, so a tenant knows whom to ask. */
export const POLICY_NAME = 'controller.attributePolicy'

/** Config validation: returns the problems, keyed like the config's other messages. */
export function attributePolicyProblems(raw: unknown, key = POLICY_NAME): string[] {
  if (!Array.isArray(raw)) return [`${key}: must be a list of rules {namespace, serviceAccount?, attributes?, prefixes?}`]
  const problems: string[] = []
  raw.forEach((r, i) => {
    const at = `${key}[${i}]`
    if (typeof r !== 'object' || r === null || Array.isArray(r)) { problems.push(`${at}: must be a mapping`); return }
    const rule = r as Record<string, unknown>
    for (const k of Object.keys(rule)) if (!['namespace', 'serviceAccount', 'attributes', 'prefixes'].includes(k)) problems.push(`${at}.${k}: unknown key`)
    if (!(rule.namespace === '*' || (typeof rule.namespace === 'string' && isDnsName(rule.namespace)))) problems.push(`${at}.namespace: must be a namespace name or "*"`)
    if (rule.serviceAccount !== undefined && !(rule.serviceAccount === '*' || (typeof rule.serviceAccount === 'string' && isDnsName(rule.serviceAccount)))) problems.push(`${at}.serviceAccount: must be a ServiceAccount name or "*"`)
    for (const list of ['attributes', 'prefixes'] as const) {
      const v = rule[list]
      if (v === undefined) continue
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x === '')) { problems.push(`${at}.${list}: must be a list of non-empty strings`); continue }
      for (const x of v as string[]) if (x.startsWith(PLATFORM_PREFIX) || PLATFORM_PREFIX.startsWith(x)) problems.push(`${at}.${list}: "${x}" would let pods request the platform's own "${PLATFORM_PREFIX}" attributes`)
    }
    if (rule.attributes === undefined && rule.prefixes === undefined) problems.push(`${at}: names neither attributes nor prefixes (a rule that allows nothing)`)
  })
  return problems
}

function applies(rule: AttributeRule, namespace: string, serviceAccount: string): boolean {
  return (rule.namespace === '*' || rule.namespace === namespace) && (rule.serviceAccount === undefined || rule.serviceAccount === '*' || rule.serviceAccount === serviceAccount)
}

export function allowedBy(policy: AttributeRule[], namespace: string, serviceAccount: string, attribute: string): boolean {
  return policy.some((r) => applies(r, namespace, serviceAccount) && ((r.attributes ?? []).includes(attribute) || (r.prefixes ?? []).some((p) => attribute.startsWith(p))))
}

/** Throws naming the annotation, the attribute and the policy for the first attribute not allowed. */
export function checkAttributes(policy: AttributeRule[], namespace: string, serviceAccount: string, attributes: string[]): void {
  attributes.forEach((a, i) => {
    if (allowedBy(policy, namespace, serviceAccount, a)) return
    throw new ValidationError(ANNOTATION_ROLE_ATTRIBUTES, `attribute "${a}" is not allowed for ServiceAccount ${namespace}/${serviceAccount} by the platform's attribute policy (webhook config ${POLICY_NAME}; ask your platform team)`, { index: i + 1, text: a })
  })
}
