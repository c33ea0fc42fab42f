#!/bin/bash
# Stand-in for the openziti/ziti-edge-tunnel image's entrypoint (ziti-tunnel-sdk-c @b687256c,
# docker/docker-entrypoint.sh), the parts a sidecar uses: the identity from ZITI_IDENTITY_JSON
# written under ZITI_IDENTITY_DIR as <basename>.json (:75-89), then
# `ziti-edge-tunnel run --identity FILE "$@"` (:172-190; the real script backgrounds it and
# forwards SIGTERM, exec does the same for one process). Enrollment of a JWT is not
# reproduced here (the proxy stand-in does it; tun mode's scenario uses an identity Secret).
set -o errexit -o nounset -o pipefail
: "${ZITI_IDENTITY_DIR:=/ziti-edge-tunnel}"
if [[ -n "${ZITI_IDENTITY_JSON:-}" ]]; then
    ZITI_IDENTITY_BASENAME="${ZITI_IDENTITY_BASENAME:-ziti_id}"
    IDENTITY_FILE="${ZITI_IDENTITY_DIR}/${ZITI_IDENTITY_BASENAME}.json"
    if [[ -s "${IDENTITY_FILE}" ]]; then
        echo "WARN: not clobbering existing identity file ${IDENTITY_FILE} with contents of env var ZITI_IDENTITY_JSON" >&2
    else
        echo "${ZITI_IDENTITY_JSON}" > "${IDENTITY_FILE}"
    fi
else
    echo "ERROR: this stand-in needs ZITI_IDENTITY_JSON (enrollment is not reproduced)" >&2
    exit 1
fi
if (( ${#} )) && [[ ${1:0:3} == run ]]; then
    TUNNEL_RUN_MODE=${1}
    shift
else
    TUNNEL_RUN_MODE=run
fi
echo "INFO: running: ziti-edge-tunnel ${TUNNEL_RUN_MODE} --identity ${IDENTITY_FILE} ${*}"
exec ziti-edge-tunnel "${TUNNEL_RUN_MODE}" --identity "${IDENTITY_FILE}" "${@}"
