// Every label and annotation key of the interception contract, in one place.
// The README's reference section documents each of them.

export const DOMAIN = 'cni.openziti.io'

/** Namespace label (opt in) and pod label (override): `enabled` | `disabled`. */
export const LABEL_INJECT = `${DOMAIN}/inject`

/** User-written pod annotations. */
export const ANNOTATION_IDENTITY_SECRET = `${DOMAIN}/identity-secret`
export const ANNOTATION_ENROLLMENT_SECRET = `${DOMAIN}/enrollment-secret`
export const ANNOTATION_MODE = `${DOMAIN}/mode`
export const ANNOTATION_SERVICES = `${DOMAIN}/services`
export const ANNOTATION_INTERCEPT_CIDRS = `${DOMAIN}/intercept-cidrs`
export const ANNOTATION_EXCLUDE_CIDRS = `${DOMAIN}/exclude-cidrs`
export const ANNOTATION_EXCLUDE_PORTS = `${DOMAIN}/exclude-ports`
export const ANNOTATION_DNS_CAPTURE = `${DOMAIN}/dns-capture`
export const ANNOTATION_DATAPATH = `${DOMAIN}/datapath`
/** `ziti-only`: the app's egress is deny-by-default (README "Datapath"); `open`: not locked. */
export const ANNOTATION_EGRESS = `${DOMAIN}/egress`
/** Exceptions to `egress: ziti-only`: CIDRs (any port) and ports (any address). */
export const ANNOTATION_EGRESS_ALLOW = `${DOMAIN}/egress-allow`
/** `auto`: the webhook creates a Ziti identity for the pod through the controller. */
export const ANNOTATION_IDENTITY = `${DOMAIN}/identity`
/** Role attributes of the pod's auto identity: "billing, eu". */
export const ANNOTATION_ROLE_ATTRIBUTES = `${DOMAIN}/role-attributes`
/** The value of `identity` and `services` that hands them to the controller. */
export const AUTO = 'auto'

/** Webhook-owned pod annotations (a user-supplied value is replaced). */
export const ANNOTATION_INTERCEPTION = `${DOMAIN}/interception`
export const ANNOTATION_STATUS = `${DOMAIN}/status`
/** The auto identity's controller id and name: what links the pod to it. */
export const ANNOTATION_IDENTITY_ID = `${DOMAIN}/identity-id`
export const ANNOTATION_IDENTITY_NAME = `${DOMAIN}/identity-name`
/** Pod label on pods with an auto identity, so the reconciler lists only those. */
export const LABEL_AUTO_IDENTITY = `${DOMAIN}/auto-identity`

export const USER_ANNOTATIONS = [
  ANNOTATION_IDENTITY_SECRET,
  ANNOTATION_ENROLLMENT_SECRET,
  ANNOTATION_MODE,
  ANNOTATION_SERVICES,
  ANNOTATION_INTERCEPT_CIDRS,
  ANNOTATION_EXCLUDE_CIDRS,
  ANNOTATION_EXCLUDE_PORTS,
  ANNOTATION_DNS_CAPTURE,
  ANNOTATION_DATAPATH,
  ANNOTATION_EGRESS,
  ANNOTATION_EGRESS_ALLOW,
  ANNOTATION_IDENTITY,
  ANNOTATION_ROLE_ATTRIBUTES,
] as const

/** Name of the injected sidecar container and its volume. */
export const SIDECAR_NAME = 'ziti-tunnel'
export const SIDECAR_VOLUME = 'ziti-identity'

/** The validator init container, and the exit code that means "this pod is not intercepted". */
export const VALIDATOR_NAME = 'ziti-cni-validator'
export const EXIT_NOT_INTERCEPTED = 126

/** The nftables table the CNI owns inside a pod netns. It is replaced as a whole. */
export const NFT_TABLE = 'ziti_cni'
export const NFT_FAMILY = 'inet'

/**
 * tproxy mode steers marked packets back into the stack through `lo` with a policy route.
 * Mark and table are fixed by the contract so DEL and CHECK can find them without state.
 */
export const TPROXY_FWMARK = 0x2a1
export const TPROXY_ROUTE_TABLE = 2171
export const TPROXY_RULE_PRIORITY = 32000
/**
 * eBPF datapath: the mark carries the catch-all port, (0x02a1 << 16) | port, so the tc
 * program needs no map. Must match cni-plugin/bpf/tproxy.bpf.c.
 */
export const EBPF_MARK_TAG = 0x02a10000
/**
 * eBPF datapath: the intercept CIDRs are local routes, so traffic that must still leave (the
 * sidecar's own, excluded CIDRs and ports) gets this mark, and a rule that runs before the
 * `local` table (moved from priority 0 to LOCAL_RULE_PRIORITY) sends it through `main`.
 */
export const EBPF_BYPASS_MARK = 0x2a2
export const EBPF_BYPASS_RULE_PRIORITY = 10
export const LOCAL_RULE_PRIORITY = 100

/**
 * tun mode: the extended resource the agent's device plugin serves and the webhook's sidecar
 * asks for (one `/dev/net/tun` each).
 */
export const TUN_RESOURCE = 'tun.openziti.io/tun'
/** An extended resource name as both sides accept it: `domain/name`. */
export const EXTENDED_RESOURCE_NAME = /^[a-z0-9.-]+\/[a-z0-9.-]+$/

/** Default Ziti DNS range; the tunnelers allocate service IPs from it (first one 100.64.0.2). */
export const ZITI_DNS_RANGE = '100.64.0.0/10'
