#!/usr/bin/env bash
# Make sure a Docker daemon answers. When none does and we are root with Debian's dockerd installed, start
# one in the background with the vfs storage driver (works on any filesystem, no overlay mounts needed;
# slow and disk-hungry, since every layer is a full copy). Its log: build/docker/dockerd.log.
#   DOCKERD_STORAGE_DRIVER   another driver, e.g. overlay2
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[docker-daemon] %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
    log "no Docker daemon answers; start one (Debian: apt-get install docker.io; dockerd --storage-driver=vfs &)"
    exit 1
fi
mkdir -p build/docker
log "starting dockerd --storage-driver=${DOCKERD_STORAGE_DRIVER:-vfs} (log: build/docker/dockerd.log)"
nohup dockerd --storage-driver="${DOCKERD_STORAGE_DRIVER:-vfs}" >build/docker/dockerd.log 2>&1 &
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 1
done
log "dockerd did not answer within 60 s; see build/docker/dockerd.log"
exit 1
