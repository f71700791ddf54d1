"""`streamchar ...` with the student's video started from a guess instead of from the means: the state
(1 - t) * g + t * noise, g = A * mask * (reference - mu) / s outside the mouth box (MODE=dit), or that guess
played as the correction with no DiT on the video (MODE=alone). An experiment, not an option.

    A=0.5 MODE=dit python docs/results/start_noise/reference_start.py eval protocol --protocol short --model tiny \
        --turns runs/orch-tiny/turns.jsonl --skip-clips 24 --out runs/gs-dit-a0.5 --ckpt s2=checkpoints/tiny/student-s2-2step
"""

import os
import sys

import streamchar.engine.session as session
from streamchar.cli import main
from streamchar.denoiser.flow import EulerSampler
from streamchar.denoiser.residual import video_correction_mask

A = float(os.environ.get("A", "0.5"))
MODE = os.environ.get("MODE", "dit")
seen: dict = {}
prior_means, sample = session.prior_means, EulerSampler.sample


def remembering_the_reference(priors, cond, given, unit_context, references, *args, **kwargs):
    seen["reference"] = references[0]  # [B, C, 1, h, w]
    return prior_means(priors, cond, given, unit_context, references, *args, **kwargs)


def from_the_guess(
    self, model, video_noise, audio_noise, conditions, context=None, given_audio=None, audio_valid=None
):
    mu = conditions.prior_video
    mask = video_correction_mask("outside_mouth", [0.30, 0.48, 0.70, 0.80], tuple(mu.shape[-2:])).to(mu)
    guess = A * mask * (seen["reference"] - mu) / model.residual_scales[0]
    t = self.start if self.start is not None else float(model.sample_start)
    if MODE == "alone":
        _, audio = sample(
            self, model, video_noise, audio_noise, conditions, context, given_audio, audio_valid
        )
        return guess, audio
    # the sampler starts at t * noise: (1 - t) * guess + t * noise is t * (noise + (1 - t) / t * guess)
    return sample(
        self,
        model,
        video_noise + (1 - t) / t * guess,
        audio_noise,
        conditions,
        context,
        given_audio,
        audio_valid,
    )


session.prior_means = remembering_the_reference
EulerSampler.sample = from_the_guess
sys.argv = ["streamchar"] + sys.argv[1:]
main()
