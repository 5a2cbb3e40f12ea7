#!/bin/bash
# Builds the real Kubernetes API server (and kube-controller-manager) the
# Kubernetes tests run against: v1.20.2 from Debian 12's `kubernetes`
# source package (its Go dependencies are vendored), with Debian's Go.
# Installs what it needs with apt; run once, the tests reuse the result.
#   e2e/kube/build.sh [DIR]   (default /var/cache/trellis-kube/bin)
# About 4 minutes on 2 cores, 2.2 GB of scratch space, 220 MB kept.
set -euo pipefail
out="${1:-/var/cache/trellis-kube/bin}"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ]; then
    exit 0
fi
# The source package needs a deb-src entry twin of the Debian one.
src=/etc/apt/sources.list.d/trellis-deb-src.sources
if ! apt-get source --print-uris kubernetes >/dev/null 2>&1; then
    cat >"$src" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq
fi
need=()
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
command -v rsync >/dev/null || need+=(rsync)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
work=$(mktemp -d /var/tmp/trellis-kube-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source -qq kubernetes >/dev/null 2>&1
cd kubernetes-*/
# The vendored reflect2 1.0.1 crashes on custom resources under Go >= 1.18
# (map iteration); Debian's 1.0.2 does not.
rm -f vendor/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
    /usr/share/gocode/src/github.com/modern-go/reflect2/*.s vendor/github.com/modern-go/reflect2/
export CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=vendor GO111MODULE=on HOME="$work/home" GOTOOLCHAIN=local
mkdir -p "$HOME"
make -s WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >/dev/null
# Moved in whole: a half-copied directory is never taken for a built one.
mkdir -p "$(dirname "$out")"
rm -rf "$out.tmp"
mkdir "$out.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
