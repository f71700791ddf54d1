"""Is the teacher's speech intelligible when the conditions are perfect? Phoneme error rate of its speech.

Each clip of a latent cache is regenerated chunk after chunk by a teacher (run folder or checkpoint) from
the clip's own frame-aligned units (the corpus's ground truth, no orchestrator) and a reference from
another clip of the same character; the evaluation recognizer reads the generated speech, decoded by the
audio codec, and the clip's own audio latents decoded the same way (the ceiling). Phoneme error rates are
pooled over the clips (edits / reference phonemes), against the units' phonemes with repeats merged.

    .venv/bin/python bench/teacher_speech.py --teacher checkpoints/tiny/teacher --split test --clips 2
"""

from __future__ import annotations

import argparse
import json

import torch

from streamchar.codecs.audio import build_audio_codec
from streamchar.config import load_config
from streamchar.data.latents import LatentCache
from streamchar.data.phonemes import SILENCE_ID, F0Buckets
from streamchar.denoiser.build import build_sampler
from streamchar.denoiser.rollout import generate
from streamchar.eval.instruments.recognizer import load_recognizer
from streamchar.eval.metrics.error_rates import edit_distance
from streamchar.eval.protocols.teacher_samples import chunk_conditions, reference_for
from streamchar.loaders import load_teacher
from streamchar.training.teacher import latent_spec_from_cache


def spoken_phonemes(units: torch.Tensor) -> list[int]:
    """Frame units -> the phoneme sequence they spell (silence dropped, repeats merged)."""
    out: list[int] = []
    for p in (units.long() // F0Buckets().size).tolist():
        if p != SILENCE_ID and (not out or out[-1] != p):
            out.append(p)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher", default="checkpoints/tiny/teacher", help="teacher run or checkpoint folder"
    )
    parser.add_argument("--latents", default="data/latents", help="latent cache")
    parser.add_argument("--recognizer", default="checkpoints/eval/recognizer")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--clips", type=int, default=2, help="the first N clips of 3+ chunks that speak")
    parser.add_argument("--steps", type=int, nargs="+", default=[16], help="guided Euler steps")
    args = parser.parse_args()

    cfg = load_config("tiny")
    cache = LatentCache(args.latents)
    tl = cache.window_timeline(cfg.timeline)
    model = load_teacher(args.teacher, cfg, latent_spec_from_cache(cache))
    codec, recognizer = build_audio_codec(cfg, tl), load_recognizer(args.recognizer)
    entries = [e for e in cache.entries(args.split)
               if e["latent_frames"] >= 3 * tl.chunk_latent_frames and cache.tensor(e, "speaking").sum() > 0]  # fmt: skip
    edits = {"ground_truth": 0, **{f"teacher@{s}": 0 for s in args.steps}}
    total = 0
    for entry in entries[: args.clips]:
        chunks = entry["latent_frames"] // tl.chunk_latent_frames
        conditions, given = chunk_conditions(cache, entry, chunks, tl)
        image, voice, valid, _ = reference_for(cache, entry, tl)
        reference = spoken_phonemes(cache.tensor(entry, "units"))
        total += len(reference)

        def heard(latents: torch.Tensor, reference: list[int] = reference) -> int:
            said = [p for p in recognizer.phonemes(codec.decode(latents).numpy()) if p != SILENCE_ID]
            return edit_distance(reference, said)

        edits["ground_truth"] += heard(torch.cat(given, 1)[0].float())
        for steps in args.steps:
            cfg.sample.steps = steps
            with torch.autocast("cpu", torch.bfloat16):
                rollout = generate(model, build_sampler(cfg.sample), image, voice, conditions,
                                   torch.Generator().manual_seed(0), valid)  # fmt: skip
            edits[f"teacher@{steps}"] += heard(rollout.audio.float()[0])
    per = {name: round(count / max(1, total), 3) for name, count in edits.items()}
    print(json.dumps({"teacher": args.teacher, "split": args.split, "clips": min(args.clips, len(entries)),
                      "reference_phonemes": total, "per": per}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
