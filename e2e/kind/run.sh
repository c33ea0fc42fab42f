#!/usr/bin/env bash
# The kind suite: on a real cluster (kindnet, or Calico with CNI=calico), build and install
# ziti-cni, deploy an annotated app into a "restricted" namespace and assert, end to end:
#   1. the sidecar is injected and the pod is admitted under Pod Security "restricted";
#   2. the agent programmed the pod's table (ziti-cni inspect in the agent pod says MATCH);
#   3. the app's connection to pg.ziti:5432 lands on the stand-in tunneler's postgres listener;
#   4. a pod that opted out is untouched;
#   5. uninstalling leaves every node's CNI config as it was before the install.
# Needs docker, kind and kubectl. KEEP_CLUSTER=1 keeps the cluster afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
readonly ROOT
readonly CNI=${CNI:-kindnet}
export KIND_CLUSTER=${KIND_CLUSTER:-ziti-cni-e2e}
readonly CTX="kind-$KIND_CLUSTER"
readonly TAG=0.1.0-dev
k() { kubectl --context "$CTX" "$@"; }
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "--- diagnostics" >&2
    k get pods -A -o wide >&2 || true
    k -n ziti-cni-system logs ds/ziti-cni-agent --tail=50 >&2 || true
    k -n ziti-cni-system logs deploy/ziti-cni-webhook --tail=50 >&2 || true
  fi
  # Only a cluster this run created is deleted; an existing one (the dev loop's) is kept.
  if [[ ${CREATED_CLUSTER:-0} == 1 && ${KEEP_CLUSTER:-0} != 1 ]]; then "$ROOT/e2e/kind/cluster.sh" down || true; fi
  exit "$rc"
}
trap cleanup EXIT

step "cluster ($CNI)"
if ! kind get clusters | grep -qx "$KIND_CLUSTER"; then CREATED_CLUSTER=1; fi
"$ROOT/e2e/kind/cluster.sh" up "$CNI"
mapfile -t NODES < <(kind get nodes --name "$KIND_CLUSTER")

step "images"
docker build -t "ziti-cni-webhook:$TAG" -f "$ROOT/deploy/docker/webhook.Dockerfile" "$ROOT"
docker build -t "docker.io/library/ziti-cni-agent:$TAG" -f "$ROOT/deploy/docker/agent.Dockerfile" "$ROOT"
docker build -t "docker.io/library/ziti-cni-standin-tunnel:$TAG" -f "$ROOT/deploy/docker/standin-tunnel.Dockerfile" "$ROOT"
for image in "ziti-cni-webhook:$TAG" "docker.io/library/ziti-cni-agent:$TAG" "docker.io/library/ziti-cni-standin-tunnel:$TAG"; do
  kind load docker-image --name "$KIND_CLUSTER" "$image"
done

step "record each node's CNI config before the install"
declare -A BEFORE
for node in "${NODES[@]}"; do
  BEFORE[$node]=$(docker exec "$node" sh -c 'cd /etc/cni/net.d && for f in *; do [ -f "$f" ] || continue; echo "## $f"; cat "$f"; done')
done

step "install"
k apply -k "$ROOT/e2e/kind/overlay"
k -n ziti-cni-system rollout status ds/ziti-cni-agent --timeout=180s
k -n ziti-cni-system rollout status deploy/ziti-cni-webhook --timeout=180s
for _ in $(seq 60); do
  bundle=$(k get mutatingwebhookconfiguration ziti-cni-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
  [[ -n $bundle ]] && break
  sleep 2
done
[[ -n ${bundle:-} ]] || fail "the webhook never patched its caBundle"
for node in "${NODES[@]}"; do
  docker exec "$node" sh -c 'grep -l "\"ziti-cni\"" /etc/cni/net.d/*.conflist' >/dev/null || fail "$node: ziti-cni not in the primary conflist"
done

step "deploy the app"
k apply -f "$ROOT/e2e/kind/manifests/app.yaml"
k -n zt-apps rollout status deploy/billing --timeout=180s
k -n zt-apps wait --for=condition=Ready pod/untouched --timeout=120s
pod=$(k -n zt-apps get pod -l app=billing -o jsonpath='{.items[0].metadata.name}')
node=$(k -n zt-apps get pod "$pod" -o jsonpath='{.spec.nodeName}')

step "1. injected and admitted under restricted"
[[ $(k -n zt-apps get pod "$pod" -o jsonpath='{.spec.initContainers[*].name}') == "ziti-cni-validator ziti-tunnel" ]] || fail "validator and ziti-tunnel sidecar not injected"
[[ $(k -n zt-apps get pod "$pod" -o jsonpath='{.spec.initContainers[1].restartPolicy}') == Always ]] || fail "not a native sidecar"
[[ $(k -n zt-apps get pod "$pod" -o jsonpath='{.status.initContainerStatuses[0].state.terminated.exitCode}') == 0 ]] || fail "the validator did not confirm interception"
k -n zt-apps get pod "$pod" -o jsonpath='{.metadata.annotations.cni\.openziti\.io/interception}' | grep -q '"mode":"proxy"' || fail "no intent annotation"

step "2. the agent programmed the pod's table"
agent=$(k -n ziti-cni-system get pod -l app.kubernetes.io/name=ziti-cni-agent --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
k -n ziti-cni-system exec "$agent" -- ziti-cni inspect --pod "zt-apps/$pod" | tee /dev/stderr | grep -q '^MATCH' || fail "agent table does not match the intent"

step "3. pg.ziti:5432 lands on the sidecar's postgres listener"
reply=$(k -n zt-apps exec "$pod" -c app -- sh -c 'echo | nc -w 3 pg.ziti 5432')
echo "$reply"
[[ $reply == ziti-service=postgres* ]] || fail "unexpected reply: $reply"

step "4. the opted-out pod is untouched"
[[ -z $(k -n zt-apps get pod untouched -o jsonpath='{.spec.initContainers}') ]] || fail "untouched pod was injected"
if k -n ziti-cni-system exec "$agent" -- ziti-cni inspect --pod zt-apps/untouched >/dev/null 2>&1; then fail "untouched pod has a table"; fi

step "5. uninstall restores every node's CNI config"
k delete -f "$ROOT/e2e/kind/manifests/app.yaml" --wait=true
k delete -k "$ROOT/e2e/kind/overlay" --wait=true
k -n ziti-cni-system wait --for=delete pod -l app.kubernetes.io/name=ziti-cni-agent --timeout=120s || true
for node in "${NODES[@]}"; do
  after=$(docker exec "$node" sh -c 'cd /etc/cni/net.d && for f in *; do [ -f "$f" ] || continue; echo "## $f"; cat "$f"; done')
  # JSON formatting may differ; compare the parsed plugin lists.
  if [[ $(echo "${BEFORE[$node]}" | grep -c '"type"') != $(echo "$after" | grep -c '"type"') ]] || echo "$after" | grep -q '"ziti-cni"'; then
    echo "before:"; echo "${BEFORE[$node]}"; echo "after:"; echo "$after"
    fail "$node: CNI config not restored"
  fi
  # The executable stays by design (README, Operating it, Uninstall): DELs through a cached config.
  docker exec "$node" test -e /opt/cni/bin/ziti-cni || fail "$node: executable removed (pods from before could not be torn down with a cached config)"
  docker exec "$node" test ! -e /etc/cni/net.d/ziti-cni.d || fail "$node: ziti-cni.d left behind"
done

printf '\nkind suite (%s): all checks passed\n' "$CNI"
