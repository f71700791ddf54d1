"""The FLOPs report: a Markdown table of one chunk's FLOPs (:mod:`streamchar.engine.flops`) per component, and
the command that prints it (``python -m streamchar.engine.flops``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from streamchar.engine.flops import DEFAULT_TOKENS_PER_FRAME, ChunkFlops, chunk_flops
from streamchar.engine.mfu import PEAK_BF16_TFLOPS, peak_bf16_flops


def _parameters(n: int) -> str:
    if n <= 0:
        return "-"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def format_flops_table(report: ChunkFlops | Mapping[str, Any], chunk_seconds: float | None = None) -> str:
    """A Markdown table of ``report`` (:class:`ChunkFlops` or its :meth:`~ChunkFlops.to_dict`): per component
    its parameters, GFLOPs per chunk, share of the chunk, and the TFLOP/s that keep up in real time when a
    chunk plays ``chunk_seconds`` (default: the report's own playback time)."""
    r = report.to_dict() if isinstance(report, ChunkFlops) else report
    flops, params = r["flops"], r["parameters"]
    seconds = r["chunk_seconds"] if chunk_seconds is None else chunk_seconds
    if seconds <= 0:
        raise ValueError(f"chunk_seconds must be positive, got {seconds}.")
    total = flops["total"]
    rows = [
        ("Priors (acoustic + video means)", params.get("priors", 0), flops.get("priors", 0)),
        (f"DiT: {r['steps']} denoising steps (batch {r['batch']})", params["denoiser"], flops["dit_denoising"]),
        ("DiT: motion update", 0, flops["dit_motion_update"]),
        (f"Video decoder ({r['video_codec']}, {r['chunk_video_frames']} frames x {r['characters']})",
         params["video_decoder"], flops["video_decoder"]),
        (f"Audio decoder (mel + Griffin-Lim, {r['chunk_audio_tokens']} + {r['audio_context_tokens']} tokens)",
         params["audio_decoder"], flops["audio_decoder"]),
        (f"Orchestrator ({r['chunk_audio_tokens']} frames x {r['orchestrator_tokens_per_frame']:g} tokens, "
         f"context {r['orchestrator_context']})", params["orchestrator"], flops["orchestrator"]),
    ]  # fmt: skip
    lines = [
        f"{r['preset']}: one steady-state chunk ({seconds:g} s of playback), {r['steps']} steps, "
        f"{r['guidance_branches']} guidance branch(es), {r['characters']} character(s)",
        "",
        "| Component | Parameters | GFLOPs / chunk | Share | TFLOP/s for real time |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, n_params, value in rows:
        share = value / total if total else 0.0
        lines.append(f"| {name} | {_parameters(n_params)} | {value / 1e9:,.2f} | {share:.1%} | "
                     f"{value / seconds / 1e12:,.3f} |")  # fmt: skip
    lines.append(
        f"| **Chunk total** | | **{total / 1e9:,.2f}** | 100.0% | **{total / seconds / 1e12:,.3f}** |"
    )
    session = flops["dit_reference_and_sink_per_session"]
    lines.append(
        f"| DiT: reference + sink (once per session, not in the total) | | {session / 1e9:,.2f} | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="FLOPs of one steady-state streaming chunk, per component (counted on the meta device)."
    )
    parser.add_argument("--config", default="tiny", help="a preset name or YAML file (default: tiny)")
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps per chunk (default: engine.steps)"
    )
    parser.add_argument(
        "--guidance-branches", type=int, default=1, help="batch items per character (default 1)"
    )
    parser.add_argument("--characters", type=int, default=1)
    parser.add_argument("--orchestrator-context", type=int, default=1024, help="unit-LM KV-cache tokens")
    parser.add_argument("--tokens-per-frame", type=float, default=DEFAULT_TOKENS_PER_FRAME,
                        help="unit-LM tokens read per audio frame while speaking")  # fmt: skip
    parser.add_argument("--device", default=None, help="a GPU name, to print the time per chunk at 100%% MFU")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    from streamchar.config import load_config

    cfg = load_config(args.config, args.overrides)
    steps = cfg.engine.steps if args.steps is None else args.steps
    report = chunk_flops(cfg, steps, args.guidance_branches, args.characters, args.orchestrator_context,
                         args.tokens_per_frame)  # fmt: skip
    print(format_flops_table(report))
    if args.device:
        peak = peak_bf16_flops(args.device)
        if peak is None:
            print(f"\nNo BF16 peak is listed for '{args.device}'; known: {', '.join(PEAK_BF16_TFLOPS)}.")
        else:
            print(f"\nAt 100% MFU on {args.device} ({peak / 1e12:g} TFLOP/s dense BF16) a chunk takes "
                  f"{report.total / peak * 1e3:.2f} ms of its {report.chunk_seconds * 1e3:.0f} ms.")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report.to_dict(), "dit": asdict(report.dit)}, f, indent=1)
