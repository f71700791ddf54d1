"""Decode cost of the tiny preset's video codec variants, side by side in one run.

Decoding one chunk (12 frames of 128x128 by default) is what the streaming loop pays per chunk on a
CPU, so it decides whether the tiny preset can be real time. Timings are medians of repeated decodes
after warm-up; the ratios against the first row are what to compare across machines.

    .venv/bin/python bench/codec_decode.py [--frames 12] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from streamchar.codecs.video import build_video_codec, video_codec_from_config
from streamchar.config import load_config

WIDTH_64 = {"encoder_block_out_channels": [64] * 4, "decoder_block_out_channels": [64] * 4}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12, help="frames per decode (one tiny-preset chunk)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("tiny")
    arch = dict(cfg.video_codec.arch)
    torch.manual_seed(0)
    rows = [
        ("AutoencoderTiny 32ch, 4 latent ch (random)", build_video_codec("tiny", 128, 4, arch), False),
        ("AutoencoderTiny 32ch, 8 latent ch (shipped)", video_codec_from_config(cfg), False),
        ("AutoencoderTiny 32ch, 8 latent ch, bf16", video_codec_from_config(cfg), True),
        (
            "AutoencoderTiny 64ch, 8 latent ch (random)",
            build_video_codec("tiny", 128, 8, {**arch, **WIDTH_64}),
            False,
        ),
    ]
    results = []
    for name, codec, bf16 in rows:
        latents = torch.randn(codec.latent_channels, args.frames, codec.latent_size, codec.latent_size)

        def decode(codec=codec, latents=latents, bf16=bf16):
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                codec.decode(latents)

        results.append((name, _median_seconds(decode, args.repeats)))
    base = results[0][1]
    print(f"decode {args.frames} frames of 128x128, {args.threads} threads, median of {args.repeats}")
    print(f"{'codec':<48} {'seconds':>8} {'ratio':>6} {'x real time':>11}")
    for name, seconds in results:
        realtime = args.frames / cfg.timeline.fps / seconds
        print(f"{name:<48} {seconds:8.3f} {seconds / base:6.2f} {realtime:11.1f}")


if __name__ == "__main__":
    main()
