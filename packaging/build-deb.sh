#!/bin/sh
# The .deb packages alone: packaging/build.sh --deb (see there).
#
#   packaging/build-deb.sh [--dev] [--no-build] [--deb-version V] [--only PACKAGE] [OUTDIR]
exec "$(dirname "$0")/build.sh" --deb "$@"
