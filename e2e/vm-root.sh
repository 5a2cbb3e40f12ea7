#!/bin/sh
# Makes the Debian 12 root filesystem the package tests boot under
# systemd-nspawn (e2e/src/vm.rs): minbase with systemd, and what the
# packages depend on. Run once; the tests copy it per run.
#   e2e/vm-root.sh [DIR]   (default /var/cache/trellis-vm/bookworm-curl)
set -eu
root="${1:-/var/cache/trellis-vm/bookworm-curl}"
if ! command -v debootstrap >/dev/null; then
    echo "vm-root.sh: needs debootstrap (apt-get install debootstrap)" >&2
    exit 1
fi
# Made aside, then moved: a half-made root is never taken for a cached one.
tmp="$root.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase --include=systemd,dbus,iproute2,iptables,nftables,curl \
    bookworm "$tmp" http://deb.debian.org/debian
mv "$tmp" "$root"
trap - EXIT
