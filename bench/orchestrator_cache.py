"""The orchestrator's planning time per chunk with its growing KV cache (through transformers' modules and
through the lean decode step), the static cache eager, and the static cache compiled (graph-captured on
CUDA), side by side in one run, with the units each plans.

    .venv/bin/python bench/orchestrator_cache.py [--model tiny] [--chunks 20] [--frames 12]
"""

from __future__ import annotations

import argparse
import time

import torch

from streamchar.config import load_config, model_overrides
from streamchar.engine.engine import Engine

TEXT = " ".join(["Tell me what you would like to talk about today."] * 6)
# (name, orchestrator.static_cache, engine.compile, orchestrator.lean_decode)
VARIANTS = (
    ("growing cache", "off", "off", "off"),
    ("lean step", "off", "off", "on"),
    ("static, eager", "on", "off", "off"),
    ("static, compiled", "on", "on", "off"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--frames", type=int, default=12, help="audio frames per chunk")
    args = parser.parse_args()
    rows, reference = [], None
    for name, static, compiled, lean in VARIANTS + VARIANTS[:2]:  # the first two again: drift of the machine
        preset, overrides = model_overrides(args.model)
        switches = [f"orchestrator.static_cache={static}", f"engine.compile={compiled}",
                    f"orchestrator.lean_decode={lean}"]  # fmt: skip
        cfg = load_config(preset, overrides + ["engine.realign=false", *switches])
        engine = Engine.from_config(cfg)
        orchestrator = engine.orchestrator([engine.character()])
        orchestrator.push_text(TEXT, final=True)
        for _ in range(3):  # warm-up (and compilation)
            orchestrator.next_chunk(args.frames)
        start = time.perf_counter()
        units = torch.cat([orchestrator.next_chunk(args.frames).units for _ in range(args.chunks)])
        ms = (time.perf_counter() - start) / args.chunks * 1000
        reference = units if reference is None else reference
        rows.append((name, ms, bool(torch.equal(units, reference))))
    print(f"device {engine.device}, {torch.get_num_threads()} threads, {args.frames} frames per chunk")
    for name, ms, same in rows:
        print(f"{name:>18}: {ms:7.1f} ms per chunk; units {'the same' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
