// Upper bounds on every list in the contract. Kubernetes caps all annotations of an object
// at 256 KiB together, so the intent can never be larger than that either.
export const LIMITS = {
  /** Bytes of one user annotation value or of the serialized intent. */
  annotationBytes: 256 * 1024,
  services: 256,
  cidrs: 16384,
  excludeCidrs: 1024,
  excludePorts: 256,
  fence: 512,
  /** Inbound ports a pod declares (containerPorts and probe ports) that the fence lets in. */
  ingress: 1024,
} as const
