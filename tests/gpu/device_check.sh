#!/usr/bin/env bash
# One-shot GPU check (tests/gpu/README.md says how to prepare and run it with the device tool).
# From the repository root on a machine with one NVIDIA GPU and no network:
#
#   tests/gpu/device_check.sh --receive DIR            keep the wheel pieces DIR holds (made by
#                                                      prepare.sh) in /tmp/progrpo-parts, and stop
#   tests/gpu/device_check.sh [--receive DIR] --install [ARGS]
#                                                      join the pieces into wheels, install them
#                                                      into /tmp/progrpo-site, then run the check
#   tests/gpu/device_check.sh [ARGS]                   run the check: every step under its own
#                                                      timeout, then one table
#
# ARGS go to tests/gpu/device_check.py (--budget S, --comfyui DIR, --cpu for a dry run here). The
# ComfyUI checkout defaults to .gpu/comfyui. Results (the table, each step's log) go to $OUT when it
# is set, else /tmp/progrpo-device-check.
set -uo pipefail
cd "$(dirname "$0")/../.."
SITE=/tmp/progrpo-site
PARTS=/tmp/progrpo-parts
PY=${PYTHON:-python3}

install=0
received=0
args=()
while (( $# )); do
    case "$1" in
        --receive) mkdir -p "$PARTS" && cp "${2:?--receive DIR}"/* "$PARTS"/ && echo "received $(ls "$2" | wc -l) piece(s) from $2"
                   received=1; shift 2 ;;
        --install) install=1; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if (( received && ! install )) && [[ ${#args[@]} -eq 0 ]]; then
    exit 0  # only receiving: the check runs with --install, in the last call
fi
if (( install )); then
    wheels=$(mktemp -d)
    for first in "$PARTS"/*.whl.part-00; do
        [[ -e "$first" ]] || { echo "no wheel pieces in $PARTS: run --receive first" >&2; exit 2; }
        name=$(basename "${first%.part-00}")
        cat "$PARTS/$name".part-* > "$wheels/$name"
    done
    mkdir -p "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$wheels"/*.whl \
        || { echo "installing the carried wheels failed" >&2; exit 2; }
    echo "installed $(ls "$wheels" | wc -l) wheel(s) into $SITE"
fi
[[ -d "$SITE" ]] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ " ${args[*]:-} " != *" --comfyui "* && -f .gpu/comfyui/main.py ]]; then
    args+=(--comfyui "$PWD/.gpu/comfyui")
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec timeout 560 "$PY" tests/gpu/device_check.py "${args[@]}"
