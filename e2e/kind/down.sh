#!/bin/bash
# Removes what e2e/kind/up.sh made: the kind clusters, the host's routes
# to their pods, the host's control-plane node and the state directory.
set -uo pipefail
state="${TRELLIS_KIND_STATE:-/tmp/trellis-kind}"
[ -f "$state/clusters" ] || { echo "down.sh: nothing in $state"; exit 0; }
while read -r c; do
    ip route del "$(cat "$state/$c/pod-subnet")" 2>/dev/null
    kind delete cluster --name "$c"
done <"$state/clusters"
[ ! -f "$state/host.pid" ] || kill "$(cat "$state/host.pid")" 2>/dev/null
rm -rf "$state"
