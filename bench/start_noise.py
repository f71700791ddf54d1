"""How much of a residual denoiser's sample is the noise it started from, per modality.

A shallow sampler (``denoiser.sample_start`` below 1) starts each chunk at the state ``start * noise`` around
the priors' means, the state being ``(x0 - mu) / s``. Over held-out windows of a latent cache (their own
motion frames and sink; the priors' means computed as in training) each denoiser samples every window twice,
from drawn noise and from none, and this prints per modality:

- ``corr``: the correlation of the sampled state with its start noise;
- ``gain``: the sample's projection on that noise per unit of noise (``start`` if the noise went straight
  through, 0 if it was all removed);
- ``rest``: the RMS of what is left of the sample after that projection (what the model added to the noise);
- ``no_noise``: the RMS of the sample started from no noise (the correction it makes whatever the noise);
- ``truth``: the RMS of the true residual state, what a correction could be at most;
- ``denoised``: the RMS error of the model's one-step clean estimate from the true residual noised to ``start``
  (the video's own start for a model with two; the state it is trained on), against ``as_given`` for taking
  that state as the estimate: what the model knows of the residual when it is in its input.

A correlation near 1 with a gain near ``start`` says the sample is its start noise passed through: the denoiser
cannot tell that noise from the residual it was trained on, so the correction it plays is noise, not detail.

    .venv/bin/python bench/start_noise.py --model student=checkpoints/tiny/student-s2-2step \\
        --model teacher=checkpoints/tiny/teacher@4 --windows 32
"""

from __future__ import annotations

import argparse
import json

import torch

from streamchar.config import load_config
from streamchar.data.latents import LatentCache
from streamchar.data.windows import WindowDataset
from streamchar.denoiser.dit import Conditions
from streamchar.denoiser.flow import EulerSampler, video_noise
from streamchar.denoiser.objective import TeacherObjective
from streamchar.denoiser.prior import Priors
from streamchar.denoiser.residual import scales_of
from streamchar.loaders import load_prior, load_teacher, read_distilled
from streamchar.training.loop import collate
from streamchar.training.teacher import latent_spec_from_cache


def rms(x: torch.Tensor) -> float:
    return round(float(x.double().pow(2).mean().sqrt()), 3)


def passthrough(sample, noise, no_noise, truth, denoised, noised) -> dict:
    """The figures above for one modality, over the whole batch (flattened)."""
    s, e = sample.double().flatten(), noise.double().flatten()
    gain = float(s @ e / (e @ e))
    return {"corr": round(float(s @ e / (s.norm() * e.norm())), 3), "gain": round(gain, 3),
            "rest": rms(s - gain * e), "no_noise": rms(no_noise), "truth": rms(truth),
            "denoised": rms(denoised - truth), "as_given": rms(noised - truth)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH[@STEPS]",
                        help="a residual teacher or student folder (a student runs its own steps; a teacher "
                        "@STEPS, default 2), sampled unguided")  # fmt: skip
    parser.add_argument("--prior-audio", default="checkpoints/tiny/prior-audio")
    parser.add_argument("--prior-video", default="checkpoints/tiny/prior-video")
    parser.add_argument("--latents", default="data/latents")
    parser.add_argument("--split", default="test")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start", type=float, default=None, help="the sampler's start (default: each model's own)"
    )
    parser.add_argument("--video-noise-share", type=float, default=0.0,
                        help="the share of a window's video noise its frames share (engine.video_noise_share)")  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = load_config("tiny")
    cache = LatentCache(args.latents)
    priors = Priors(load_prior(args.prior_audio, "audio"), load_prior(args.prior_video, "video"))
    data = WindowDataset(cache, args.split, args.windows, seed=args.seed + 11, unit_context=priors.context)
    batch = collate([data[i] for i in range(args.windows)])
    with torch.no_grad():
        mu_video, mu_audio = priors.window_means(batch)
    conditions = Conditions(batch["units"], batch["speaking"], mu_audio, mu_video)
    context = TeacherObjective.context(batch)
    g = torch.Generator().manual_seed(args.seed)
    noise_video = video_noise(tuple(batch["video"].shape), g, args.video_noise_share)
    noise_audio = torch.randn(batch["audio"].shape, generator=g)
    mask = batch["audio_mask"].bool()
    report = {}
    for spec in args.model:
        name, _, rest = spec.partition("=")
        path, _, steps = rest.partition("@")
        model = load_teacher(path, cfg, latent_spec_from_cache(cache))
        scales = scales_of(model)
        if scales is None:
            raise SystemExit(
                f"{path} is a plain denoiser; this measures a residual one around the priors' means."
            )
        distilled = read_distilled(path)
        steps = int(steps) if steps else (distilled["steps"] if distilled else 2)
        sampler = EulerSampler(steps=steps, start=args.start)
        with torch.no_grad():
            video, audio = sampler.sample(model, noise_video, noise_audio, conditions, context)
            video0, audio0 = sampler.sample(model, torch.zeros_like(noise_video), torch.zeros_like(noise_audio),
                                            conditions, context)  # fmt: skip
        truth_video = (batch["video"] - mu_video) / scales[0]
        truth_audio = (batch["audio"] - mu_audio) / scales[1]
        start = sampler.start or float(model.sample_start)
        start_video = sampler.start or float(model.sample_start_video)
        noised = [(1 - start_video) * truth_video + start_video * noise_video,
                  (1 - start) * truth_audio + start * noise_audio]  # fmt: skip
        one_step = EulerSampler(steps=1, start=args.start)
        with torch.no_grad():  # the sampler starts at start * noise: pass the noised truth as noised / start
            den_video, den_audio = one_step.sample(
                model, noised[0] / start_video, noised[1] / start, conditions, context
            )
        report[name] = {
            "start": start, "video_start": start_video, "steps": sampler.steps,
            "video": passthrough(video, noise_video, video0, truth_video, den_video, noised[0]),
            "audio": passthrough(audio[mask], noise_audio[mask], audio0[mask], truth_audio[mask], den_audio[mask],
                                 noised[1][mask]),
        }  # fmt: skip
        print(name, json.dumps(report[name]))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
