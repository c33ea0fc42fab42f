#!/usr/bin/env bash
# Builds upstream's ziti-edge-tunnel from the pinned sources beside the repo
# (../shared/third-party/ziti-edge-tunnel: v1.18.2, ziti-sdk-c 1.18.1, tlsuv v0.41.4) once per
# source set, cached by the hash of src/SOURCES.txt, and prints the binary's path.
# Fails (non-zero, no path printed) when the sources are missing or the build fails.
#   bash e2e/node/build-ziti-edge-tunnel.sh            # -> /var/cache/ziti-cni/ziti-edge-tunnel-<hash>/ziti-edge-tunnel
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
src=${ZITI_EDGE_TUNNEL_SRC:-$repo/../shared/third-party/ziti-edge-tunnel}
[[ -f $src/build.sh && -f $src/src/SOURCES.txt ]] || { echo "error: no upstream ziti-edge-tunnel sources at $src (expected build.sh and src/SOURCES.txt)" >&2; exit 1; }
hash=$(sha256sum "$src/src/SOURCES.txt" | cut -c1-16)
cache=${ZITI_CNI_CACHE:-/var/cache/ziti-cni}/ziti-edge-tunnel-$hash
if [[ ! -x $cache/ziti-edge-tunnel ]]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/zcni-zet-build-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "==> building upstream ziti-edge-tunnel ($src, sources $hash)" >&2
  WORK=$work bash "$src/build.sh" >"$work.log" 2>&1 || { tail -40 "$work.log" >&2; echo "error: the upstream ziti-edge-tunnel build failed (log: $work.log)" >&2; exit 1; }
  mkdir -p "$cache.tmp.$$"
  cp "$work/out/ziti-edge-tunnel" "$cache.tmp.$$/ziti-edge-tunnel"
  cp "$src/src/SOURCES.txt" "$cache.tmp.$$/SOURCES.txt"
  # upstream's own container entrypoint, from the same source tarball
  tar -xzf "$src/src/ziti-tunnel-sdk-c.tar.gz" -C "$work" --wildcards '*/docker/docker-entrypoint.sh'
  cp "$work"/*/docker/docker-entrypoint.sh "$cache.tmp.$$/docker-entrypoint.sh"
  rm -rf "$cache" && mv "$cache.tmp.$$" "$cache"
  rm -f "$work.log"
fi
echo "$cache/ziti-edge-tunnel"
