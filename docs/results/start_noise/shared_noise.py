"""`streamchar ...` with the video start noise shared by every frame of a session (an experiment, not an option).

RHO=1 draws one noise per latent cell for the session and gives it to every frame; 0 < RHO < 1 mixes it with each
frame's own, sqrt(RHO) * shared + sqrt(1 - RHO) * own, so every frame's noise stays unit Gaussian.

    RHO=1 python docs/results/start_noise/shared_noise.py eval protocol --protocol short --model tiny \
        --turns runs/orch-tiny/turns.jsonl --skip-clips 24 --out runs/ns-frames-r1 \
        --ckpt s2=checkpoints/tiny/student-s2-2step engine.video_correction_time=frames
"""

import math
import os
import sys

import torch

import streamchar.engine.session as session
from streamchar.cli import main

RHO = float(os.environ.get("RHO", "1"))
shared: dict = {}


class SharedVideoNoise:
    """Stands in for ``torch`` in the engine's session module: 5-D draws (the video noise) share a part."""

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *shape, generator=None, **kwargs):
        x = torch.randn(*shape, generator=generator, **kwargs)
        if len(shape) == 5 and RHO > 0:
            key = (shape[0], shape[1], shape[3], shape[4], id(generator))
            if key not in shared:
                shared[key] = torch.randn(shape[0], shape[1], 1, shape[3], shape[4], generator=generator)
            x = math.sqrt(RHO) * shared[key] + math.sqrt(1 - RHO) * x
        return x


session.torch = SharedVideoNoise()
sys.argv = ["streamchar"] + sys.argv[1:]
main()
