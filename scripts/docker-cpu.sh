#!/usr/bin/env bash
# Build the CPU image (Dockerfile.cpu) with no registry: the base from debootstrap (scripts/docker-base.sh),
# Debian's packages and PyPI reached during the build (--network host), torch's CPU wheel from wherever this
# host's pip finds it.
#   IMAGE   the tag to build (default local-llm-interface:cpu)
#   VENV    the venv whose pip and versions to use (default .venv, which `make setup` makes)
set -euo pipefail
cd "$(dirname "$0")/.."
image=${IMAGE:-local-llm-interface:cpu}
pipdir=build/docker/pip
venv=${VENV:-.venv}
log() { printf '[docker-cpu] %s\n' "$*" >&2; }

bash scripts/docker-daemon.sh
bash scripts/docker-base.sh

# torch 2.13.0+cpu is not on PyPI: pip on this host finds it through its own configuration (a local wheel,
# or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu as the README says). The image also gets the
# versions $venv has, the ones the tests ran with, as constraints.
rm -rf "$pipdir" && mkdir -p "$pipdir"
log "gathering torch 2.13.0's CPU wheel, $venv's versions and pip's CA bundle into $pipdir"
"$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps -d "$pipdir" "torch==2.13.0" 2>&1 \
    | grep -v "^WARNING: Location '.*' is ignored" || true
ls "$pipdir"/torch-2.13.0+cpu-*.whl >/dev/null
"$venv/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable >"$pipdir/constraints.txt"
# The CA bundle pip uses here, for the build stage only: on a network whose TLS to PyPI goes through a proxy
# of its own, the image's stock certificates would not verify it.
cert=$("$venv/bin/python" -m pip config get global.cert 2>/dev/null || true)
cp "${PIP_CERT:-${cert:-/etc/ssl/certs/ca-certificates.crt}}" "$pipdir/ca-certificates.crt"

log "building $image (legacy builder: Debian's docker.io has no buildx)"
start=$(date +%s)
DOCKER_BUILDKIT=0 docker build --force-rm --network host -f Dockerfile.cpu -t "$image" .
log "built $image in $(($(date +%s) - start)) s; $(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec) uncompressed"
