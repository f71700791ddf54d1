#!/usr/bin/env bash
# Wheels the GPU machines lack (their image has torch, transformers, tqdm, scipy, pytest, but not these), for
# Python 3.12 manylinux, into .whl/ (ignored by git), which bench/h100.sh installs from when carried:
#   bash bench/device_wheels.sh        # here, once per session (needs the package registry)
#   run(command="bash bench/h100.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail
mkdir -p .whl
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl diffusers importlib_metadata omegaconf soundfile cffi pycparser
# antlr4-python3-runtime 4.9.3 (omegaconf's parser) ships only as source: build its pure-Python wheel here
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
ls -1 .whl
