#!/usr/bin/env bash
# One prepared run for a lent GPU (about 6 min on one H200): peak CUDA memory of full bf16 / LoRA / QLoRA steps
# at seq 2048, with and without gradient checkpointing, on random-init 1B and 8B shapes (14B for QLoRA) beside
# sftpipe's estimate, with tokens/s and MFU; then sftpipe vs TRL's best settings on the 1B shape.
# Needs a Python with CUDA torch, sftpipe's dependencies, bitsandbytes and trl (PYTHON=..., default python3;
# flash-attn and liger-kernel are used when installed). Results: benchmarks/gpu/results/.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT_DIR:-benchmarks/gpu/results}
mkdir -p "$OUT"
"$PY" - <<'PY' || exit 1
import importlib.util, sys, torch
missing = [m for m in ("bitsandbytes", "trl", "peft", "transformers") if importlib.util.find_spec(m) is None]
print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, missing: {missing or 'none'}")
sys.exit(0 if torch.cuda.is_available() and not missing else 1)
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 270 "$PY" benchmarks/gpu/memory.py --out "$OUT" 2>&1 | tee "$OUT/memory.log"
timeout 150 "$PY" benchmarks/gpu/trl_compare.py --out "$OUT" 2>&1 | tee "$OUT/trl_compare.log"
