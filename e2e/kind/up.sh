#!/bin/bash
# Brings up a kind topology as a Trellis mesh, on a machine with Docker,
# kind, kubectl and helm (docs/kubernetes.md, "kind"). NOT RUN on the
# project's CI machine, which cannot run kind: there only the planning
# (`trellis-kind plan`, `cargo test -p trellis-e2e --lib kind`) is tested.
#
#   e2e/kind/up.sh [TOPOLOGY]      (default e2e/kind/topology.yaml)
#   e2e/kind/down.sh               removes it all again
#
# Steps: build the release binaries and the images (tag kind-COMMIT);
# plan the clusters into $TRELLIS_KIND_STATE (default /tmp/trellis-kind);
# start the mesh's first control-plane node on the Docker host, on kind's
# network; for each cluster: create it with kind, load the images, route
# the host (and the clusters on the same network) to its pods, make its
# cluster and gateway tokens, and install the chart with its values. Then
# `trellis cluster list` shows every cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
topology="${1:-e2e/kind/topology.yaml}"
state="${TRELLIS_KIND_STATE:-/tmp/trellis-kind}"
for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "up.sh: needs $tool" >&2; exit 1; }
done
tag="kind-$(git rev-parse --short HEAD)"
cargo build --release -p trellis-agent -p trellis-controlplane -p trellis-eastwest -p trellis -p trellis-e2e --bins
bin="${CARGO_TARGET_DIR:-target}/release"
mkdir -p "$state"
"$bin/trellis-kind" plan "$topology" "$state" "$tag"
packaging/images/build.sh --no-build --tag "$tag"

# The mesh's first node, on the Docker host, reachable from kind's nodes.
docker network inspect kind >/dev/null 2>&1 || docker network create kind >/dev/null
host_ip=$(docker network inspect kind -f '{{(index .IPAM.Config 0).Gateway}}')
if [ ! -f "$state/host/node.json" ]; then
    "$bin/trellis-controlplane" init --data-dir "$state/host" --listen "0.0.0.0:15012" \
        --advertise "$host_ip:15012" --cluster host --network net-host >"$state/host.log" 2>&1 &
else
    "$bin/trellis-controlplane" run --data-dir "$state/host" >>"$state/host.log" 2>&1 &
fi
echo $! >"$state/host.pid"
for _ in $(seq 1 100); do grep -q '^ready:' "$state/host.log" && break; sleep 0.1; done
grep -q '^ready:' "$state/host.log" || { cat "$state/host.log" >&2; exit 1; }
export TRELLIS_CONFIG="$state/host/admin.yaml"

node_ip() { docker inspect -f '{{.NetworkSettings.Networks.kind.IPAddress}}' "$1"; }
while read -r c; do
    kind get clusters | grep -qx "$c" || kind create cluster --config "$state/$c/kind.yaml"
    for image in agent controlplane eastwest; do
        kind load docker-image --name "$c" "trellis/trellis-$image:$tag"
    done
    # The host reaches the cluster's pods through its control-plane node
    # (kind's CNI routes each node's pod range between the nodes).
    ip route replace "$(cat "$state/$c/pod-subnet")" via "$(node_ip "$c-control-plane")"
    network=$(cat "$state/$c/network")
    "$bin/trellis" token create --kind cluster --cluster "$c" --network "$network" >"$state/$c/token"
    "$bin/trellis" token create --kind gateway --network "$network" --uses 10 >"$state/$c/gateway-token"
    gateway="$(node_ip "$c-worker"):31443"
    helm upgrade --install trellis installer/charts/trellis --kube-context "kind-$c" \
        --namespace trellis-system --create-namespace -f "$state/$c/values.yaml" \
        --set-file join.token="$state/$c/token" --set-file join.gatewayToken="$state/$c/gateway-token" \
        --set "eastwestGateway.advertise={$gateway}" --wait
done <"$state/clusters"

# Clusters on one network: each one's nodes route to the others' pods.
while read -r c; do
    while read -r other; do
        [ -n "$other" ] || continue
        via=$(node_ip "$other-control-plane")
        for n in $(kind get nodes --name "$c"); do
            docker exec "$n" ip route replace "$(cat "$state/$other/pod-subnet")" via "$via"
        done
    done <"$state/$c/same-network"
done <"$state/clusters"

"$bin/trellis" cluster list
