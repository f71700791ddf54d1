"""Denoiser size, FLOPs per denoising step per chunk, and sampling time with and without the context cache.

Parameter counts and FLOPs are counted for the tiny and base presets on PyTorch's meta device (no memory,
no weights) by :func:`streamchar.engine.flops.dit_flops`: one forward pass of one item, for the full
window (what a step costs without the cache) and for the current chunk over cached context K/V, plus the
once-per-chunk motion update and the once-per-session reference + sink update. The whole chunk (decoders
and orchestrator too) is ``python -m streamchar.engine.flops``.

The timing part runs the tiny preset for real: ``--chunks`` chunks of ``--steps`` Euler steps, once
recomputing the whole window at every step and once with the cache, side by side in one run.

    .venv/bin/python bench/denoiser.py [--chunks 4] [--steps 4] [--threads 2] [--teacher RUN] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from streamchar.config import load_config
from streamchar.denoiser.build import build_denoiser, build_sampler
from streamchar.denoiser.dit import Conditions
from streamchar.denoiser.rollout import generate
from streamchar.engine.flops import dit_flops
from streamchar.loaders import meta_latent_spec


def size_and_flops(preset: str) -> dict:
    d = dit_flops(load_config(preset))
    return {
        "preset": preset,
        "parameters": d.parameters,
        "tokens_current_chunk": d.tokens_current_chunk,
        "tokens_window": d.tokens_window,
        "gflops_step_full_window": round(d.step_full_window / 1e9, 2),
        "gflops_step_cached": round(d.step_cached / 1e9, 2),
        "gflops_motion_update_per_chunk": round(d.motion_update / 1e9, 2),
        "gflops_reference_and_sink_per_session": round(d.reference_and_sink / 1e9, 2),
    }


def sampling_times(chunks: int, steps: int, teacher: str | None) -> dict:
    cfg = load_config("tiny", [f"sample.steps={steps}"])
    spec = meta_latent_spec(cfg)
    torch.manual_seed(0)
    if teacher:
        from streamchar.loaders import load_teacher

        model = load_teacher(teacher, cfg, spec)
    else:
        model = build_denoiser(cfg.denoiser, cfg.timeline, spec).eval()
    sampler = build_sampler(cfg.sample)
    tl = cfg.timeline
    ref_video = torch.randn(1, spec.latent_channels, 1, spec.latent_size, spec.latent_size)
    ref_voice = torch.randn(1, tl.reference_voice_tokens, spec.audio_dim)
    units = torch.randint(0, spec.num_units, (1, tl.chunk_audio_tokens))
    conds = [Conditions(units, torch.ones_like(units))] * chunks
    report = {"chunks": chunks, "steps": steps, "guidance_branches": sampler.guidance.num_branches,
              "chunk_playback_seconds": tl.chunk_seconds}  # fmt: skip
    for precision in ("fp32", "bf16"):
        results, out = {}, {}
        for use_cache in (False, True, False, True):  # interleaved, so drift in machine load hits both alike
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                rollout = generate(model, sampler, ref_video, ref_voice, conds, torch.Generator().manual_seed(0),
                                   use_cache=use_cache)  # fmt: skip
            results.setdefault(use_cache, []).extend(
                rollout.chunk_seconds[1:]
            )  # chunk 0 has no sink or motion
            out[use_cache] = rollout.video.float()
        full, cached = statistics.median(results[False]), statistics.median(results[True])
        diff = (out[True] - out[False]).abs().max().item()
        report[precision] = {
            "chunk_seconds_full_window": round(full, 4), "chunk_seconds_cached": round(cached, 4),
            "speedup": round(full / cached, 2), "max_abs_difference_cached_vs_full": diff,
        }  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", default=None, help="a teacher run to time (default: random weights)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"size": [size_and_flops("tiny"), size_and_flops("base")],
              "sampling_tiny_cpu": sampling_times(args.chunks, args.steps, args.teacher)}  # fmt: skip
    for row in report["size"]:
        print(f"{row['preset']:>5}: {row['parameters'] / 1e6:8.2f}M parameters, {row['tokens_window']} window tokens "
              f"({row['tokens_current_chunk']} current); GFLOPs per step: full window {row['gflops_step_full_window']}, "
              f"cached {row['gflops_step_cached']}; motion update {row['gflops_motion_update_per_chunk']} per chunk, "
              f"reference + sink {row['gflops_reference_and_sink_per_session']} per session")  # fmt: skip
    s = report["sampling_tiny_cpu"]
    for precision in ("fp32", "bf16"):
        p = s[precision]
        print(f"tiny on CPU, {precision}, {s['steps']} steps x {s['guidance_branches']} guidance branches per chunk: "
              f"full window {p['chunk_seconds_full_window']:.3f} s/chunk, cached {p['chunk_seconds_cached']:.3f} "
              f"s/chunk -> {p['speedup']}x (a chunk plays {s['chunk_playback_seconds']} s; cached and full outputs "
              f"differ by {p['max_abs_difference_cached_vs_full']:.1e})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
