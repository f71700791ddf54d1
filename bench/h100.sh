#!/usr/bin/env bash
# Every issue-9 measurement in one call on a GPU machine (the device tool's `run`), results under $OUT:
#   1. the GPU tests (CUDA graphs equal eager, the CUDA-stream decode equals the inline one, ...);
#   2. the base preset with random weights, 2 steps (then 1 and 4), 512x512: the all-on row and one row per
#      optimisation switched off alone, in one run, with DiT MFU and per-session GPU memory (bench_base.*);
#   3. a profiler trace of a few chunks and the per-stage summary (profile_base/);
#   4. with two GPUs, the same rows with the decoders on the second GPU.
# The machines lack some packages and espeak-ng: `bash bench/device_wheels.sh` here first, then
#   run(command="bash bench/h100.sh", carry=[".whl"], timeout_s=600)
# Text is phonemised from bench/phonemes_en-us.json (espeak's answers for the benchmark's sentences,
# recorded here with STREAMCHAR_RECORD_PHONEMES).
set -euo pipefail
OUT=${OUT:-out/h100}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" STREAMCHAR_PHONEMES="$PWD/bench/phonemes_en-us.json"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.csv"
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15 > "$OUT/gpu_tests.txt" || true
# the static LM cache against the growing one, on the machine's own transformers version
python3 -m pytest -q -p no:cacheprovider tests/test_fastpath.py -k orchestrator 2>&1 | tail -5 >> "$OUT/gpu_tests.txt" || true
device=$(python3 -c 'import torch; print(torch.cuda.get_device_name())')
python3 -m streamchar.engine.flops --config configs/base.yaml --steps 2 --device "$device" > "$OUT/flops_base.txt"
split=""
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then split="--split"; fi
python3 -m streamchar.cli bench stream --config configs/base.yaml --random-init --steps 2 1 4 --chunks 16 \
    --overlap on --ablate $split --profile "$OUT/profile_base" --json "$OUT/bench_base.json" \
    2> "$OUT/bench_base.log" | tee "$OUT/bench_base.txt"
