#!/usr/bin/env bash
# Build a Debian bookworm (minbase) image with debootstrap, because the engine has no registry.
# Reused when present.
#   docker/build_base_image.sh                       -> rlm-base:bookworm (python3, venv, git):
#                                                       what the fixture task images start from
#   docker/build_base_image.sh rlm-project-base:bookworm python3,python3-venv,git,bubblewrap,patch,docker.io,ca-certificates,redis-server
#                                                    -> what the project image (Dockerfile) starts from
set -euo pipefail
name="${1:-rlm-base:bookworm}"
packages="${2:-python3,python3-venv,git}"
if docker image inspect "$name" >/dev/null 2>&1; then
    echo "base image $name present"
    exit 0
fi
# The mirror apt itself uses for bookworm/main.
mirror=$(apt-cache policy 2>/dev/null | awk '/ bookworm\/main / {print $2; exit}')
mirror="${mirror:-http://deb.debian.org/debian}"
root=$(mktemp -d /tmp/rlm-base-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$name" >/dev/null
echo "base image $name built from $mirror"
