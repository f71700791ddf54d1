"""Orchestrator time per chunk, side by side in one run: the hf backend with its KV cache against the
same model recomputing the whole context for every frame, and both against the chunk's playback time.

The text is pushed whole and final; every chunk of the turn is timed (greedy decoding). Medians and
95th percentiles; the ratios are what to compare across machines.

    .venv/bin/python bench/orchestrator.py [--checkpoint checkpoints/tiny/orchestrator] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from streamchar.config import load_config, resolve_asset_path
from streamchar.loaders import load_unit_lm
from streamchar.orchestrator.backends import HFBackend
from streamchar.orchestrator.pointer import choose_move
from streamchar.orchestrator.session import Orchestrator

TEXT = (
    "Good morning! I read your message about the trip to the mountains, and I think it is a wonderful idea. "
    "We could leave on Friday at 7:30, stop for lunch near the lake, and reach the cabin before dark."
)


class RecomputeBackend(HFBackend):
    """The same model without a KV cache: the whole context runs for every frame (the naive baseline)."""

    @torch.inference_mode()
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            out = self.model(input_ids=torch.tensor([self._tokens], device=self.device), use_cache=False)
            self._logits = out.logits[0, -1].float().cpu()
        return self._logits

    def next_token(self, moves):
        return choose_move(self.logits(), moves, self.temperature, self.generator)


def time_chunks(backend, vocab, chunk_frames: int) -> tuple[list[float], torch.Tensor]:
    orch = Orchestrator(backend, vocab, chunk_frames)
    orch.push_text(TEXT, final=True)
    times, units = [], []
    while True:
        start = time.perf_counter()
        chunk = orch.next_chunk()
        times.append(time.perf_counter() - start)
        units.append(chunk.units)
        if chunk.done:
            return times, torch.cat(units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/tiny/orchestrator")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config()
    model, vocab, _ = load_unit_lm(resolve_asset_path(args.checkpoint))
    chunk_frames = cfg.timeline.chunk_audio_tokens
    chunk_seconds = chunk_frames / cfg.timeline.audio_latent_rate
    time_chunks(HFBackend(model), vocab, chunk_frames)  # warm-up
    cached, units_cached = time_chunks(HFBackend(model), vocab, chunk_frames)
    full, units_full = time_chunks(RecomputeBackend(model), vocab, chunk_frames)
    same = torch.equal(units_cached, units_full)
    result = {
        "chunks": len(cached),
        "chunk_seconds": chunk_seconds,
        "threads": args.threads,
        "kv_cache_median_s": statistics.median(cached),
        "kv_cache_p95_s": sorted(cached)[int(0.95 * (len(cached) - 1))],
        "recompute_median_s": statistics.median(full),
        "recompute_over_cache": statistics.median(full) / statistics.median(cached),
        "kv_cache_fraction_of_playback": statistics.median(cached) / chunk_seconds,
        "same_units": same,
    }
    print(f"{len(cached)} chunks of {chunk_seconds:.2f} s, {args.threads} threads, greedy")
    share = result["kv_cache_fraction_of_playback"]
    print(f"  hf + KV cache : median {result['kv_cache_median_s'] * 1e3:7.1f} ms  "
          f"({share:.1%} of playback), p95 {result['kv_cache_p95_s'] * 1e3:.1f} ms")  # fmt: skip
    print(f"  recompute     : median {result['recompute_median_s'] * 1e3:7.1f} ms  "
          f"({result['recompute_over_cache']:.2f}x the cached time); same units: {same}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
