#!/bin/sh
# Builds the packages trellis-agent (with the trellis CLI),
# trellis-controlplane and trellis-eastwest, as .deb and .rpm
# (docs/vm.md).
#
#   packaging/build.sh [--deb] [--rpm] [--dev] [--no-build]
#                      [--deb-version V] [--only PACKAGE] [OUTDIR]
#
# Both kinds unless --deb or --rpm picks one. Release binaries by
# default; --dev packages the debug build instead (what the tests
# install: CI builds it anyway), with faster compression. --no-build
# takes the binaries as they are. --deb-version gives the .debs version
# V instead of the workspace's (an upgrade test's "newer" package);
# --only makes that one .deb (the upgrade test's trellis-agent). The
# packages go to OUTDIR (default: $CARGO_TARGET_DIR/debian and
# $CARGO_TARGET_DIR/generate-rpm, or the same under target/). Needs cargo-deb and cargo-generate-rpm (`cargo
# install cargo-deb cargo-generate-rpm`); $CARGO_DEB and
# $CARGO_GENERATE_RPM, or /var/cache/trellis-tools/bin, are used when
# set or there.
set -eu
cd "$(dirname "$0")/.."
profile=release
# Stripped: the release profile keeps line tables (for backtraces), which
# the packages would otherwise ship, doubling the agent's.
deb_flags="--strip"
rpm_flags=
deb= rpm=
build=yes
debs="trellis-agent trellis-controlplane trellis-eastwest"
while [ $# -gt 0 ]; do
    case "$1" in
    --deb) deb=yes ;;
    --rpm) rpm=yes ;;
    --dev)
        profile=dev
        deb_flags="$deb_flags --fast"
        # zstd, the default, takes ten times as long on debug binaries.
        rpm_flags="--payload-compress gzip"
        ;;
    --no-build) build= ;;
    --deb-version) shift; deb_flags="$deb_flags --deb-version $1" ;;
    --only) shift; debs="$1" ;;
    -*) echo "build.sh: unknown flag $1" >&2; exit 2 ;;
    *) break ;;
    esac
    shift
done
[ -n "$deb$rpm" ] || deb=yes rpm=yes
target="${CARGO_TARGET_DIR:-target}"

# Where tool $1 is: $2 (its variable, $CARGO_DEB...) when set, else on
# PATH or in the tools' cache .ci/run keeps.
tool() {
    if [ -n "$2" ]; then
        echo "$2"
    elif command -v "$1" >/dev/null; then
        echo "$1"
    elif [ -x "/var/cache/trellis-tools/bin/$1" ]; then
        echo "/var/cache/trellis-tools/bin/$1"
    else
        echo "build.sh: $1 not found: cargo install $1" >&2
        exit 1
    fi
}
[ -z "$deb" ] || cargo_deb="$(tool cargo-deb "${CARGO_DEB:-}")"
[ -z "$rpm" ] || cargo_generate_rpm="$(tool cargo-generate-rpm "${CARGO_GENERATE_RPM:-}")"

# One build for the four binaries, then packaging only.
[ -z "$build" ] || cargo build --profile "$profile" -p trellis-agent -p trellis -p trellis-controlplane -p trellis-eastwest

if [ -n "$deb" ]; then
    out="${1:-$target/debian}"
    mkdir -p "$out"
    for package in $debs; do
        # shellcheck disable=SC2086 # deb_flags is a list of flags
        "$cargo_deb" -p "$package" --no-build --profile "$profile" $deb_flags -o "$out"
    done
    ls -l "$out"/*.deb
fi

if [ -n "$rpm" ]; then
    out="${1:-$target/generate-rpm}"
    mkdir -p "$out"
    # cargo-generate-rpm does not strip: stripped copies (as cargo-deb
    # --strip makes) in a directory of their own, TARGET/rpm-PROFILE,
    # which its --profile makes the packages' target/release/.
    dir=debug
    [ "$profile" = dev ] || dir="$profile"
    stripped="rpm-$profile"
    mkdir -p "$target/$stripped"
    for bin in trellis-agent trellis trellis-controlplane trellis-eastwest; do
        strip --strip-unneeded -o "$target/$stripped/$bin" "$target/$dir/$bin"
    done
    # Its -p takes the crate's directory.
    for crate in agent controlplane eastwest-gateway; do
        # shellcheck disable=SC2086 # rpm_flags is a list of flags
        "$cargo_generate_rpm" generate-rpm -p "$crate" --target-dir "$target" \
            --profile "$stripped" $rpm_flags -o "$out"
    done
    ls -l "$out"/*.rpm
fi
