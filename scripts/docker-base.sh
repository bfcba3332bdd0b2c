#!/usr/bin/env bash
# Make the base image the Dockerfiles' CPU build starts from, with no registry: a minimal Debian bookworm
# made by debootstrap from a Debian mirror, then `docker import`ed.
#
# Idempotent: when the image exists it returns at once. Needs root, debootstrap and a running dockerd.
#   DEBIAN_MIRROR   the mirror to bootstrap from (default: http://deb.debian.org/debian)
#   BASE_IMAGE      the tag to import as (default: the one Dockerfile.cpu names)
set -euo pipefail
cd "$(dirname "$0")/.."

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
image=${BASE_IMAGE:-local-llm/debian:bookworm-minbase}
log() { printf '[docker-base] %s\n' "$*" >&2; }

if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image exists"
    exit 0
fi
command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }

rootfs=$(mktemp -d /var/tmp/local-llm-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
log "debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# Security and point-release updates too, as Debian's own images have; and no package caches in the image.
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

# mktemp made the folder 0700, and the tar's "." becomes the image's /: a non-root user could not reach anything.
chmod 755 "$rootfs"
log "importing as $image"
tar -C "$rootfs" --numeric-owner -c . \
    | docker import --change 'CMD ["/bin/bash"]' --message "debootstrap --variant=minbase bookworm" - "$image"
docker image ls "$image"
