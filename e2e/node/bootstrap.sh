#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) and runs the demo or the test suite.
#   bash e2e/node/bootstrap.sh demo   # the narrated end-to-end demo
#   bash e2e/node/bootstrap.sh test   # every test: unit, golden, kernel, webhook, node e2e
# Idempotent: packages and dependencies already present are left as they are.
set -euo pipefail

cd "$(dirname "$0")/../.."
readonly PNPM_VERSION=10.34.9
# containerd + runc run the node suite's pods; busybox-static and gcc (static libc) build its
# images; clang + libbpf-dev the eBPF object; nodejs + npm only start pnpm when the machine has
# no Node at all (pnpm then installs Node 22 from the lockfile); musl-tools builds the musl DNS
# client (an Alpine app's resolver) for e2e/node/dns-libc.test.ts. The rest build upstream's
# ziti-edge-tunnel from ../shared/third-party/ziti-edge-tunnel (its build.sh's INSTALL_DEPS list)
# for the tun-mode suites. The arm64 plugin build (cni-plugin/build.ts) needs Debian's aarch64 cross
# gcc with its static libc and the arm64 loader, libc, libstdc++ and libgcc_s it ships beside the
# SEA; qemu-user-static runs that build in the empty-root test. musl-tools builds the musl DNS client.
readonly APT_PACKAGES=(nftables iproute2 containernetworking-plugins util-linux ca-certificates shellcheck clang libbpf-dev containerd runc busybox-static gcc libc6-dev musl-tools
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross qemu-user-static
  build-essential cmake ninja-build pkgconf git libssl-dev libjson-c-dev libsodium-dev libprotobuf-c-dev zlib1g-dev libsystemd-dev libpcap-dev)

what=${1:-}
case "$what" in
  demo|test|setup) ;;
  *) echo "usage: $0 demo|test|setup" >&2; exit 2 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
  echo "error: run as root (network namespaces, nftables and the CNI chain need it)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
command -v npx >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

pnpm() { npx --yes "pnpm@${PNPM_VERSION}" "$@"; }

echo "==> installing locked npm dependencies (Node 22 comes from the lockfile)"
pnpm install --frozen-lockfile --reporter=append-only
# tap compiles its Test class for the plugins in .taprc (the TypeScript loader is disabled);
# build it now, or the first run would still load the default plugins.
pnpm exec tap build
echo "==> type-checking and building"
pnpm run typecheck
pnpm run build
# upstream's ziti-edge-tunnel for the tun-mode suites, cached by the hash of its SOURCES.txt;
# a failed build stops here (set -e), so CI fails rather than skipping tun mode.
zet=$(bash e2e/node/build-ziti-edge-tunnel.sh)
echo "==> upstream ziti-edge-tunnel: $zet"

run_tests() {
  local log
  log=$(mktemp)
  pnpm test 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  # tap's own summary is "# { total: N, pass: N, fail: N }"; say it plainly as well.
  local pass fail
  pass=$(grep -Eo '^# \{ total: [0-9]+, pass: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$' || echo 0)
  fail=$(grep -Eo '^# \{ total: [0-9]+, pass: [0-9]+, fail: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$' || echo 0)
  rm -f "$log"
  echo "${pass} passed, ${fail} failed"
  return "$rc"
}

case "$what" in
  demo) pnpm run demo ;;
  test) run_tests ;;
  setup) ;;
esac
