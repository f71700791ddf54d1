"""`streamchar ...` with each played video latent sharpened in latent space outside the mouth box:
v + K * mask * (v - blur3x3(v)) (an experiment, not an option).

    K=0.5 python docs/results/start_noise/latent_unsharp.py eval protocol --protocol short --model tiny \
        --turns runs/orch-tiny/turns.jsonl --skip-clips 24 --out runs/ls-0.5 --ckpt s2=checkpoints/tiny/student-s2-2step
"""

import os
import sys

import torch
import torch.nn.functional as F

import streamchar.engine.session as session
from streamchar.cli import main

K = float(os.environ.get("K", "0.5"))
to_latents = session.to_latents


def blur(v: torch.Tensor) -> torch.Tensor:
    """A 3x3 binomial blur of every frame and channel of ``[B, C, L, h, w]``."""
    b, c, length, h, w = v.shape
    x = v.permute(0, 2, 1, 3, 4).reshape(b * length * c, 1, h, w)
    k = torch.tensor([1.0, 2.0, 1.0])
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), ((k[:, None] * k[None]) / 16)[None, None])
    return y.reshape(b, length, c, h, w).permute(0, 2, 1, 3, 4)


def sharpened(model, video, audio, mu_video, mu_audio, keep, timbre, units, video_mask, video_time):
    v, a = to_latents(model, video, audio, mu_video, mu_audio, keep, timbre, units, video_mask, video_time)
    mask = video_mask.to(v) if video_mask is not None else 1.0
    return v + K * mask * (v - blur(v)), a


session.to_latents = sharpened
sys.argv = ["streamchar"] + sys.argv[1:]
main()
