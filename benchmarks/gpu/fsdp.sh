#!/usr/bin/env bash
# FSDP2 on 1 GPU vs the plain model, bf16 full fine-tune: tokens/s, peak memory, MFU (<= 6 min on one H200).
# Run from the repository root on a machine with a CUDA GPU; writes benchmarks/gpu/results/fsdp.json and .txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p benchmarks/gpu/results
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee benchmarks/gpu/results/fsdp.txt
timeout 330 python -m torch.distributed.run --nproc_per_node 1 --master_port 29561 benchmarks/gpu/fsdp.py \
    --hidden 2048 --layers 16 --seq 2048 --batch 4 --grad-accum 2 --steps 10 \
    --out benchmarks/gpu/results/fsdp.json "$@" | tee -a benchmarks/gpu/results/fsdp.txt
