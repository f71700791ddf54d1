"""Denoiser size, FLOPs per denoising step per chunk, and sampling time with and without the context cache.

Parameter counts and FLOPs are counted for the tiny and base presets on PyTorch's meta device (no memory,
no weights): FLOPs come from ``torch.utils.flop_counter`` over one forward pass of one item, for the full
window (what a step costs without the cache) and for the current chunk over cached context K/V, plus the
once-per-chunk motion update and the once-per-session reference + sink update.

The timing part runs the tiny preset for real: ``--chunks`` chunks of ``--steps`` Euler steps, once
recomputing the whole window at every step and once with the cache, side by side in one run.

    .venv/bin/python bench/denoiser.py [--chunks 4] [--steps 4] [--threads 2] [--teacher RUN] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from streamchar.config import load_config
from streamchar.denoiser.build import build_denoiser, build_sampler, latent_spec_from_config
from streamchar.denoiser.dit import Conditions, WindowContext, count_parameters
from streamchar.denoiser.rollout import generate


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _window(model, spec, device):
    tl = model.timeline
    c, s, d = spec.latent_channels, spec.latent_size, spec.audio_dim
    L, M, S = tl.chunk_latent_frames, tl.motion_latent_frames, tl.sink_latent_frames
    La, Ma, Sa, R = (
        tl.chunk_audio_tokens,
        tl.motion_audio_tokens,
        tl.sink_audio_tokens,
        tl.reference_voice_tokens,
    )

    def z(*shape):
        return torch.zeros(*shape, device=device)

    yes = torch.ones(1, dtype=torch.bool, device=device)
    ctx = WindowContext(z(1, c, 1, s, s), z(1, R, d), torch.ones(1, R, dtype=torch.bool, device=device), yes,
                        z(1, c, S, s, s), z(1, Sa, d), yes, z(1, c, M, s, s), z(1, Ma, d), yes)  # fmt: skip
    zeros = torch.zeros(1, La, dtype=torch.long, device=device)
    current = (z(1, c, L, s, s), z(1, La, d), (z(1), z(1)), Conditions(zeros, zeros))
    return ctx, current


def size_and_flops(preset: str) -> dict:
    cfg = load_config(preset)
    spec = latent_spec_from_config(cfg)
    with torch.device("meta"):
        model = build_denoiser(cfg.denoiser, cfg.timeline, spec).eval()
    ctx, (video, audio, t, cond) = _window(model, spec, "meta")
    with torch.no_grad():
        full = _flops(lambda: model(video, audio, t, cond, ctx))
        with model.streaming():
            session = _flops(lambda: (model.set_reference(ctx.ref_video, ctx.ref_voice),
                                      model.set_sink(ctx.sink_video, ctx.sink_audio)))  # fmt: skip
            motion = _flops(lambda: model.set_motion(ctx.motion_video, ctx.motion_audio))
            cached = _flops(lambda: model(video, audio, t, cond))
    tl = cfg.timeline
    tokens_per_frame = model.layout.tokens_per_frame
    current_tokens = tl.chunk_latent_frames * tokens_per_frame + tl.chunk_audio_tokens
    return {
        "preset": preset,
        "parameters": count_parameters(model),
        "tokens_current_chunk": current_tokens,
        "tokens_window": current_tokens
        + (1 + tl.sink_latent_frames + tl.motion_latent_frames) * tokens_per_frame
        + tl.reference_voice_tokens
        + tl.sink_audio_tokens
        + tl.motion_audio_tokens,
        "gflops_step_full_window": round(full / 1e9, 2),
        "gflops_step_cached": round(cached / 1e9, 2),
        "gflops_motion_update_per_chunk": round(motion / 1e9, 2),
        "gflops_reference_and_sink_per_session": round(session / 1e9, 2),
    }


def sampling_times(chunks: int, steps: int, teacher: str | None) -> dict:
    cfg = load_config("tiny", [f"sample.steps={steps}"])
    spec = latent_spec_from_config(cfg)
    torch.manual_seed(0)
    if teacher:
        from streamchar.training.teacher import load_teacher

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
