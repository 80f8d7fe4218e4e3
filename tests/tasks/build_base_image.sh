#!/usr/bin/env bash
# Build the base image the fixture task images start from: Debian bookworm (minbase) with
# python3, python3-venv and git, made with debootstrap because the engine has no registry.
# Reused when present. Usage: tests/tasks/build_base_image.sh [image-name]
set -euo pipefail
name="${1:-rlm-base:bookworm}"
if docker image inspect "$name" >/dev/null 2>&1; then
    echo "base image $name present"
    exit 0
fi
# The mirror apt itself uses for bookworm/main.
mirror=$(apt-cache policy 2>/dev/null | awk '/ bookworm\/main / {print $2; exit}')
mirror="${mirror:-http://deb.debian.org/debian}"
root=$(mktemp -d /tmp/rlm-base-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,git bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$name" >/dev/null
echo "base image $name built from $mirror"
