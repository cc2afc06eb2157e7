#!/usr/bin/env bash
# Prepare, on a machine with network, what tests/gpu/device_check.sh needs on a GPU machine without
# network (see tests/gpu/README.md):
#
#   tests/gpu/prepare.sh COMFYUI_DIR [PYTHON_VERSION]     (default 3.12, the device image's python)
#
# Writes, inside the repository but ignored by git (.git/info/exclude gets /.gpu/):
#   .gpu/comfyui      ComfyUI's code from COMFYUI_DIR (no tests, docs, blueprints or git): ~24 MB
#   .gpu/carry-N      the wheels the device image lacks (ComfyUI's requirements but torch and the
#                     frontend packages), for that python on x86-64 Linux, cut into pieces so that
#                     each folder plus the repository stays under the device tool's 64 MiB a call
# and prints the device calls to make.
set -euo pipefail
cd "$(dirname "$0")/../.."
COMFY=$(realpath "${1:?usage: tests/gpu/prepare.sh COMFYUI_DIR [PYTHON_VERSION]}")
PYVER=${2:-3.12}
PY=${PYTHON:-python3}
[[ -f "$COMFY/main.py" ]] || { echo "no main.py in $COMFY: give a ComfyUI checkout" >&2; exit 2; }
grep -qxF "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/comfyui .gpu/wheels

# ComfyUI's code, without what a server does not run
tar -C "$COMFY" --exclude=./.git --exclude=./tests --exclude=./tests-unit --exclude=./blueprints --exclude='*.md' \
    --exclude=./models --exclude=./output --exclude=./input --exclude=./user --exclude=./custom_nodes -cf - . \
  | tar -C .gpu/comfyui -xf -
mkdir -p .gpu/comfyui/custom_nodes

# ComfyUI's requirements that the device image does not have (it has torch, numpy, transformers,
# safetensors, aiohttp, …: tests/gpu/README.md), and what they need in turn; pinned as ComfyUI pins
pins=$(grep -E '^(comfy-kitchen|comfy-aimdo)==' "$COMFY/requirements.txt" | tr '\n' ' ')
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .gpu/wheels \
    $pins 'av>=16.0.0' torchsde trampoline alembic Mako 'SQLAlchemy>=2.0.0' greenlet 'simpleeval>=1.0' blake3 \
    'kornia>=0.7.1' kornia_rs spandrel 'pydantic~=2.0' pydantic-core annotated-types typing-inspection \
    'pydantic-settings~=2.0' python-dotenv gguf

# cut every wheel into pieces of at most 24 MiB and deal them into folders of at most 48 MiB
(cd .gpu/wheels && for w in *.whl; do split -b 24M -d -a 2 "$w" "$w.part-"; rm "$w"; done)
n=1; size=0; mkdir -p .gpu/carry-1
for p in $(ls -S .gpu/wheels); do
    s=$(stat -c %s ".gpu/wheels/$p")
    if (( size + s > 48 * 1024 * 1024 )); then n=$((n + 1)); size=0; mkdir -p ".gpu/carry-$n"; fi
    mv ".gpu/wheels/$p" ".gpu/carry-$n/"; size=$((size + s))
done
rmdir .gpu/wheels
du -sh .gpu/comfyui .gpu/carry-*
echo
echo "Device calls (each right after the last, while the machine is warm; see tests/gpu/README.md):"
for ((i = 1; i < n; i++)); do
    echo "  run(command='tests/gpu/device_check.sh --receive .gpu/carry-$i', carry=['.gpu/carry-$i'], timeout_s=120)"
done
echo "  run(command='tests/gpu/device_check.sh --receive .gpu/carry-$n --install', carry=['.gpu/carry-$n', '.gpu/comfyui'], timeout_s=590)"
