#!/usr/bin/env bash
# Creates or deletes the kind cluster the dev loop and the kind suite use.
#   e2e/kind/cluster.sh up [kindnet|calico]
#   e2e/kind/cluster.sh down
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
readonly HERE
readonly CLUSTER=${KIND_CLUSTER:-ziti-cni}
readonly CALICO_MANIFEST=${CALICO_MANIFEST:-https://raw.githubusercontent.com/projectcalico/calico/v3.28.2/manifests/calico.yaml}

die() { echo "error: $*" >&2; exit 1; }
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || die "$tool is required on PATH"
done

case "${1:-}" in
  up)
    cni=${2:-kindnet}
    [[ $cni == kindnet || $cni == calico ]] || die "unknown CNI '$cni' (kindnet or calico)"
    if kind get clusters | grep -qx "$CLUSTER"; then
      echo "kind cluster $CLUSTER already exists"
    else
      kind create cluster --name "$CLUSTER" --config "$HERE/kind-$cni.yaml" --wait 120s
    fi
    if [[ $cni == calico ]]; then
      kubectl --context "kind-$CLUSTER" apply -f "$CALICO_MANIFEST"
      kubectl --context "kind-$CLUSTER" -n kube-system rollout status ds/calico-node --timeout=300s
    fi
    kubectl --context "kind-$CLUSTER" wait --for=condition=Ready nodes --all --timeout=300s
    ;;
  down)
    kind delete cluster --name "$CLUSTER"
    ;;
  *)
    die "usage: $0 up [kindnet|calico] | down"
    ;;
esac
