#!/bin/sh
# Builds the .deb packages trellis-agent (with the trellis CLI),
# trellis-controlplane and trellis-eastwest (docs/vm.md).
#
#   packaging/build-deb.sh [--dev] [--no-build] [--deb-version V] [--only PACKAGE] [OUTDIR]
#
# Release binaries by default; --dev packages the debug build instead
# (what the tests install: CI builds it anyway), with faster compression.
# --no-build takes the binaries as they are. --deb-version gives the
# packages version V instead of the workspace's (the upgrade test's
# "newer" package). --only builds that one package.
# The packages go to OUTDIR (default: $CARGO_TARGET_DIR/debian, or
# target/debian). Needs cargo-deb (`cargo install cargo-deb`); $CARGO_DEB
# or /var/cache/trellis-tools/bin/cargo-deb are used when set or there.
set -eu
cd "$(dirname "$0")/.."
profile=release
# Stripped: the release profile keeps line tables (for backtraces), which
# cargo-deb would otherwise ship, doubling the agent's package.
deb_flags="--strip"
build=yes
packages="trellis-agent trellis-controlplane trellis-eastwest"
while [ $# -gt 0 ]; do
    case "$1" in
    --dev) profile=dev; deb_flags="$deb_flags --fast" ;;
    --no-build) build= ;;
    --deb-version) shift; deb_flags="$deb_flags --deb-version $1" ;;
    --only) shift; packages="$1" ;;
    -*) echo "build-deb.sh: unknown flag $1" >&2; exit 2 ;;
    *) break ;;
    esac
    shift
done
target="${CARGO_TARGET_DIR:-target}"
out="${1:-$target/debian}"
cargo_deb="${CARGO_DEB:-}"
if [ -z "$cargo_deb" ]; then
    if command -v cargo-deb >/dev/null; then
        cargo_deb=cargo-deb
    elif [ -x /var/cache/trellis-tools/bin/cargo-deb ]; then
        cargo_deb=/var/cache/trellis-tools/bin/cargo-deb
    else
        echo "build-deb.sh: cargo-deb not found: cargo install cargo-deb" >&2
        exit 1
    fi
fi
# One build for the four binaries, then packaging only.
[ -z "$build" ] || cargo build --profile "$profile" -p trellis-agent -p trellis -p trellis-controlplane -p trellis-eastwest
mkdir -p "$out"
for package in $packages; do
    # shellcheck disable=SC2086 # deb_flags is a list of flags
    "$cargo_deb" -p "$package" --no-build --profile "$profile" $deb_flags -o "$out"
done
ls -l "$out"/*.deb
