#!/bin/sh
# Builds the container images trellis/trellis-agent,
# trellis/trellis-controlplane and trellis/trellis-eastwest (the chart's
# images) FROM scratch: no registry, no base image. Each build
# context holds rootfs/ with the binary, the shared libraries it loads
# (as ldd lists them, the dynamic loader included), /etc/passwd and
# /etc/group naming uid 1337 (trellis), an empty /tmp; the agent's also
# nft and iptables (xtables-nft-multi and its extensions) for its
# capture step. See docs/kubernetes.md ("Container images").
#
#   packaging/images/build.sh [--dev] [--no-build] [--tag TAG]
#                             [--contexts-only DIR] [IMAGE...]
#
# Release binaries by default, --dev the debug build; --no-build takes
# them as they are. Without --contexts-only, `docker build` makes
# trellis/trellis-IMAGE:TAG (TAG: the workspace version); with it, the contexts
# are left in DIR/IMAGE for another builder (or a test) and docker is
# not needed. IMAGE: agent, controlplane, eastwest (default: all).
set -eu
cd "$(dirname "$0")/../.."
profile=release dir=release
build=yes
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
contexts=
while [ $# -gt 0 ]; do
    case "$1" in
    --dev) profile=dev dir=debug ;;
    --no-build) build= ;;
    --tag) shift; tag="$1" ;;
    --contexts-only) shift; contexts="$1" ;;
    -*) echo "build.sh: unknown flag $1" >&2; exit 2 ;;
    *) break ;;
    esac
    shift
done
images="${*:-agent controlplane eastwest}"
target="${CARGO_TARGET_DIR:-target}"
[ -z "$build" ] || cargo build --profile "$profile" -p trellis-agent -p trellis-controlplane -p trellis-eastwest

# copy FILE ROOT: FILE at its own path under ROOT (symlinks followed).
copy() {
    mkdir -p "$2$(dirname "$1")"
    cp -L "$1" "$2$1"
}

# libs PROGRAM ROOT: every library ldd says PROGRAM loads, the dynamic
# loader too.
libs() {
    ldd "$1" | awk '/=> \// { print $3 } /^[ \t]*\/.*ld-linux/ { print $1 }' |
        while read -r lib; do copy "$lib" "$2"; done
}

for image in $images; do
    case "$image" in
    agent | controlplane | eastwest) ;;
    *) echo "build.sh: no image $image (agent, controlplane, eastwest)" >&2; exit 2 ;;
    esac
    if [ -n "$contexts" ]; then
        ctx="$contexts/$image"
        rm -rf "$ctx"
        mkdir -p "$ctx"
    else
        ctx=$(mktemp -d)
        trap 'rm -rf "$ctx"' EXIT
    fi
    root="$ctx/rootfs"
    mkdir -p "$root/usr/bin" "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    cp "packaging/images/$image/Dockerfile" "$ctx/"
    bin="$target/$dir/trellis-$image"
    cp "$bin" "$root/usr/bin/"
    libs "$bin" "$root"
    # Only the release build is stripped: the debug one is for tests.
    [ "$profile" != release ] || strip "$root/usr/bin/trellis-$image"
    printf 'root:x:0:0:root:/:/sbin/nologin\ntrellis:x:1337:1337:trellis:/tmp:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\ntrellis:x:1337:\n' >"$root/etc/group"
    if [ "$image" = agent ]; then
        for tool in nft xtables-nft-multi; do
            copy "$(command -v "$tool")" "$root"
            libs "$(command -v "$tool")" "$root"
        done
        # iptables' extensions are loaded by name at run time.
        # (from the directory built in, /usr/lib/..., even where /lib is
        # the same directory on this machine).
        xt=$(dirname "$(realpath "$(ldd "$(command -v xtables-nft-multi)" | awk '/libxtables/ { print $3 }')")")/xtables
        mkdir -p "$root$xt"
        cp -L "$xt"/*.so "$root$xt/"
        xtables=$(command -v xtables-nft-multi)
        for name in iptables ip6tables iptables-restore ip6tables-restore iptables-save ip6tables-save; do
            ln -sf "$xtables" "$root/usr/sbin/$name"
        done
    fi
    if [ -z "$contexts" ]; then
        # The classic builder: a FROM scratch context needs no BuildKit
        # (which newer clients want as a plugin).
        DOCKER_BUILDKIT=0 docker build -q -t "trellis/trellis-$image:$tag" "$ctx"
        rm -rf "$ctx"
        trap - EXIT
    fi
done
