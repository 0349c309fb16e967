#!/usr/bin/env bash
# A user without a checkout: build the wheel, install it (not editable) into a fresh venv with the locked
# versions, and run the CLI from a directory outside the checkout (presets and the demo's samples must come
# from the installed package). Usage: wheel-check.sh TORCH_VERSION LOCK
set -euo pipefail
torch_version=$1
lock=$(realpath "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch=="$torch_version"
"$work/venv/bin/python" -m pip install --quiet -c "$lock" "$work"/dist/sftpipe-*.whl
cd "$work"
unset PYTHONPATH
"$work/venv/bin/sftpipe" show-config --preset fast_test | grep -q "max_steps: 4"
"$work/venv/bin/sftpipe" demo --quick --out "$work/demo" | tee "$work/demo.log"
grep -q "held-out test loss" "$work/demo.log"
test -f "$work/demo/merged/model.safetensors"
echo "wheel check passed: $(ls "$work"/dist)"
