"""The size of what the DiT has to add: RMS of the clean latents and of their residuals around the priors' means.

Over training windows of a latent cache (text-driven: the acoustic prior's mean is the audio's), the RMS of the
video and audio latents, of the residuals ``x0 - mu``, and of the video residual inside the mouth box. The
residual formulation's noise scales (``denoiser.residual_scale_video`` / ``_audio``) are chosen from these.

    .venv/bin/python bench/residual_scales.py --prior-audio runs/prior-audio --prior-video runs/prior-video
"""

from __future__ import annotations

import argparse
import json

import torch

from streamchar.data.latents import LatentCache
from streamchar.data.windows import WindowDataset
from streamchar.denoiser.objective import mouth_weight_map
from streamchar.denoiser.prior import Priors
from streamchar.loaders import load_prior
from streamchar.training.loop import collate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior-audio", default="checkpoints/tiny/prior-audio")
    parser.add_argument("--prior-video", default="checkpoints/tiny/prior-video")
    parser.add_argument("--latents", default="data/latents")
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    priors = Priors(load_prior(args.prior_audio, "audio"), load_prior(args.prior_video, "video"))
    data = WindowDataset(
        LatentCache(args.latents), args.split, args.windows, seed=11, unit_context=priors.context
    )
    sums = {k: 0.0 for k in ("video", "audio", "video_residual", "audio_residual", "mouth_residual")}
    counts = dict.fromkeys(sums, 0.0)
    for start in range(0, args.windows, 32):
        batch = collate([data[i] for i in range(start, min(start + 32, args.windows))])
        mu_video, mu_audio = priors.window_means(batch)
        mask = batch["audio_mask"].float()[..., None]
        inside = (
            mouth_weight_map(batch["mouth_box"], batch["has_mouth_box"], tuple(mu_video.shape[-2:]), 2.0)
            - 1.0
        )
        for key, value, weight in (("video", batch["video"], None), ("audio", batch["audio"], mask),
                                   ("video_residual", batch["video"] - mu_video, None),
                                   ("audio_residual", batch["audio"] - mu_audio, mask),
                                   ("mouth_residual", batch["video"] - mu_video, inside[:, None])):  # fmt: skip
            w = torch.ones_like(value) if weight is None else torch.broadcast_to(weight, value.shape)
            sums[key] += float((value.pow(2) * w).sum())
            counts[key] += float(w.sum())
    print(json.dumps({k: round((sums[k] / counts[k]) ** 0.5, 4) for k in sums}, indent=1))


if __name__ == "__main__":
    main()
