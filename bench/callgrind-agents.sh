#!/usr/bin/env bash
# Instructions and allocations per request of each agent, counted by
# valgrind's callgrind: the same on every run of the same binaries, so that
# a change to the request path can be compared without the noise of CPU
# time on a shared VM (docs/benchmarks.md, "Instructions per request").
#
# Runs `trellis-bench proxy` at 100 requests per second with both agents
# under callgrind, instrumentation on only for the Trellis rounds of the
# HTTP/1.1 and gRPC 100 rps phases, and prints per agent and protocol the
# instructions, malloc calls and requests (one per Telemetry::request_done).
#
# usage: bench/callgrind-agents.sh [OUT_DIR]
# needs: valgrind, envoy on PATH, and release binaries already built:
#   cargo build --release -p trellis-agent -p trellis-bench \
#     -p trellis-controlplane -p trellis-echo -p trellis --bins
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
bin="${CARGO_TARGET_DIR:-target}/release"
[ -x "$bin/trellis-bench" ] && [ -x "$bin/trellis-agent" ] || { echo "build the release binaries first (see the head of $0)" >&2; exit 1; }
out="$(realpath -m "${1:-$(mktemp -d /tmp/trellis-callgrind.XXXXXX)}")"
mkdir -p "$out"

# The benchmark starts the agent beside it; put a wrapper there for the run
# and the real binary back afterwards, whatever happens.
cp "$bin/trellis-agent" "$out/trellis-agent.real"
mv "$bin/trellis-agent" "$out/trellis-agent.orig"
restore() { mv -f "$out/trellis-agent.orig" "$bin/trellis-agent"; }
trap restore EXIT
cat > "$bin/trellis-agent" <<EOF
#!/bin/sh
case "\$*" in
  *--upstream*) side=client ;;
  *) side=server ;;
esac
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/\$side.out" "$out/trellis-agent.real" "\$@"
EOF
chmod +x "$bin/trellis-agent"

"$bin/trellis-bench" proxy --no-build --rates 100 --rounds 1 --seconds 4 \
  >"$out/bench.txt" 2>"$out/bench.err" &
bench=$!
# Instrument each Trellis 100 rps round after its warm-up; stop and dump
# when the next round starts. The dumps are $side.out.1 (HTTP/1.1), .2 (gRPC).
state=wait-http
while kill -0 "$bench" 2>/dev/null; do
  last="$(tail -n 1 "$out/bench.err" 2>/dev/null || true)"
  case "$state:$last" in
    "wait-http:HTTP/1.1 100 rps, Trellis"* | "wait-grpc:gRPC 100 rps, Trellis"*)
      sleep 1.5
      callgrind_control -i on >/dev/null 2>&1
      state="${state#wait-}" ;;
    http:*"Trellis"*) ;;
    grpc:*"Trellis"*) ;;
    http:* | grpc:*)
      callgrind_control -i off >/dev/null 2>&1
      callgrind_control -d "$state" >/dev/null 2>&1
      [ "$state" = http ] && state=wait-grpc || state=done ;;
  esac
  sleep 0.2
done
wait "$bench" || { echo "the benchmark failed: $out/bench.err" >&2; exit 1; }
[ "$state" = done ] || { echo "did not see both 100 rps phases: $out/bench.err" >&2; exit 1; }

# Calls of the function named $2 in callgrind file $1 (callgrind names a
# function in full once, then by its number).
calls() {
  local id
  id="$(grep -m1 -oE "c?fn=\([0-9]+\) $2\$" "$1" | grep -oE '\([0-9]+\)' || true)"
  [ -n "$id" ] || { echo 0; return; }
  awk -v id="cfn=$id" 'index($0, id) == 1 { getline; split($1, a, "="); s += a[2] } END { print s + 0 }' "$1"
}
printf '%-8s %-8s %9s %14s %16s\n' agent protocol requests instructions/req mallocs/req
for n in 1 2; do
  proto=HTTP/1.1; [ $n = 2 ] && proto=gRPC
  for side in client server; do
    f="$out/$side.out.$n"
    req="$(calls "$f" 'trellis_dataplane::telemetry::Telemetry::request_done')"
    ir="$(awk '/^totals:/ { print $2 }' "$f")"
    mallocs=$(( $(calls "$f" malloc) + $(calls "$f" calloc) + $(calls "$f" realloc) ))
    [ "$req" -gt 0 ] || { echo "no requests counted in $f" >&2; exit 1; }
    awk -v s="$side" -v p="$proto" -v r="$req" -v i="$ir" -v m="$mallocs" \
      'BEGIN { printf "%-8s %-8s %9d %14d %16.1f\n", s, p, r, i / r, m / r }'
  done
done
echo "profiles: $out/{client,server}.out.{1,2} (callgrind_annotate FILE)"
