// ZitiQL string literals. The controller's grammar takes strings only in double quotes, with
// backslash escapes (openziti/ziti controller/storage/zitiql/ZitiQl.g4, STRING and ESC); a
// value pasted in unescaped could close the string and add its own clauses (ziti-k8s-agent's
// `name="…"` filter has that flaw).
const ESCAPES: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\f': '\\f', '\b': '\\b' }

export function quote(value: string): string {
  return `"${value.replace(/["\\\n\r\t\f\b]/g, (c) => ESCAPES[c]!)}"`
}

export function inList(values: string[]): string {
  return `[${values.map(quote).join(', ')}]`
}
