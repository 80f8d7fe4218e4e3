#!/usr/bin/env bash
# Download the locked dependencies as wheels into .wheels/, for an offline image build: pip
# inside a build container cannot verify TLS here, and needs no network this way.
#   EXTRAS=dashboard docker/download_wheels.sh        (default; EXTRAS=dashboard,gpu for a GPU image)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${EXTRAS:-dashboard}"
args=()
for extra in ${extras//,/ }; do args+=(--extra "$extra"); done
mkdir -p .wheels
# token-columns is the project's own C extension (native/): built into a wheel below.
uv export --frozen --no-dev --no-hashes --no-emit-project --no-emit-package token-columns \
    "${args[@]}" -o .wheels/locked.txt >/dev/null
# Judge the lock's environment markers for the image (Debian bookworm: CPython 3.11.2, x86_64
# Linux), not for this host, and pin exactly those packages.
uv run --frozen python - <<'PY'
from packaging.requirements import Requirement

image = {"python_full_version": "3.11.2", "python_version": "3.11", "sys_platform": "linux",
         "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
         "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
pins = []
for line in open(".wheels/locked.txt"):
    line = line.strip()
    if not line or line.startswith(("#", "-")):
        continue
    requirement = Requirement(line)
    if requirement.marker is None or requirement.marker.evaluate(image):
        pins.append(f"{requirement.name}{requirement.specifier}")
open(".wheels/requirements.txt", "w").write("\n".join(pins) + "\n")
PY
# pip from its own tool environment: the project venv (made by uv) has none.
uv tool run --quiet pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    --python-version 3.11 --implementation cp --abi cp311 \
    $(for v in 2014 _2_17 _2_24 _2_28 _2_31 _2_34 _2_36; do echo --platform "manylinux${v}_x86_64"; done) \
    -r .wheels/requirements.txt -d .wheels
# The C extension, built by this host's CPython 3.11 for the image's (the same ABI, cp311, and
# the same glibc: both Debian bookworm), in a TMPDIR of its own (uv leaves lock files there).
build_tmp=$(mktemp -d "$PWD/.wheels/build.XXXXXX")
TMPDIR="$build_tmp" uv build --quiet --python 3.11 --wheel native -o .wheels
rm -rf "$build_tmp"
echo "token-columns" >> .wheels/requirements.txt
echo "wheels for extras [$extras] in .wheels/ ($(ls .wheels/*.whl | wc -l) files)"
