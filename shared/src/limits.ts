// Upper bounds on every list in the contract. Kubernetes caps all annotations of an object
// at 256 KiB together, so the intent can never be larger than that either.
export const LIMITS = {
  /** Bytes of one user annotation value or of the serialized intent. */
  annotationBytes: 256 * 1024,
  /**
   * Bytes of all annotations of an object together: the sum of len(key) + len(value)
   * (apimachinery pkg/api/validation/objectmeta.go:39 TotalAnnotationSizeLimitB, :61-70).
   * The API server checks it after mutating admission and answers 422.
   */
  annotationsTotalBytes: 256 * 1024,
  services: 256,
  cidrs: 16384,
  excludeCidrs: 1024,
  excludePorts: 256,
  fence: 512,
  /** Inbound ports a pod declares (containerPorts and probe ports) that the fence lets in. */
  ingress: 1024,
} as const

/** The size of an object's annotations as the API server counts it (UTF-8 bytes). */
export function annotationsTotalBytes(annotations: Record<string, string> | undefined): number {
  let total = 0
  for (const [k, v] of Object.entries(annotations ?? {})) total += Buffer.byteLength(k, 'utf8') + Buffer.byteLength(v, 'utf8')
  return total
}

/**
 * Why these annotations would be refused by the API server (total over the limit), naming
 * the largest, or undefined when they fit.
 */
export function annotationsTotalProblem(annotations: Record<string, string> | undefined): string | undefined {
  const total = annotationsTotalBytes(annotations)
  if (total <= LIMITS.annotationsTotalBytes) return undefined
  const largest = Object.entries(annotations ?? {})
    .map(([k, v]) => ({ k, n: Buffer.byteLength(k, 'utf8') + Buffer.byteLength(v, 'utf8') }))
    .sort((a, b) => b.n - a.n)
    .slice(0, 3)
    .map(({ k, n }) => `${k} (${n} bytes)`)
  return `all annotations of the pod together would be ${total} bytes, more than the ${LIMITS.annotationsTotalBytes} bytes Kubernetes allows for an object; the largest: ${largest.join(', ')}`
}
