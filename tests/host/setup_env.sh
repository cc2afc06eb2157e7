#!/usr/bin/env bash
# Build the environment for host tests: a ComfyUI checkout and a python venv that runs it.
#
#   tests/host/setup_env.sh COMFYUI_DIR VENV_DIR [GIT_DIR] [GGUF_DIR]
#
# COMFYUI_DIR  ComfyUI checkout (kept if it already has main.py; else extracted from GIT_DIR,
#              a git directory holding a ComfyUI snapshot, e.g. a bare clone).
# VENV_DIR     venv to create (python3.11) with torch, ComfyUI's requirements and the pack's
#              requirements.txt (as ComfyUI-Manager installs it).
# GGUF_DIR     optional: a ComfyUI-GGUF checkout (city96, not on PyPI; tested at 795e451:
#              git clone https://github.com/city96/ComfyUI-GGUF && git -C ComfyUI-GGUF checkout 795e451);
#              its requirements (gguf) go into the venv and the GGUF host tests run.
#
# Idempotent: an existing checkout or venv is reused. Prints the env vars to export at the end.
# Nothing is written inside the repo.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
COMFYUI=$(realpath -m "$1")
VENV=$(realpath -m "$2")
GIT_DIR=${3:-}
GGUF_DIR=${4:-}
PY=${PYTHON:-python3.11}

if [[ ! -f "$COMFYUI/main.py" ]]; then
    [[ -n "$GIT_DIR" ]] || { echo "no main.py in $COMFYUI and no GIT_DIR to extract it from" >&2; exit 2; }
    mkdir -p "$COMFYUI"
    # Not `git archive`: snapshots may lack a few large blobs (tokenizer JSONs of models the
    # host tests do not use), and git archive aborts on the first missing one.
    git --git-dir="$GIT_DIR" ls-tree -r -z HEAD | "$PY" -c '
import os, subprocess, sys
git_dir, dest = sys.argv[1], sys.argv[2]
missing = []
for entry in sys.stdin.buffer.read().split(b"\0"):
    if not entry:
        continue
    meta, path = entry.split(b"\t", 1)
    mode, kind, sha = meta.split()
    if kind != b"blob":
        continue
    blob = subprocess.run(["git", "--git-dir", git_dir, "cat-file", "blob", sha.decode()], capture_output=True)
    if blob.returncode:
        missing.append(path.decode())
        continue
    target = os.path.join(dest, path.decode())
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if mode == b"120000":
        os.symlink(blob.stdout.decode(), target)
    else:
        with open(target, "wb") as f:
            f.write(blob.stdout)
        if mode == b"100755":
            os.chmod(target, 0o755)
if missing:
    print("setup_env: blobs missing from the snapshot (skipped):", *missing, sep="\n  ", file=sys.stderr)
' "$GIT_DIR" "$COMFYUI"
fi
grep -h __version__ "$COMFYUI/comfyui_version.py" || true

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
# torchaudio: ComfyUI 0.33 imports it at startup (comfy/sd.py); no build exists for torch 2.14,
# so take 2.11 without its torch pin: its pure-python parts import fine.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" --no-deps torchaudio==2.11.0
grep -v -E '^(torch|torchvision|torchaudio)([<>=!~ ].*)?$' "$COMFYUI/requirements.txt" > "$VENV/comfyui-requirements.txt"
"${PIP[@]}" -r "$VENV/comfyui-requirements.txt"
# the pack's dependencies as ComfyUI-Manager installs them (its requirements.txt), and the test tools
REPO=$(cd "$(dirname "$0")/../.." && pwd)
"${PIP[@]}" -r "$REPO/requirements.txt"
"${PIP[@]}" pytest requests
if [[ -n "$GGUF_DIR" ]]; then
    [[ -f "$GGUF_DIR/nodes.py" ]] || { echo "no ComfyUI-GGUF checkout in $GGUF_DIR (no nodes.py)" >&2; exit 2; }
    "${PIP[@]}" -r "$GGUF_DIR/requirements.txt"
fi

echo "export PROGRPO_COMFYUI=$COMFYUI"
echo "export PROGRPO_COMFYUI_PYTHON=$VENV/bin/python"
[[ -z "$GGUF_DIR" ]] || echo "export PROGRPO_COMFYUI_GGUF=$(realpath "$GGUF_DIR")"
