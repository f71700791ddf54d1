#!/usr/bin/env bash
# Every issue-9 measurement in one call on a GPU machine (the device tool's `run`), results under $OUT:
#   1. the GPU tests (CUDA graphs equal eager, the CUDA-stream decode equals the inline one, ...);
#   2. the base preset with random weights, 2 steps, 512x512: the all-on row and one row per optimisation
#      switched off alone, in one run, with DiT MFU and per-session GPU memory (bench_base.json / .txt);
#   3. a profiler trace of a few chunks and the per-stage summary (profile_base/);
#   4. with two GPUs, the same rows with the decoders on the second GPU.
# The device machines have torch, transformers and einops but not diffusers (the Wan VAE) or PyAV: put their
# wheels in wheels/ (ignored by git: `pip download --no-deps -d wheels diffusers av`) and carry it:
#   run(command="bash bench/h100.sh", carry=["wheels"], timeout_s=600)
set -euo pipefail
OUT=${OUT:-out/h100}
mkdir -p "$OUT"
if compgen -G "wheels/*.whl" > /dev/null; then pip install -q --no-index --no-deps wheels/*.whl; fi
pip install -q --no-deps --no-build-isolation -e . > /dev/null
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.csv"
python -m pytest -q -m gpu tests 2>&1 | tail -15 > "$OUT/gpu_tests.txt" || true
python -m streamchar.engine.flops --config configs/base.yaml --steps 2 \
    --device "$(python -c 'import torch; print(torch.cuda.get_device_name())')" > "$OUT/flops_base.txt"
split=""
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then split="--split"; fi
streamchar bench stream --config configs/base.yaml --random-init --steps 2 1 4 --chunks 16 --overlap on \
    --ablate $split --profile "$OUT/profile_base" --json "$OUT/bench_base.json" 2> "$OUT/bench_base.log" \
    | tee "$OUT/bench_base.txt"
