"""`streamchar ...` with the video start noise set to zero: the student's video correction is then only what it
makes whatever the noise (an experiment, not an option).

    python docs/results/start_noise/zero_noise.py eval protocol --protocol short --model tiny \
        --turns runs/orch-tiny/turns.jsonl --skip-clips 24 --out runs/nz-zero --ckpt s2=checkpoints/tiny/student-s2-2step
"""

import sys

import torch

import streamchar.engine.session as session
from streamchar.cli import main


class ZeroVideoNoise:
    """Stands in for ``torch`` in the engine's session module: 5-D draws (the video noise) are zeros."""

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *shape, generator=None, **kwargs):
        x = torch.randn(
            *shape, generator=generator, **kwargs
        )  # drawn all the same: the audio noise is unchanged
        return torch.zeros_like(x) if len(shape) == 5 else x


session.torch = ZeroVideoNoise()
sys.argv = ["streamchar"] + sys.argv[1:]
main()
